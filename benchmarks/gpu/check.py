"""Every GPU figure in one short run (docs/gpu_check.md); prints one JSON object.

  python3 -m benchmarks.gpu.check                  # on one GPU: a few minutes (budget: 8 min on an H200)
  python3 -m benchmarks.gpu.check --cpu-smoke      # the same code path at tiny sizes on CPU (tests/test_gpu_check.py)
  python3 -m benchmarks.gpu.check --sections sinkhorn,train --out gpu_check.json

Without a CUDA device (and without --cpu-smoke) it prints {"measured": false, "reason": ...} and exits 0.

Sections, each against a baseline in the same run:
- sinkhorn: batched log-domain Sinkhorn frame selection vs the per-sample loop (benchmarks/speed/sinkhorn.py's two
  paths) at batch 256, K=20 words, U=16 frames, T=8; the selections must be identical (target speedup >= 50x).
- train: the global-local model's training step at configs/pretrain/vitb32.yaml's sizes (ViT-B/32, 224 px,
  16 -> 8 frames, micro-batch 32, partial freeze), random init (the machine has no weights; the FLOPs and the step
  time do not depend on the values), plain torch AdamW under bf16 autocast: samples/s, peak memory, FLOPs per
  step counted by torch.utils.flop_counter, model FLOP utilisation against the device's dense bf16 peak
  (trainer/device_peaks.py; unknown devices: null with the name), and the losses of 20 steps from one seed under bf16
  autocast vs fp32 (TF32 off), which must agree within LOSS_RTOL (every step) and LOSS_MEAN_RTOL (on average).
- regions: RoI-Align region features (tubes.regions.region_features: the ViT-B/32 patch grid of every frame, then
  roi_align) at VidSTG sizes (200 frames, 10 and 20 proposals per frame), and roi_align alone on the device vs on
  the CPU (same grid and boxes; max difference reported).
- linking: tubes.linking.link_tubes (numpy, the host CPU) at VidSTG sizes.
- decode: the loader's JPEG decode (shards.jpeg.decode_jpegs, data.decode) of one video's frames at 224 px, each
  frame once, its windows cut (U = 16, a window every 3.5 s: HowTo100M's density): PIL on one CPU core (data.decode=
  cpu) vs torchvision.io.decode_jpeg batched on the device (nvJPEG, data.decode=gpu); windows/s of each and the
  largest pixel difference between the two.

Bare-machine contract: this file and every project module it imports need only torch, torchvision, numpy, PyYAML,
open_clip_torch (+ ftfy, regex, wcwidth) — no Ray, DeepSpeed, WebDataset, FAISS, fsspec or s3fs
(tests/test_gpu_check.py runs it with those imports blocked). It runs from the checkout's root without installing
it (`python3 -m` puts the root first on the import path).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.device_peaks import peak_bf16_tflops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
SECTIONS = ("sinkhorn", "train", "regions", "linking", "decode")

# bf16 autocast vs fp32, r_i = |l_bf16 - l_fp32| / |l_fp32| at step i: they agree when max r_i <= LOSS_RTOL and
# mean r_i <= LOSS_MEAN_RTOL (docs/gpu_check.md: why, and the CPU check of ViT-B/32 that sized them)
LOSS_RTOL = 0.05
LOSS_MEAN_RTOL = 0.02

WORDS = ("crack", "eggs", "into", "the", "bowl", "whisk", "until", "smooth", "then", "pour", "batter", "pan", "heat",
         "slowly", "flip", "pancake", "cut", "red", "onion", "dice", "garlic", "add", "salt", "stir", "sauce")


@dataclasses.dataclass
class Sizes:
    """Everything the run's size depends on; GPU() is the issue's, SMOKE() a CPU-seconds version of the same."""
    batch: int = 256                  # sinkhorn
    words: int = 20
    frames: int = 16
    selected: int = 8
    dim: int = 512
    patches: int = 49
    sinkhorn_repeats: int = 10
    backbone: str = "ViT-B-32"        # train (model fields beyond these come from configs/pretrain/vitb32.yaml)
    micro_batch: int = 32
    warmup_steps: int = 3
    timed_steps: int = 20
    compare_steps: int = 20
    regions: tuple = ((200, 10), (200, 20))   # (frames, proposals per frame): VidSTG at TubeDETR's 200 frames
    region_repeats: int = 3
    linking: tuple = ((200, 10), (200, 20), (400, 40))
    link_dim: int = 256
    tubes: int = 10
    jpeg_frames: int = 600                # decode: one 10-minute video at 1 fps ...
    jpeg_size: int = 224                  # ... at the model's input size
    jpeg_repeats: int = 3
    loss_rtol: float = LOSS_RTOL
    loss_mean_rtol: float = LOSS_MEAN_RTOL


def smoke_sizes() -> Sizes:
    return Sizes(batch=8, words=6, frames=6, selected=3, dim=16, patches=4, sinkhorn_repeats=2, backbone="stg-micro",
                 micro_batch=4, warmup_steps=1, timed_steps=2, compare_steps=3, regions=((6, 3),), region_repeats=1,
                 linking=((12, 3),), link_dim=16, tubes=2, jpeg_frames=20, jpeg_size=32, jpeg_repeats=1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- (a) Sinkhorn frame selection ---------------------------------------------------------------------------------

def sinkhorn_section(device: str, z: Sizes, seed: int) -> dict:
    from benchmarks.speed import sinkhorn as sk

    text, mask, video, _ = sk.inputs(z.batch, z.words, z.frames, 1, z.dim, seed, device)
    extra = (z.selected, 3, 0.1)  # the model's sinkhorn_iters and sinkhorn_temperature
    with torch.no_grad():
        t_loop, idx_loop = sk.timed(sk.per_sample, (text, mask, video, *extra), z.sinkhorn_repeats, device)
        t_fast, idx_fast = sk.timed(sk.batched, (text, mask, video, *extra), z.sinkhorn_repeats, device)
        # float64: the two solvers (log domain, batched; exp domain, per sample) are the same maths, so any
        # difference left is a bug, not a float32 near-tie
        d = [x.double() if x.is_floating_point() else x for x in (text, mask, video)]
        same64 = (sk.per_sample(*d, *extra) == sk.batched(*d, *extra)).all(dim=1)
    same = (idx_loop == idx_fast).all(dim=1)
    speedup = t_loop / t_fast
    return {"batch": z.batch, "words": z.words, "frames": z.frames, "selected": z.selected, "dim": z.dim,
            "iters": 3, "per_sample_ms": round(t_loop * 1e3, 3), "batched_ms": round(t_fast * 1e3, 3),
            "speedup": round(speedup, 1), "target_speedup": 50.0,
            "same_selection": same.float().mean().item(), "same_selection_fp64": same64.float().mean().item(),
            "identical": bool(same.all().item()),
            "meets_target": bool(speedup >= 50.0 and same64.all().item() and same.float().mean().item() >= 0.99)}


# --- (b) training step ------------------------------------------------------------------------------------------

def model_config(z: Sizes):
    """configs/pretrain/vitb32.yaml's model section, random init, at z's backbone and frame counts."""
    from pretrain.config import load

    cfg = load(os.path.join(ROOT, "configs", "pretrain", "vitb32.yaml"), ["data.shards=unused"])
    model = dataclasses.replace(cfg.model, backbone=z.backbone, pretrained=None, frames_in=z.frames,
                                frames_selected=z.selected)
    return model, cfg.optim


def captions(n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 19)))) for _ in range(n)]


def make_batch(model, z: Sizes, device: str, seed: int) -> dict:
    """uint8 frames at the model's size (shards store frames at the crop size) and real tokenized captions."""
    gen = torch.Generator().manual_seed(seed)
    s = model.image_size
    frames = torch.randint(0, 256, (z.micro_batch, z.frames, s, s, 3), generator=gen, dtype=torch.uint8)
    tokens = model.tokenize(captions(z.micro_batch, np.random.default_rng(seed)))
    return {"frames": frames.to(device), "tokens": tokens.to(device)}


class Step:
    """One optimizer step per micro-batch, as trainer/engine.py's torch optimizer path: AdamW over the trainable
    parameters (no decay on 1-d ones), clip_grad_norm_, constant LR (a warmup would leave 20 steps at LR ~ 0 and
    the bf16/fp32 comparison would compare nothing)."""

    def __init__(self, model, optim_cfg, amp: torch.dtype | None, device: str):
        from trainer.engine import param_groups

        self.model, self.amp, self.device, self.clip = model, amp, device, optim_cfg.grad_clip
        self.opt = torch.optim.AdamW(param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                                     betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)

    def __call__(self, batch: dict) -> float:
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(kind, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            out = self.model(batch)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip)
        self.opt.step()
        return out["loss"].detach()


def count_flops(step: Step, batch: dict) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


class fp32_matmuls:
    """TF32 off (cuBLAS and cuDNN: the patch embedding is a convolution) for the fp32 reference."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def train_section(device: str, z: Sizes, seed: int, peak_tflops: float | None) -> tuple[dict, object]:
    from pretrain.model import build_model

    mcfg, ocfg = model_config(z)
    torch.manual_seed(seed)
    model = build_model(mcfg)
    init = copy.deepcopy(model.state_dict())
    model.to(device).train()
    batches = [make_batch(model, z, device, seed + i) for i in range(2)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    step = Step(model, ocfg, torch.bfloat16, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(z.warmup_steps):
        step(batches[i % 2])
    sync(device)
    t0 = time.perf_counter()
    for i in range(z.timed_steps):
        loss = step(batches[i % 2])
    sync(device)
    step_s = (time.perf_counter() - t0) / z.timed_steps
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    flops = count_flops(step, batches[0])
    achieved = flops / step_s / 1e12
    out = {"backbone": mcfg.backbone, "image_size": model.image_size, "frames_in": mcfg.frames_in,
           "frames_selected": mcfg.frames_selected, "micro_batch": z.micro_batch, "freeze": mcfg.freeze,
           "unfrozen_blocks": mcfg.unfrozen_blocks, "params": total, "trainable_params": trainable,
           "precision": "bf16 autocast", "steps_timed": z.timed_steps, "step_s": round(step_s, 4),
           "samples_per_s": round(z.micro_batch / step_s, 2), "peak_memory_mb": None if peak_mb is None
           else round(peak_mb, 1), "flops_per_step": flops, "flops_per_sample": flops // z.micro_batch,
           "achieved_tflops": round(achieved, 2), "peak_bf16_tflops": peak_tflops,
           "mfu": None if peak_tflops is None else round(achieved / peak_tflops, 4),
           "last_loss": round(float(loss), 5)}
    del step
    out["bf16_vs_fp32"] = compare_precisions(model, init, ocfg, z, device, seed)
    return out, model


def flops_only(device: str, z: Sizes, seed: int) -> dict:
    """FLOPs of one training step at the GPU config's sizes, counted (not timed): the same on any device, so a CPU
    gives the figure that GPU-hour estimates divide by a measured throughput (docs/scale.md)."""
    from pretrain.model import build_model

    mcfg, ocfg = model_config(z)
    torch.manual_seed(seed)
    model = build_model(mcfg).to(device).train()
    step = Step(model, ocfg, torch.bfloat16, device)
    batch = make_batch(model, z, device, seed)
    flops = count_flops(step, batch)
    # the embedding job (index/embed.py) per clip: every window frame's global feature and the caption's
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode_frames(batch["frames"][:1])
        model.encode_text(batch["tokens"][:1])
    return {"embed_flops_per_clip": int(counter.get_total_flops()),"backbone": mcfg.backbone, "image_size": model.image_size, "frames_in": mcfg.frames_in,
            "frames_selected": mcfg.frames_selected, "micro_batch": z.micro_batch, "freeze": mcfg.freeze,
            "unfrozen_blocks": mcfg.unfrozen_blocks, "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "flops_per_step": flops, "flops_per_sample": flops / z.micro_batch}


def compare_precisions(model, init: dict, ocfg, z: Sizes, device: str, seed: int) -> dict:
    """The same initial weights and batches trained z.compare_steps steps under bf16 autocast and in fp32."""
    losses = {}
    for name, amp in (("bf16", torch.bfloat16), ("fp32", None)):
        model.load_state_dict(init)
        torch.manual_seed(seed)
        step = Step(model, ocfg, amp, device)
        with fp32_matmuls():
            losses[name] = [float(step(make_batch(model, z, device, 1000 + seed + i)))
                            for i in range(z.compare_steps)]
        del step
    b, f = np.asarray(losses["bf16"]), np.asarray(losses["fp32"])
    rel = np.abs(b - f) / np.maximum(np.abs(f), 1e-8)
    return {"steps": z.compare_steps, "lr": ocfg.lr, "losses_bf16": [round(x, 5) for x in b.tolist()],
            "losses_fp32": [round(x, 5) for x in f.tolist()], "max_abs_diff": round(float(np.abs(b - f).max()), 6),
            "max_rel_diff": round(float(rel.max()), 6), "mean_rel_diff": round(float(rel.mean()), 6),
            "rtol": z.loss_rtol, "mean_rtol": z.loss_mean_rtol,
            "finite": bool(np.isfinite(b).all() and np.isfinite(f).all()),
            "agree": bool(np.isfinite(rel).all() and rel.max() <= z.loss_rtol and rel.mean() <= z.loss_mean_rtol)}


# --- (c) region features and linking ------------------------------------------------------------------------------

def random_boxes(rng: np.random.Generator, shape: tuple, width: int, height: int) -> np.ndarray:
    wh = rng.uniform(0.1, 0.5, size=(*shape, 2)) * (width, height)
    xy = rng.uniform(0, 1, size=(*shape, 2)) * ((width, height) - wh)
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def regions_section(device: str, model, z: Sizes, seed: int) -> dict:
    from grounding.inference import CropGeometry
    from tubes.proposals import Proposals
    from tubes.regions import encode_grid, region_features, roi_pool, to_grid

    model.eval()
    rng = np.random.default_rng(seed)
    s = model.image_size
    geometry = CropGeometry(width=640, height=360, size=s)  # VidSTG's VidOR videos are mostly 640x360
    rows = []
    for frames_n, n in z.regions:
        frames = rng.integers(0, 256, size=(frames_n, s, s, 3), dtype=np.uint8)
        props = Proposals("bench", np.arange(frames_n), random_boxes(rng, (frames_n, n), 640, 360),
                          np.ones((frames_n, n), np.float32), np.ones((frames_n, n), bool))
        region_features(model, frames[:2], Proposals("w", props.frames[:2], props.boxes[:2], props.scores[:2],
                                                     props.valid[:2]), geometry)  # warm-up
        best = float("inf")
        for _ in range(z.region_repeats):
            sync(device)
            t0 = time.perf_counter()
            feats, _ = region_features(model, frames, props, geometry)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        with torch.no_grad():
            _, grid = encode_grid(model, frames)
            cells = torch.from_numpy(to_grid(props.boxes, geometry, grid.shape[-2:]).reshape(-1, 4))
            rois = torch.cat([torch.arange(frames_n).repeat_interleave(n).float()[:, None], cells], 1)
            t_dev, pooled = _timed(lambda: roi_pool(grid, rois.to(grid.device)), z.region_repeats, device)
            grid_cpu = grid.cpu()
            t_cpu, pooled_cpu = _timed(lambda: roi_pool(grid_cpu, rois), z.region_repeats, "cpu")
        rows.append({"frames": frames_n, "proposals": n, "grid": list(grid.shape[-2:]), "dim": int(grid.shape[1]),
                     "region_features_s": round(best, 4), "frames_per_s": round(frames_n / best, 1),
                     "finite": bool(np.isfinite(feats).all()),
                     "roi_align_device_ms": round(t_dev * 1e3, 3), "roi_align_cpu_ms": round(t_cpu * 1e3, 3),
                     "roi_align_speedup": round(t_cpu / max(t_dev, 1e-9), 1),
                     "roi_align_max_diff": float((pooled.cpu() - pooled_cpu).abs().max())})
    return {"model": model.cfg.backbone, "rows": rows}


def _timed(fn, repeats: int, device: str):
    fn()
    best, res = float("inf"), None
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        res = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, res


def decode_section(device: str, z: Sizes, seed: int) -> dict:
    import io

    from PIL import Image

    from shards.jpeg import decode_jpegs

    rng = np.random.default_rng(seed)
    n, size, u, every = z.jpeg_frames, z.jpeg_size, 16, 3.5
    yy, xx = np.mgrid[0:size, 0:size]
    jpegs = []
    for i in range(n):  # smooth structure that moves, plus sensor-like noise: compresses like video frames
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1).astype(np.float32)
        img += rng.normal(0, 8, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    starts = np.arange(0, n, every)
    windows = [np.clip(np.arange(int(c) - u // 2, int(c) + u // 2), 0, n - 1) for c in starts + every / 2]

    def cut(frames):
        stack = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.stack(frames))
        return [stack[w] for w in windows]

    cpu_s, cpu_w = _timed(lambda: cut(decode_jpegs(jpegs)), z.jpeg_repeats, "cpu")
    dev_s, dev_w = _timed(lambda: cut(torch.stack(decode_jpegs(jpegs, device))), z.jpeg_repeats, device)
    diff = max(int((a.int() - b.cpu().int()).abs().max()) for a, b in zip(cpu_w, dev_w))
    return {"frames": n, "size": size, "windows": len(windows), "window_frames": u, "segment_every_s": every,
            "cpu_pil_windows_per_s": round(len(windows) / cpu_s, 1),
            "device_windows_per_s": round(len(windows) / dev_s, 1), "device": device,
            "speedup": round(cpu_s / dev_s, 2), "max_pixel_difference": diff,
            "jpeg_decodes_per_window": round(n / len(windows), 2)}


def linking_section(z: Sizes, seed: int) -> dict:
    from tubes.linking import link_tubes

    rng = np.random.default_rng(seed)
    rows = []
    for frames_n, n in z.linking:
        # boxes drift a little per frame, so links exist and Viterbi has paths to follow, as in real detections
        start = random_boxes(rng, (1, n), 640, 360)
        drift = np.cumsum(rng.normal(0, 3, size=(frames_n, n, 2)), 0)
        boxes = (start + np.concatenate([drift, drift], -1)).astype(np.float32)
        feats = rng.normal(size=(frames_n, n, z.link_dim)).astype(np.float32)
        valid = rng.uniform(size=(frames_n, n)) > 0.05
        t0 = time.perf_counter()
        tubes = link_tubes(np.arange(frames_n), feats, boxes, valid, z.tubes)
        rows.append({"frames": frames_n, "proposals": n, "dim": z.link_dim, "tubes": len(tubes),
                     "seconds": round(time.perf_counter() - t0, 4)})
    return {"where": "host CPU (numpy)", "rows": rows}


# --- driver -------------------------------------------------------------------------------------------------------

def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_mb=round(props.total_memory / 2**20),
                   capability=f"{props.major}.{props.minor}")
    return env


def run(sections: list[str], device: str, z: Sizes, seed: int) -> dict:
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    peak = peak_bf16_tflops(name) if device.startswith("cuda") else None
    out = {"benchmark": "gpu_check", "measured": True, "device": device, "device_name": name,
           **environment(device), "sections": sections, "seconds": {}}
    # the project's modules (open_clip behind pretrain.model) take seconds to import: not part of any section
    import benchmarks.speed.sinkhorn  # noqa: F401
    import pretrain.model  # noqa: F401
    import tubes.linking  # noqa: F401
    import tubes.regions  # noqa: F401

    out["seconds"]["imports"] = round(time.perf_counter() - t_start, 2)
    if device.startswith("cuda") and peak is None:
        out["peak_unknown"] = f"no dense bf16 peak known for {name!r}: mfu is null (add it to trainer/device_peaks.py)"
    model = None
    for sec in sections:
        t0 = time.perf_counter()
        if sec == "sinkhorn":
            out["sinkhorn"] = sinkhorn_section(device, z, seed)
        elif sec == "train":
            out["train"], model = train_section(device, z, seed, peak)
        elif sec == "regions":
            if model is None:
                from pretrain.model import build_model

                torch.manual_seed(seed)
                model = build_model(model_config(z)[0]).to(device)
            out["regions"] = regions_section(device, model, z, seed)
        elif sec == "linking":
            out["linking"] = linking_section(z, seed)
        elif sec == "decode":
            out["decode"] = decode_section(device, z, seed)
        out["seconds"][sec] = round(time.perf_counter() - t0, 2)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    out["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: the code path, not a measurement")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--micro-batch", type=int, help="train: samples per step (default: the config's 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops-only", action="store_true",
                   help="count the FLOPs of one training step at the GPU sizes (any device; nothing timed)"
                        " (with --cpu-smoke: at the smoke sizes, on the CPU)")
    p.add_argument("--out", help="also write the JSON object to this file")
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        print(f"error: --sections takes a comma-separated subset of {','.join(SECTIONS)}, got {a.sections!r}",
              file=sys.stderr)
        return 2
    if a.micro_batch is not None and a.micro_batch < 2:
        print(f"error: --micro-batch must be >= 2 (contrastive negatives), got {a.micro_batch}", file=sys.stderr)
        return 2
    if a.flops_only:
        device = "cuda" if torch.cuda.is_available() and not a.cpu_smoke else "cpu"
        z = smoke_sizes() if a.cpu_smoke else Sizes()  # with --cpu-smoke: the code path at tiny sizes
        if a.micro_batch:
            z.micro_batch = a.micro_batch
        t0 = time.perf_counter()
        out = {"benchmark": "gpu_check", "mode": "flops_only", "measured": False, "device": device,
               "reason": "FLOPs counted by torch.utils.flop_counter over one step; nothing timed",
               **environment(device), "train": flops_only(device, z, a.seed),
               "seconds": round(time.perf_counter() - t0, 2)}
        print(json.dumps(out))
        return 0
    if a.cpu_smoke:
        device, z = "cpu", smoke_sizes()
    elif torch.cuda.is_available():
        device, z = "cuda", Sizes()
    else:
        out = {"benchmark": "gpu_check", "measured": False,
               "reason": "no CUDA device (torch.cuda.is_available() is False): nothing measured",
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "hint": "run it on a GPU machine (docs/gpu_check.md); --cpu-smoke runs the code path on tiny sizes"}
        print(json.dumps(out))
        return 0
    if a.micro_batch:
        z.micro_batch = a.micro_batch
    out = run(sections, device, z, a.seed)
    if a.cpu_smoke:
        out["measured"] = False
        out["reason"] = "--cpu-smoke: tiny sizes on CPU, the code path only; these are not GPU figures"
    text = json.dumps(out)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
