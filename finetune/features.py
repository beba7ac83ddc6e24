"""Frame and word features from the pretrained encoders, extracted once and cached on disk.

Layout under the cache root (local or s3), keyed by checkpoint and video (id and file: fsio.video_file_name):
    <cache>/<model key>/<fps>fps-<size>px/<video>.npz   frames (T, d) f16, times (T,), duration, [regions (T, N, d)],
                                                        source, source_bytes
    <cache>/<model key>/text.npz                        sentences, sentence (Q, d), words (Q, K, d), word_mask (Q, K)
    <cache>/pixels/<fps>fps-<size>px/<video>.npz        decoded frames (T, S, S, 3) u8 (end-to-end finetuning only)
The model key hashes the export's model.pt and model_config.json, so a re-trained export never reads stale
features and every finetune (heads, seeds, sweeps) of one export shares them. A cached video whose source file
changed size is extracted again. Features are stored as float16: they are L2-normalised, so half precision keeps
~3 significant digits and halves the cache.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from common import fsio
from pretrain.export_key import export_key as model_key  # noqa: F401 - the feature store's key
from pretrain.export_ref import Export

log = logging.getLogger(__name__)


@dataclass
class VideoFeatures:
    vid: str
    frames: np.ndarray              # (T, d) float16, L2-normalised global frame features
    times: np.ndarray               # (T,) seconds (presentation time of each frame)
    duration: float                 # seconds
    regions: np.ndarray | None = None   # (T, N, d) float16 patch features
    pixels: np.ndarray | None = None    # (T, S, S, 3) uint8 decoded frames (end-to-end mode)


@dataclass
class TextFeatures:
    sentence: np.ndarray            # (Q, d) float32
    words: np.ndarray               # (Q, K, d) float32
    word_mask: np.ndarray           # (Q, K) bool


def load_encoder(checkpoint: str):
    """The export in eval mode, on the GPU when there is one (and DeepSpeed is not told to use the CPU)."""
    from trainer.engine import on_gpu

    return Export.of(checkpoint).load_model().to("cuda" if on_gpu() else "cpu")


def centered(f: VideoFeatures) -> VideoFeatures:
    """Frame features minus the video's mean frame feature, L2-normalised: in a static scene (the synthetic
    corpus: every object is visible from the first frame to the last) the mean carries the scene and the
    residual what happens at that moment."""
    x = f.frames.astype(np.float32)
    x = x - x.mean(0, keepdims=True)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    return VideoFeatures(f.vid, x.astype(np.float16), f.times, f.duration, f.regions, f.pixels)


def _size_of(url: str) -> int:
    fs, path = fsio.filesystem(url)
    return int(fs.size(path))


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_npz(url: str) -> dict:
    with np.load(io.BytesIO(fsio.read_bytes(url)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def decode(path: str, fps: float, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(frames (T, S, S, 3) uint8, times (T,), duration s) of a local or remote video."""
    from shards.decode import decode_video

    if fsio.is_local(path):
        dec = decode_video(fsio.filesystem(path)[1], fps=fps, size=size)
    else:
        with fsio.local_tempdir() as d:
            local = os.path.join(d, "video" + os.path.splitext(path)[1])
            fs, remote = fsio.filesystem(path)
            fs.get_file(remote, local)
            dec = decode_video(local, fps=fps, size=size)
    times = np.asarray(dec.times, dtype=np.float64)
    duration = max(float(dec.duration), float(times[-1]) + 1.0 / fps)
    return np.stack(dec.frames), times, duration


class FeatureStore:
    """Reads and writes one export's features at one (fps, size). `size` 0 takes the encoder's image size, which
    needs the model's config only (no weights are loaded to read a cache)."""

    mid_layer = 0   # frame features have no earlier block's region features (finetune/stvg_features.py's may)

    def __init__(self, cache: str, checkpoint: str, fps: float = 1.0, size: int = 0, regions: bool = False,
                 pixels: bool = False, key: str | None = None):
        self.checkpoint = checkpoint
        self.key = key or model_key(checkpoint)
        self.fps = fps
        self.size = size or _image_size(checkpoint)
        self.regions = regions
        self.pixels = pixels
        grid = f"{fps:g}fps-{self.size}px"
        self.root = fsio.join(cache, self.key)
        self.video_dir = fsio.join(self.root, grid)
        self.pixel_dir = fsio.join(cache, "pixels", grid)
        self.text_url = fsio.join(self.root, "text.npz")
        self._text: dict[str, tuple] | None = None

    # --- videos ---------------------------------------------------------------------------------------------
    # entries are named by the video id and its file's identity (fsio.video_file_name's source): another corpus
    # with the same ids has other entries
    def _feature_url(self, vid: str, source: str) -> str:
        return fsio.join(self.video_dir, fsio.video_file_name(vid, source))

    def _pixel_url(self, vid: str, source: str) -> str:
        return fsio.join(self.pixel_dir, fsio.video_file_name(vid, source))

    def _fresh(self, url: str, source: str, need_regions: bool = False) -> bool:
        if not fsio.exists(url):
            return False
        try:
            z = np.load(io.BytesIO(fsio.read_bytes(url)), allow_pickle=False)
            ok = int(z["source_bytes"]) == _size_of(source) and (not need_regions or "regions" in z.files)
            z.close()
            return ok
        except (OSError, ValueError, KeyError):
            return False  # a damaged cache file is rebuilt

    def missing(self, videos: dict[str, str]) -> dict[str, str]:
        """The videos whose features (or pixels, in end-to-end mode) are not cached for their current file."""
        out = {}
        for vid, path in videos.items():
            url = self._pixel_url(vid, path) if self.pixels else self._feature_url(vid, path)
            if not self._fresh(url, path, self.regions and not self.pixels):
                out[vid] = path
        return out

    @torch.no_grad()
    def extract(self, videos: dict[str, str], model=None, batch_frames: int = 64) -> dict:
        """Decode and encode `videos` (id -> path) not cached yet. A video that cannot be decoded is counted by
        its reason and skipped. `model`: the loaded export (loaded here when None and features are needed)."""
        todo = self.missing(videos)
        counts: dict = {"videos": len(videos), "cached": len(videos) - len(todo), "extracted": 0, "failed": {}}
        if todo and model is None and not self.pixels:
            model = load_encoder(self.checkpoint)
        for vid, path in todo.items():
            try:
                frames, times, duration = decode(path, self.fps, self.size)
            except Exception as e:  # noqa: BLE001 - a bad video is counted and skipped
                reason = getattr(e, "reason", type(e).__name__)
                counts["failed"][reason] = counts["failed"].get(reason, 0) + 1
                log.warning("%s: %s, skipped", vid, e)
                continue
            common = {"times": times, "duration": np.float64(duration), "source": np.str_(path),
                      "source_bytes": np.int64(_size_of(path))}
            if self.pixels:
                fsio.write_bytes_atomic(self._pixel_url(vid, path), _npz_bytes(pixels=frames, **common))
            else:
                g, loc = encode_video(model, frames, batch_frames, self.regions)
                arrays = {"frames": g.astype(np.float16), **common}
                if loc is not None:
                    arrays["regions"] = loc.astype(np.float16)
                fsio.write_bytes_atomic(self._feature_url(vid, path), _npz_bytes(**arrays))
            counts["extracted"] += 1
        return counts

    def load(self, vid: str, source: str) -> VideoFeatures:
        """The cached features of video `vid` whose file is `source`."""
        if self.pixels:
            z = _read_npz(self._pixel_url(vid, source))
            return VideoFeatures(vid, np.zeros((len(z["times"]), 0), np.float16), z["times"], float(z["duration"]),
                                 pixels=z["pixels"])
        z = _read_npz(self._feature_url(vid, source))
        return VideoFeatures(vid, z["frames"], z["times"], float(z["duration"]), regions=z.get("regions"))

    def load_all(self, videos: dict[str, str]) -> dict[str, VideoFeatures]:
        """Features of the given videos (id -> file) that are cached (failed ones are absent)."""
        out = {}
        for vid, path in videos.items():
            url = self._pixel_url(vid, path) if self.pixels else self._feature_url(vid, path)
            if fsio.exists(url):
                out[vid] = self.load(vid, path)
        return out

    # --- text -----------------------------------------------------------------------------------------------
    def _load_text(self) -> dict[str, tuple]:
        if self._text is None:
            self._text = {}
            if fsio.exists(self.text_url):
                z = _read_npz(self.text_url)
                for i, s in enumerate(z["sentences"].tolist()):
                    self._text[s] = (z["sentence"][i], z["words"][i], z["word_mask"][i])
        return self._text

    def missing_text(self, sentences) -> list[str]:
        known = self._load_text()
        return sorted({s for s in sentences if s not in known})

    @torch.no_grad()
    def extract_text(self, sentences, model=None, batch: int = 256) -> int:
        """Encode sentences not cached yet and rewrite text.npz; returns how many were new."""
        known = self._load_text()
        new = self.missing_text(sentences)
        if not new:
            return 0
        if model is None:
            model = load_encoder(self.checkpoint)
        for i in range(0, len(new), batch):
            chunk = new[i:i + batch]
            g, w, m = model.encode_text(model.tokenize(chunk))
            for j, s in enumerate(chunk):
                known[s] = (g[j].float().cpu().numpy(), w[j].float().cpu().numpy(), m[j].cpu().numpy())
        names = sorted(known)
        fsio.write_bytes_atomic(self.text_url, _npz_bytes(
            sentences=np.array(names), sentence=np.stack([known[s][0] for s in names]).astype(np.float32),
            words=np.stack([known[s][1] for s in names]).astype(np.float32),
            word_mask=np.stack([known[s][2] for s in names]).astype(bool)))
        return len(new)

    def text(self, sentences) -> TextFeatures:
        known = self._load_text()
        absent = [s for s in sentences if s not in known]
        if absent:
            raise KeyError(f"{len(absent)} sentence(s) not in {self.text_url} (run extract_text first), "
                           f"e.g. {absent[:2]}")
        return TextFeatures(np.stack([known[s][0] for s in sentences]), np.stack([known[s][1] for s in sentences]),
                            np.stack([known[s][2] for s in sentences]))


def _image_size(checkpoint: str) -> int:
    """The encoder's input size from the export's config alone."""
    return Export.of(checkpoint).image_size()


def encode_video(model, frames: np.ndarray, batch: int, regions: bool):
    """(global (T, d), local (T, N, d) or None) float32 numpy from (T, S, S, 3) uint8 frames."""
    gs, ls = [], []
    for i in range(0, len(frames), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch]))[None]
        g, loc, _ = model.encode_frames(model.preprocess_frames(chunk))
        gs.append(g[0].float().cpu())
        if regions:
            ls.append(loc[0].float().cpu())
    return torch.cat(gs).numpy(), (torch.cat(ls).numpy() if regions else None)
