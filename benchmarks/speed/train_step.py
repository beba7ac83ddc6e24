"""Training-step overhead of DeepSpeed and data-wait of a real sharded run; prints one JSON object.

1. One process (gloo, world 1): the DeepSpeed engine (the config's ZeRO stage, fp32, clipping, LR schedule)
   against a plain torch loop (AdamW, clip_grad_norm_, LambdaLR) on the same model, initial weights and batch.
   Blocks of steps alternate between the two so drift of a shared machine hits both. Target: ratio <= 1.15.
2. A real pretraining job through cluster.pretrain (Ray Train, DeepSpeed workers, WebDataset shards): the
   fraction of step time rank 0 spent waiting for its next batch, from the run's per-step log. Target < 5%.

    python -m benchmarks.speed.train_step [--config configs/pretrain/tiny.yaml] [--shards URL] [key=value ...]

Without --shards, `--videos DIR` shards the mp4s of DIR with the project's sharder (shards.pipeline, real ffmpeg
decoding; one caption every 4 s since real videos come without ASR), and with neither a small synthetic corpus
(shards.synthetic: real mp4s and their narration) is generated and sharded the same way.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/stground/torch_extensions"))
os.environ.setdefault("RAY_AUTH_MODE", "token")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_overhead(cfg, blocks: int, per_block: int) -> dict:
    import deepspeed
    import torch

    from pretrain import data
    from pretrain.config import train_settings
    from trainer.engine import build_engine, lr_lambda, param_groups
    from pretrain.model import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    shards = data.read_manifest(cfg.data.shards)
    batch = data.RankLoader(shards, micro_batch=cfg.data.micro_batch, batches_per_epoch=10, seed=0, rank=0).next()

    torch.manual_seed(0)
    model = build_model(cfg.model)
    plain = copy.deepcopy(model)
    engine, _ = build_engine(model, train_settings(cfg), world=1)
    inputs = {"frames": batch["frames"], "tokens": model.tokenize(batch["captions"])}

    o = cfg.optim
    opt = torch.optim.AdamW(param_groups(plain, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, o.warmup_steps, cfg.max_steps,
                                                                       o.min_lr_ratio))

    def ds_step():
        out = engine(inputs)
        engine.backward(out["loss"])
        engine.step()

    def torch_step():
        out = plain(inputs)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(plain.parameters(), o.grad_clip)
        opt.step()
        sched.step()

    for f in (ds_step, torch_step):  # warm-up: allocator, first-call paths
        f()
        f()
    times = {"deepspeed": [], "torch": []}
    for _ in range(blocks):
        for name, f in (("deepspeed", ds_step), ("torch", torch_step)):
            t = time.perf_counter()
            for _ in range(per_block):
                f()
            times[name].append((time.perf_counter() - t) / per_block)
    ds_s, torch_s = statistics.median(times["deepspeed"]), statistics.median(times["torch"])
    return {"deepspeed_step_s": ds_s, "torch_step_s": torch_s, "step_ratio": ds_s / torch_s,
            "zero_stage": engine.zero_optimization_stage(), "micro_batch": cfg.data.micro_batch,
            "blocks": blocks, "steps_per_block": per_block}


def data_wait(cfg) -> dict:
    from cluster.pretrain import run_pretrain
    from common import fsio

    t = time.perf_counter()
    result = run_pretrain(cfg)
    wall = time.perf_counter() - t
    logs = fsio.join(cfg.run, "logs")
    recs = [json.loads(line) for name in fsio.listdir(logs)
            for line in fsio.read_text(fsio.join(logs, name)).splitlines() if line.strip()]
    steady = [r for r in recs if r["step"] > 1]  # step 1 includes starting the loader
    wait, busy = sum(r["wait"] for r in steady), sum(r["time"] for r in steady)
    return {"data_wait_frac": wait / busy, "data_wait_frac_first_step": recs[0]["wait"] / recs[0]["time"],
            "run_samples_per_s": result.metrics.get("samples_per_s"), "run_steps": len(recs),
            "run_workers": cfg.cluster.workers, "run_loader_workers": cfg.data.loader_workers,
            "run_wall_s": wall, "run_error": str(result.error) if result.error else None}


def shard_videos(video_dir: str, out: str, frames: int, size: int) -> str:
    """Shard every mp4 of video_dir with the real sharder; captions are made up (one per 4 s window)."""
    import csv
    import subprocess

    import imageio_ffmpeg

    from shards.config import ShardConfig
    from shards.pipeline import run

    os.makedirs(out, exist_ok=True)
    corpus = os.path.join(out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    captions, rows = {}, []
    verbs = ["cut", "pour", "stir", "crack", "peel", "wash", "fold", "roll"]
    for i, name in enumerate(sorted(f for f in os.listdir(video_dir) if f.endswith(".mp4"))):
        vid = os.path.splitext(name)[0]
        path = os.path.join(video_dir, name)
        probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", path], capture_output=True, text=True).stderr
        hms = probe.split("Duration: ", 1)[1].split(",", 1)[0].split(":")
        duration = int(hms[0]) * 3600 + int(hms[1]) * 60 + float(hms[2])
        starts = [float(t) for t in range(0, max(1, int(duration) - 4), 4)]
        captions[vid] = {"start": starts, "end": [t + 4 for t in starts],
                         "text": [f"{verbs[(i + j) % len(verbs)]} the thing" for j in range(len(starts))]}
        rows.append((vid, path))
    with open(os.path.join(corpus, "manifest.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("video_id", "path"), *rows])
    with open(os.path.join(corpus, "caption.json"), "w") as f:
        json.dump(captions, f)
    shards = os.path.join(out, "shards")
    cfg = ShardConfig(manifest=os.path.join(corpus, "manifest.csv"), output=shards, size=size,
                      window_frames=frames, videos_per_shard=1, distributor="sequential", progress=False)
    summary = run(cfg)
    if summary.get("shards_failed"):
        raise RuntimeError(f"sharding failed: {summary}")
    return shards


def synthetic_shards(out: str, frames: int, size: int, videos: int = 32) -> str:
    """The train split of a small synthetic corpus (~250 clips), sharded by the real sharder."""
    from shards.config import ShardConfig
    from shards.pipeline import run
    from shards.synthetic import SyntheticConfig, generate

    corpus = os.path.join(out, "corpus")
    generate(SyntheticConfig(out=corpus, n_train=videos, n_test=0))
    shards = os.path.join(out, "shards")
    cfg = ShardConfig(manifest=os.path.join(corpus, "train", "manifest.csv"), output=shards, size=size,
                      window_frames=frames, videos_per_shard=4, distributor="sequential", progress=False)
    summary = run(cfg)
    if summary.get("shards_failed"):
        raise RuntimeError(f"sharding failed: {summary}")
    return shards


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "pretrain", "tiny.yaml"))
    p.add_argument("--shards", help="shard set URL (default: generate a small one)")
    p.add_argument("--videos", help="shard the mp4s of this folder with the real sharder and train on them")
    p.add_argument("--size", type=int, default=64, help="frame size of generated or sharded data")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--steps-per-block", type=int, default=4)
    p.add_argument("--run-steps", type=int, default=20)
    p.add_argument("--skip-run", action="store_true", help="only the step comparison")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from pretrain.config import load

    with tempfile.TemporaryDirectory(prefix="stg-bench-") as tmp:
        shards = args.shards
        base = load(args.config, ["data.shards=unused", *args.overrides])
        if not shards and args.videos:
            shards = shard_videos(args.videos, os.path.join(tmp, "real"), base.model.frames_in, args.size)
        if not shards:
            shards = synthetic_shards(os.path.join(tmp, "synthetic"), base.model.frames_in, args.size)
        over = [f"data.shards={shards}", f"run={os.path.join(tmp, 'run')}", *args.overrides]
        cfg = load(args.config, over)
        out = {"config": args.config, "shards": shards, **step_overhead(cfg, args.blocks, args.steps_per_block)}
        out["step_ratio_target"] = 1.15
        if not args.skip_run:
            run_cfg = load(args.config, over + [f"max_steps={args.run_steps}", f"checkpoint_every={args.run_steps}",
                                                "log_every=5", "progress=false", "export=false"])
            out.update(data_wait(run_cfg))
            out["data_wait_target"] = 0.05
        print(json.dumps(out))


if __name__ == "__main__":
    main()
