"""The step loop every stage trains with: resume, micro-batches, logging and checkpoint cadence.

A stage builds its model and engine (trainer.engine.build_engine) and hands `fit` a Task: what the inputs of one
micro-batch are, and what a checkpoint keeps besides the engine's weights, optimizer and LR schedule (a data
position, counters). `fit` needs an initialised torch.distributed group (trainer.engine.init_distributed) and runs
the same on one rank or many. `report`, when given, is called on every rank with identical metrics at each log
step and after each checkpoint (with the checkpoint's URL); ray.train.report is one (it is a barrier, so every
rank must call it equally often).

Resume is automatic: the newest complete checkpoint under <run>/checkpoints restores the engine, the step, the
task's state and the RNG states, so a resumed run continues the exact sample and random sequence.
"""
from __future__ import annotations

import abc
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from trainer import checkpoint
from trainer.runlog import RunLog
from trainer.settings import TrainSettings

log = logging.getLogger(__name__)
Report = Callable[[dict, "str | None"], None]


class Task(abc.ABC):
    """What one stage trains on. Only `inputs` is required; the other hooks keep their defaults when a stage has
    nothing to add. Hooks marked collective are called on every rank at the same points."""

    @abc.abstractmethod
    def inputs(self, step: int, micro: int) -> dict:
        """The engine's inputs (on its device) for micro-batch `micro` of optimizer step `step` (0-based)."""

    def start(self, state: dict | None) -> None:
        """Called once before the first step: the state `state()` returned at the resumed checkpoint, or None."""

    def state(self) -> dict:
        """This rank's plain-valued (JSON-able) state kept in each checkpoint (a data position, counters)."""
        return {}

    def metrics(self) -> dict:
        """Collective: extra metrics at a log step, identical on every rank."""
        return {}

    def marker(self) -> dict:
        """Collective: extra keys for a checkpoint's `complete` marker (rank 0 writes them)."""
        return {}

    def record(self) -> dict:
        """Extra fields of this step's per-step record (rank 0)."""
        return {}

    def close(self) -> None:
        """Release what `start` opened (loader processes); called after the last step or on failure."""


@dataclass
class Outcome:
    step: int                       # the step the loop stopped after
    resumed_from: int | None        # the checkpoint this attempt started from
    first_loss: float | None        # the loss of this attempt's first step
    metrics: dict = field(default_factory=dict)  # the last log step's metrics


def _mean_across_ranks(values: dict[str, float], device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def fit(engine, task: Task, s: TrainSettings, report: Report | None = None) -> Outcome:
    """Train from the newest complete checkpoint (or step 0) until s.stop; returns this rank's outcome."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = engine.device
    step, restored = 0, None
    resumed_from = checkpoint.latest(s.run)
    if resumed_from is not None:
        state = checkpoint.load(engine, s.run, resumed_from, rank=rank, world=world)
        step, restored = state["step"], state.get("task", {})
        if rank == 0:
            log.warning("resumed from %s (step %d)", checkpoint.url_of(s.run, resumed_from), step)
    task.start(restored)
    runlog = RunLog(s.run, step + 1, rank == 0)
    bar = _progress(s, rank, step)
    window: Counter = Counter()  # sums over the current log window
    out = Outcome(step, resumed_from, None)

    def save() -> None:
        marker = task.marker()
        # the log first: a resume never re-runs the steps of a complete checkpoint, so their records must be on
        # disk before the checkpoint's marker is (a crash in between would lose them for good)
        runlog.flush()
        url = checkpoint.save(engine, s.run, step, {"step": step, "task": task.state()}, rank=rank, world=world,
                              keep_last=s.keep_last, extra_marker=marker)
        if report:
            report({**out.metrics, "step": step, "checkpoint_step": step}, url)

    try:
        while step < s.stop:
            t0 = time.perf_counter()
            wait = 0.0
            parts: Counter = Counter()
            for micro in range(s.grad_accum):
                tw = time.perf_counter()
                inputs = task.inputs(step, micro)
                wait += time.perf_counter() - tw
                result = engine(inputs)
                engine.backward(result["loss"])
                engine.step()
                for k, v in result.items():  # losses and other scalar diagnostics
                    if torch.is_tensor(v) and v.dim() == 0:
                        parts[k] += float(v.detach()) / s.grad_accum
            step += 1
            dt = time.perf_counter() - t0
            lr = engine.get_lr()[0]
            if out.first_loss is None:
                out.first_loss = parts.get("loss")
            window.update({"time": dt, "wait": wait, "steps": 1, **{f"sum_{k}": v for k, v in parts.items()}})
            runlog.step({"step": step, "lr": lr, "time": dt, "wait": wait, "t": time.time(), **parts,
                         **task.record()})
            bar.update(1)
            if step % s.log_every == 0 or step == s.stop:
                out.metrics = _window_metrics(window, lr, step, s, world, device, task)
                window.clear()
                runlog.scalars(step, out.metrics)
                bar.set_postfix(loss=f"{out.metrics.get('loss', float('nan')):.4f}",
                                wait=f"{out.metrics['data_wait_frac']:.2f}")
                if rank == 0 and s.print_metrics:
                    # written, not print()ed: Ray Train's print patch would log each line a second time
                    sys.stderr.write(json.dumps(out.metrics) + "\n")
                    sys.stderr.flush()
                if step % s.checkpoint_every != 0 and step != s.stop:
                    runlog.flush()
                    if report:
                        report(out.metrics, None)
            if step % s.checkpoint_every == 0 or step == s.stop:
                save()
    finally:
        bar.close()
        runlog.close()
        task.close()
    out.step = step
    return out


def _window_metrics(window: Counter, lr: float, step: int, s: TrainSettings, world: int, device,
                    task: Task) -> dict:
    n = window["steps"]
    local = {k[4:]: window[k] / n for k in window if k.startswith("sum_")}
    local["data_wait_frac"] = window["wait"] / max(window["time"], 1e-9)
    local["step_time_s"] = window["time"] / n
    metrics = _mean_across_ranks(local, device)
    metrics["samples_per_s"] = s.micro_batch * s.grad_accum * world / max(metrics["step_time_s"], 1e-9)
    metrics["lr"] = lr
    metrics["step"] = step
    metrics.update(task.metrics())
    return metrics


def _progress(s: TrainSettings, rank: int, step: int):
    from tqdm import tqdm

    return tqdm(total=s.stop, initial=step, desc=s.name, unit="step", disable=not (s.progress and rank == 0),
                dynamic_ncols=True, file=sys.stderr)
