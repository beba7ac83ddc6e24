"""The per-worker training loop: one DeepSpeed data-parallel rank.

It needs only an initialised torch.distributed process group (or the usual RANK/WORLD_SIZE/MASTER_* variables),
so it runs the same under Ray Train (cluster/pretrain.py), torchrun or the deepspeed launcher. `report`, when
given, is called on every rank with identical metrics at each log step and after each checkpoint; it is how
the Ray entry forwards them (ray.train.report acts as a barrier, so every rank must call it equally often).

Resume is automatic: the newest complete checkpoint under <run>/checkpoints restores module, optimizer, LR
schedule, step, data position and RNG states, so a resumed run continues the exact sample and random sequence.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Callable

import torch
import torch.distributed as dist

from common import fsio
from pretrain import checkpoint, data
from pretrain.config import PretrainConfig, to_dict
from pretrain.engine import build_engine, on_gpu

log = logging.getLogger(__name__)
Report = Callable[[dict, "str | None"], None]


def _init_distributed(cfg: PretrainConfig) -> None:
    import deepspeed

    backend = "nccl" if on_gpu() else "gloo"
    # Under Ray Train the process group exists already; DeepSpeed then only wraps it.
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=cfg.comm_timeout_s))


class RunLog:
    """Rank 0's per-step records of this attempt (`<run>/logs/attempt-<first step>-<time>.jsonl`) and
    TensorBoard events (`<run>/tensorboard`), synced to object storage at each flush."""

    def __init__(self, run: str, first_step: int, enabled: bool):
        self.enabled = enabled
        self.records: list[dict] = []
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.url = fsio.join(run, "logs", f"attempt-{first_step:08d}-{stamp}-{os.getpid()}.jsonl")
        self.tb_url = fsio.join(run, "tensorboard")
        self._tmp = None
        if fsio.is_local(run):
            tb_dir = fsio.filesystem(self.tb_url)[1]
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="stg-tb-")
            tb_dir = self._tmp.name
        self.tb_dir = tb_dir
        self.writer = SummaryWriter(tb_dir)

    def step(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k.replace(".", "/"), v, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        fsio.write_text_atomic(self.url, "".join(json.dumps(r) + "\n" for r in self.records))
        self.writer.flush()
        if self._tmp is not None:
            for name in os.listdir(self.tb_dir):
                fsio.put_file_atomic(os.path.join(self.tb_dir, name), fsio.join(self.tb_url, name))

    def close(self) -> None:
        if self.enabled:
            self.flush()
            self.writer.close()
            if self._tmp is not None:
                self._tmp.cleanup()


def _mean_across_ranks(values: dict[str, float], device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _sum_counts(counts: Counter, device) -> dict[str, int]:
    """Skip counters summed over ranks (each rank may have met different reasons)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total: Counter = Counter()
    for c in gathered:
        total.update(c)
    return dict(total)


def run(cfg: PretrainConfig, report: Report | None = None, ds_base: dict | None = None) -> dict:
    """Train until cfg.max_steps (or cfg.stop_at_step); returns rank-local summary figures. `ds_base` is the
    DeepSpeed file's content (default: read cfg.deepspeed here)."""
    from pretrain.model import build_model

    _init_distributed(cfg)
    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model)
    if cfg.init:  # weights of an earlier export (e.g. the round before mining); a resumed checkpoint overrides them
        from pretrain.model import load_model

        model.load_state_dict(load_model(cfg.init).state_dict())
    engine, _ = build_engine(model, cfg, world, base=ds_base)
    device = engine.device
    torch.manual_seed(cfg.seed * 1_000_003 + rank + 1)  # per-rank randomness from here on (dropout, augment)

    shards = data.read_manifest(cfg.data.shards)
    epoch_samples = cfg.data.samples_per_epoch or shards.total_samples
    spe = data.steps_per_epoch(epoch_samples, cfg.data.micro_batch, cfg.optim.grad_accum, world)
    gas = cfg.optim.grad_accum

    step, position, skipped_before = 0, None, Counter()
    resumed_from = checkpoint.latest(cfg.run)
    if resumed_from is not None:
        state = checkpoint.load(engine, cfg.run, resumed_from, rank=rank, world=world)
        step = state["step"]
        position = data.DataPosition.from_dict(state["data"])
        skipped_before.update(state.get("skipped", {}))
        if rank == 0:
            log.warning("resumed from %s (step %d)", checkpoint.url_of(cfg.run, resumed_from), step)
    loader = data.RankLoader(shards, micro_batch=cfg.data.micro_batch, batches_per_epoch=spe * gas,
                             seed=cfg.seed, rank=rank, loader_workers=cfg.data.loader_workers,
                             shuffle_buffer=cfg.data.shuffle_buffer, prefetch=cfg.data.prefetch,
                             max_bad_shards=cfg.data.max_bad_shards, position=position,
                             clips_per_video=cfg.data.clips_per_video)
    stop = cfg.stop_at_step or cfg.max_steps
    runlog = RunLog(cfg.run, step + 1, rank == 0)
    bar = _progress(cfg, rank, step, stop)
    window = Counter()  # sums over the current log window
    last_saved = resumed_from
    last_metrics: dict = {}
    model_config = to_dict(cfg)["model"]

    def save() -> None:
        nonlocal last_saved
        skipped = _sum_counts(loader.skipped, device)
        local_skipped = dict(skipped_before + loader.skipped)
        trainer_state = {"step": step, "data": loader.position.to_dict(), "skipped": local_skipped,
                         "epoch": loader.position.epoch}
        # the log first: a resume never re-runs the steps of a complete checkpoint, so their records must be on
        # disk before the checkpoint's marker is (a crash in between would lose them for good)
        runlog.flush()
        url = checkpoint.save(engine, cfg.run, step, trainer_state, rank=rank, world=world,
                              keep_last=cfg.keep_last,
                              extra_marker={"model_config": model_config, "skipped_this_attempt": skipped})
        last_saved = step
        if report:
            report({**last_metrics, "step": step, "checkpoint_step": step}, url)

    try:
        while step < stop:
            t0 = time.perf_counter()
            wait = 0.0
            parts: Counter = Counter()
            for _ in range(gas):
                tw = time.perf_counter()
                batch = loader.next()
                wait += time.perf_counter() - tw
                inputs = data.model_inputs(batch, cfg, model.tokenize, device)
                out = engine(inputs)
                engine.backward(out["loss"])
                engine.step()
                for k, v in out.items():  # losses and other scalar diagnostics (logit scale)
                    if torch.is_tensor(v) and v.dim() == 0:
                        parts[k] += float(v.detach()) / gas
            step += 1
            dt = time.perf_counter() - t0
            lr = engine.get_lr()[0]
            window.update({"time": dt, "wait": wait, "steps": 1, **{f"sum_{k}": v for k, v in parts.items()}})
            runlog.step({"step": step, "lr": lr, "loss": parts.get("loss", float("nan")),
                         "time": dt, "wait": wait, "epoch": loader.position.epoch, "t": time.time()})
            bar.update(1)
            if step % cfg.log_every == 0 or step == stop:
                last_metrics = _log_window(window, parts, lr, step, cfg, world, device, loader, skipped_before)
                window.clear()
                runlog.scalars(step, last_metrics)
                bar.set_postfix(loss=f"{last_metrics['loss']:.4f}", wait=f"{last_metrics['data_wait_frac']:.2f}")
                if rank == 0 and not cfg.progress:
                    print(json.dumps(last_metrics), file=sys.stderr, flush=True)
                if step % cfg.checkpoint_every != 0 and step != stop:
                    runlog.flush()
                    if report:
                        report(last_metrics, None)
            if step % cfg.checkpoint_every == 0 or step == stop:
                save()
    finally:
        bar.close()
        runlog.close()
        loader.close()

    if step >= cfg.max_steps and cfg.export and rank == 0:
        from pretrain.export import export_run

        export_run(cfg.run, step)
    dist.barrier()
    return {"step": step, "resumed_from": resumed_from, "rank": rank, "world": world, **last_metrics}


def _log_window(window: Counter, parts: Counter, lr: float, step: int, cfg: PretrainConfig, world: int, device,
                loader: data.RankLoader, skipped_before: Counter) -> dict:
    n = window["steps"]
    local = {k[4:]: window[k] / n for k in window if k.startswith("sum_")}
    local["data_wait_frac"] = window["wait"] / max(window["time"], 1e-9)
    local["step_time_s"] = window["time"] / n
    metrics = _mean_across_ranks(local, device)
    samples = cfg.data.micro_batch * cfg.optim.grad_accum * world
    metrics["samples_per_s"] = samples / max(metrics["step_time_s"], 1e-9)
    metrics["lr"] = lr
    metrics["step"] = step
    metrics["epoch"] = loader.position.epoch
    skipped = _sum_counts(skipped_before + loader.skipped, device)
    metrics["skipped_total"] = sum(skipped.values())
    for reason, count in skipped.items():
        metrics[f"skipped.{reason}"] = count
    return metrics


def _progress(cfg: PretrainConfig, rank: int, step: int, stop: int):
    from tqdm import tqdm

    return tqdm(total=stop, initial=step, desc="pretrain", unit="step", disable=not (cfg.progress and rank == 0),
                dynamic_ncols=True, file=sys.stderr)
