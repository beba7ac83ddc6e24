"""The per-worker pretraining loop: one DeepSpeed data-parallel rank on the shard set.

What is pretraining's own lives here: the model, the shard loader (its position and skip counters go into every
checkpoint), the export at the end. The engine, checkpoints, logs and the step loop are the trainer package's
(trainer/loop.py). It needs only an initialised torch.distributed process group (or the usual
RANK/WORLD_SIZE/MASTER_* variables), so it runs the same under Ray Train (cluster/pretrain.py), torchrun or the
deepspeed launcher. `report` is trainer.loop.fit's (the Ray entry forwards metrics and checkpoints with it).

Resume is automatic: the newest complete checkpoint under <run>/checkpoints restores module, optimizer, LR
schedule, step, data position and RNG states, so a resumed run continues the exact sample and random sequence.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch
import torch.distributed as dist

from pretrain import data
from pretrain.config import PretrainConfig, train_settings
from trainer.engine import build_engine, init_distributed
from trainer.loop import Report, Task, fit


def _sum_counts(counts: Counter) -> dict[str, int]:
    """Skip counters summed over ranks (each rank may have met different reasons)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    total: Counter = Counter()
    for c in gathered:
        total.update(c)
    return dict(total)


class ShardTask(Task):
    """Micro-batches from this rank's shard loader; a checkpoint keeps its position and skip counters."""

    def __init__(self, cfg: PretrainConfig, model, device, rank: int, world: int):
        self.cfg, self.model, self.device, self.rank = cfg, model, device, rank
        self.shards = data.read_manifest(cfg.data.shards)
        epoch_samples = cfg.data.samples_per_epoch or self.shards.total_samples
        spe = data.steps_per_epoch(epoch_samples, cfg.data.micro_batch, cfg.optim.grad_accum, world)
        self.batches_per_epoch = spe * cfg.optim.grad_accum
        self.loader = None
        self.skipped_before: Counter = Counter()
        # the model's own config: its architecture resolved (pretrain.architecture), what an export rebuilds
        self.model_config = dataclasses.asdict(model.cfg)

    def start(self, state: dict | None) -> None:
        position = None
        if state:
            position = data.DataPosition.from_dict(state["data"])
            self.skipped_before.update(state.get("skipped", {}))
        d = self.cfg.data
        self.loader = data.RankLoader(self.shards, micro_batch=d.micro_batch, batches_per_epoch=self.batches_per_epoch,
                                      seed=self.cfg.seed, rank=self.rank, loader_workers=d.loader_workers,
                                      shuffle_buffer=d.shuffle_buffer, prefetch=d.prefetch,
                                      max_bad_shards=d.max_bad_shards, position=position,
                                      clips_per_video=d.clips_per_video, mil_windows=self.cfg.model.mil_windows,
                                      mil_shift=self.cfg.model.mil_shift, decode=d.decode, device=self.device,
                                      window_frames=d.window_frames)

    def inputs(self, step: int, micro: int) -> dict:
        return data.model_inputs(self.loader.next(), self.cfg, self.model.tokenize, self.device)

    def state(self) -> dict:
        return {"data": self.loader.position.to_dict(), "skipped": dict(self.skipped_before + self.loader.skipped),
                "epoch": self.loader.position.epoch}

    def record(self) -> dict:
        return {"epoch": self.loader.position.epoch}

    def metrics(self) -> dict:
        skipped = _sum_counts(self.skipped_before + self.loader.skipped)
        out = {"epoch": self.loader.position.epoch, "skipped_total": sum(skipped.values())}
        out.update({f"skipped.{reason}": count for reason, count in skipped.items()})
        return out

    def marker(self) -> dict:
        return {"model_config": self.model_config, "skipped_this_attempt": _sum_counts(self.loader.skipped)}

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()


def run(cfg: PretrainConfig, report: Report | None = None, ds_base: dict | None = None,
        pruned_elsewhere: bool = False) -> dict:
    """Train until cfg.max_steps (or cfg.stop_at_step); returns rank-local summary figures. `ds_base` is the
    DeepSpeed file's content (default: read cfg.deepspeed here); `pruned_elsewhere`: old checkpoints are
    deleted by whoever tracks them (Ray Train's CheckpointConfig), not here."""
    from pretrain.model import build_model

    init_distributed(cfg.comm_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model)
    if cfg.init:  # weights of an earlier export (e.g. the round before mining); a resumed checkpoint overrides them
        from pretrain.model import load_model

        model.load_state_dict(load_model(cfg.init).state_dict())
    settings = train_settings(cfg, keep_last=0 if pruned_elsewhere else cfg.keep_last)
    engine, _ = build_engine(model, settings, world, base=ds_base)
    torch.manual_seed(cfg.seed * 1_000_003 + rank + 1)  # per-rank randomness from here on (dropout, augment)
    out = fit(engine, ShardTask(cfg, model, engine.device, rank, world), settings, report)
    if out.step >= cfg.max_steps and cfg.export and rank == 0:
        from pretrain.export import export_run

        export_run(cfg.run, out.step)
    dist.barrier()
    return {"step": out.step, "resumed_from": out.resumed_from, "rank": rank, "world": world, **out.metrics}
