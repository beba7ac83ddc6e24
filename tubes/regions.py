"""Region features of proposals over the pretrained model's patch-token grid (VCMA Sec. 3.2: RoI-Align + global
average pooling, plus the frame's global feature), and class-agnostic proposals from the same grid.

Boxes are in source-video pixels; frames are the model's crops (short side resized to S, centre crop), so a box
goes source -> crop (grounding.inference.CropGeometry) -> grid cells (x S/grid). The grid is f'(patch tokens), the
L2-normalised local space the word-region term trains, so a region feature compares directly with g'(words).
One roi_align call per chunk of frames, on the model's device.

Cache (a file of its own beside the finetune feature store, keyed the same way):
    <cache>/<model key>/regions/<source name>/<video file name>.npz   regions (F, N, d) f16, frames (F, d) f16,
                                                                       frame_ids, size, roi_output, source_bytes;
                                                                       multi-scale: regions_mid (F, N, d) f16 and
                                                                       mid_layer (the earlier block, as asked)
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from common import fsio
from grounding.inference import CropGeometry
from tubes.proposals import Proposals, pack


def roi_pool(grid: torch.Tensor, boxes: torch.Tensor, output: int = 2) -> torch.Tensor:
    """grid (T, D, gh, gw), boxes (K, 5) [frame, x1, y1, x2, y2] in grid cells -> (K, D): RoI-Align to
    output x output bins (2 samples per bin, aligned corners), then the mean over the bins."""
    pooled = roi_align(grid, boxes, output_size=(output, output), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return pooled.mean((2, 3))


def to_grid(boxes: np.ndarray, geometry: CropGeometry, grid: tuple[int, int]) -> np.ndarray:
    """(..., 4) source-pixel boxes of one video -> grid-cell units of the crop (crop_cells for one video)."""
    boxes = np.asarray(boxes)
    size = torch.tensor([[geometry.width, geometry.height]], dtype=torch.float64)
    cells = crop_cells(torch.from_numpy(boxes.astype(np.float64))[None], size, geometry.size, grid)[0].numpy()
    return cells.astype(boxes.dtype if boxes.dtype.kind == "f" else np.float64)   # the boxes' float type


def crop_cells(boxes: torch.Tensor, size: torch.Tensor, image_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """to_grid in torch for a batch: boxes (B, ..., 4) source pixels, size (B, 2) the videos' width, height ->
    grid cells of each video's crop (short side resized to image_size, centre crop)."""
    lead = (slice(None),) + (None,) * (boxes.dim() - 2)
    w, h = size[:, 0][lead], size[:, 1][lead]
    scale = image_size / torch.minimum(w, h).clamp_min(1.0)
    ox, oy = (w * scale - image_size) / 2, (h * scale - image_size) / 2
    gh, gw = grid
    return torch.stack([(boxes[..., 0] * scale - ox) * gw / image_size, (boxes[..., 1] * scale - oy) * gh / image_size,
                        (boxes[..., 2] * scale - ox) * gw / image_size, (boxes[..., 3] * scale - oy) * gh / image_size],
                       -1)


def pool_regions(grid: torch.Tensor, cells: torch.Tensor, valid: torch.Tensor, output: int = 2) -> torch.Tensor:
    """grid (F, D, gh, gw), cells (F, N, 4) in grid cells, valid (F, N) bool -> (F, N, D) region features,
    L2-normalised, 0 at padding; differentiable (the end-to-end finetune calls it on the live grid)."""
    fn, n = valid.shape
    fi, ni = valid.nonzero(as_tuple=True)
    out = grid.new_zeros(fn, n, grid.shape[1])
    if len(fi):
        rois = torch.cat([fi.to(grid.dtype)[:, None], cells[fi, ni].to(grid.dtype)], 1)
        out = out.index_put((fi, ni), F.normalize(roi_pool(grid, rois, output), dim=-1))
    return out


def _as_grid(loc: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., gh*gw, d) tokens -> (n, d, gh, gw)."""
    gh, gw = grid
    return loc.reshape(-1, gh * gw, loc.shape[-1]).transpose(1, 2).reshape(-1, loc.shape[-1], gh, gw)


def encode_grids(model, frames, block: int = 0):
    """(global (..., d), local grid (n, d, gh, gw), grid of visual block `block` or None when 0) of uint8 crops
    (..., S, S, 3) (numpy or torch), with gradients when the caller has them on."""
    chunk = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    x = model.preprocess_frames(chunk)
    if block:
        g, loc, mid, grid = model.encode_frames_block(x, block)
        return g, _as_grid(loc, grid), _as_grid(mid, grid)
    g, loc, grid = model.encode_frames(x)
    return g, _as_grid(loc, grid), None


@torch.no_grad()
def encode_grid(model, frames: np.ndarray, batch: int = 64, block: int = 0):
    """(global (T, d), local grid (T, d, gh, gw)) on the model's device from (T, S, S, 3) uint8 crops; with
    `block`, also the grid of that earlier visual block (a third item)."""
    gs, ls, ms = [], [], []
    for i in range(0, len(frames), batch):
        g, loc, mid = encode_grids(model, frames[i:i + batch][None], block)
        gs.append(g[0].float())
        ls.append(loc.float())
        ms.append(None if mid is None else mid.float())
    out = torch.cat(gs), torch.cat(ls)
    return (*out, torch.cat(ms)) if block else out


@torch.no_grad()
def region_features(model, frames: np.ndarray, props: Proposals, geometry: CropGeometry, output: int = 2,
                    batch: int = 64, block: int = 0):
    """(regions (F, N, d) L2-normalised, 0 at padding; frame globals (F, d)) for frames (F, S, S, 3) aligned with
    props.frames; with `block` (an earlier visual block), also the same proposals RoI-Aligned over that block's
    grid (F, N, d) as a third item (the multi-scale input, docs/fsm.md)."""
    glob, grid, *mid = encode_grid(model, frames, batch, block)
    cells = torch.from_numpy(to_grid(props.boxes, geometry, grid.shape[-2:]).astype(np.float32)).to(grid.device)
    valid = torch.from_numpy(props.valid).to(grid.device)
    regions = [pool_regions(g, cells, valid, output).cpu().numpy() for g in [grid, *mid]]
    return (regions[0], glob.cpu().numpy(), *regions[1:])


def live_region_features(model, pixels: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, size: torch.Tensor,
                         output: int = 2, block: int = 0):
    """region_features of a batch, differentiable (the end-to-end finetune): pixels (B, T, S, S, 3) uint8 crops,
    boxes (B, T, N, 4) source pixels, valid (B, T, N), size (B, 2) -> (globals (B, T, d), regions (B, T, N, d),
    block regions (B, T, N, d) or None)."""
    b, t, n = valid.shape
    glob, grid, mid = encode_grids(model, pixels, block)
    cells = crop_cells(boxes, size, model.image_size, tuple(grid.shape[-2:])).reshape(b * t, n, 4)
    flat = valid.reshape(b * t, n)
    pool = (lambda g: pool_regions(g, cells, flat, output).view(b, t, n, -1))  # noqa: E731
    return glob, pool(grid), None if mid is None else pool(mid)


def frames_for(decoded: np.ndarray, times: np.ndarray, fps: float, wanted: np.ndarray) -> np.ndarray:
    """The decoded frames at the proposals' frame indices (nearest decoded frame by time)."""
    ids = np.rint(np.asarray(times) * fps).astype(np.int64)
    pos = np.clip(np.searchsorted(ids, wanted), 0, len(ids) - 1)
    return decoded[pos]


class RegionCache:
    """Region features of one export and one proposal source, one npz per video."""

    def __init__(self, cache: str, checkpoint: str, source_name: str, key: str | None = None):
        from pretrain.export_ref import Export

        self.root = fsio.join(cache, key or Export.of(checkpoint).key, "regions", source_name)

    def url(self, vid: str, source: str = "") -> str:
        """The entry of video `vid` whose file is `source` (its identity is in the name: another corpus with the
        same ids has other entries)."""
        return fsio.join(self.root, fsio.video_file_name(vid, source))

    def get(self, vid: str, source_bytes: int, source: str = "") -> dict | None:
        url = self.url(vid, source)
        if not fsio.exists(url):
            return None
        try:
            with np.load(io.BytesIO(fsio.read_bytes(url)), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None  # a damaged cache file is rebuilt
        return data if int(data["source_bytes"]) == source_bytes else None

    def put(self, vid: str, source_bytes: int, source: str = "", **arrays) -> None:
        buf = io.BytesIO()
        np.savez(buf, source_bytes=np.int64(source_bytes), **arrays)
        fsio.write_bytes_atomic(self.url(vid, source), buf.getvalue())


@torch.no_grad()
def model_proposals(model, frames: np.ndarray, frame_ids: np.ndarray, geometry: CropGeometry, vid: str,
                    top_k: int = 10, levels=(0.3, 0.5, 0.7), fps: float | None = None, batch: int = 64) -> Proposals:
    """Class-agnostic proposals from the patch grid when no detector is given: a cell's objectness is how far its
    token is from the video's median token (the table top dominates the median); at each level x the frame's peak,
    the 4-connected regions above it become boxes scored by their mean objectness; duplicates dropped, top_k kept."""
    _, grid = encode_grid(model, frames, batch)
    g = F.normalize(grid, dim=1)
    median = F.normalize(g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).median(0).values, dim=0)
    obj = (1.0 - torch.einsum("tdhw,d->thw", g, median)).clamp_min(0).cpu().numpy()
    gh, gw = obj.shape[1:]
    rows = {}
    for t, heat in enumerate(obj):
        found: dict[tuple, float] = {}
        for lv in levels:
            mask = heat >= lv * heat.max()
            seen = np.zeros_like(mask)
            for r, c in zip(*np.nonzero(mask)):
                if seen[r, c]:
                    continue
                stack, cells = [(r, c)], []
                seen[r, c] = True
                while stack:
                    y, x = stack.pop()
                    cells.append((y, x))
                    for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                        if 0 <= yy < gh and 0 <= xx < gw and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            stack.append((yy, xx))
                ys, xs = zip(*cells)
                box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
                found[box] = max(found.get(box, 0.0), float(np.mean([heat[y, x] for y, x in cells])))
        ranked = sorted(found.items(), key=lambda kv: -kv[1])[:top_k]
        b = np.asarray([k for k, _ in ranked], np.float64).reshape(-1, 4)
        sx, sy = geometry.size / gw, geometry.size / gh
        x1, y1 = geometry.to_source(b[:, 0] * sx, b[:, 1] * sy)
        x2, y2 = geometry.to_source(b[:, 2] * sx, b[:, 3] * sy)
        rows[int(frame_ids[t])] = (np.stack([x1, y1, x2, y2], -1).astype(np.float32),
                                   np.asarray([v for _, v in ranked], np.float32), None)
    return pack(vid, rows, fps)
