"""One sweep runner: the jobs of a grid (rows x seeds, or a config's sweep section), each a `finetune.train.run`.

`jobs` / `expand` give the configs; `run_local` runs them one after another in this process, sharing each feature
set's store so the cache is read once (the heads benchmark, ablation rows); cluster/finetune.py runs the same jobs
as Ray tasks. A job whose run folder already holds a summary with metrics is read, not re-run, so an interrupted
grid continues where it stopped; a failed job is recorded with its error and the others go on.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os

from common import config as cfglib
from common import fsio
from common.errors import UserError
from finetune import config as C


@dataclasses.dataclass(frozen=True)
class Job:
    row: str          # the row's name (a head, an ablation variant)
    seed: int
    cfg: object       # its FinetuneConfig (validated)


def expand(cfg) -> list:
    """The configs of a (resolved) config's sweep section: itself when it names no sweep, else one per head x seed x
    variant, each with its own run folder under cfg.run. A variant is a list of key=value overrides (an ablation
    row)."""
    s = cfg.sweep
    if not (s.heads or s.seeds or s.variants):
        return [cfg]
    out = []
    variants = list(s.variants.items()) or [("", [])]
    for head, seed, (variant, overrides) in itertools.product(s.heads or [cfg.head], s.seeds or [cfg.seed],
                                                              variants):
        name = "-".join(p for p in (head if s.heads else "", variant, f"seed{seed}") if p)
        data = C.to_dict(dataclasses.replace(cfg, head=head, seed=seed, name=f"{cfg.name}-{name}",
                                             run=fsio.join(cfg.run, name), sweep=C.SweepConfig()))
        out.append(C.from_dict(cfglib.apply_overrides(data, [str(ov) for ov in overrides])))
    return out


def jobs(rows: list[tuple[str, str, list[str]]], seeds: list[int], out: str, common: list[str] = ()) -> list[Job]:
    """Rows (name, config file, overrides) x seeds, each job's run folder OUT/NAME/seedS; `common` overrides apply
    to every row (before its own)."""
    return [Job(name, seed, C.load(config, [*common, f"run={os.path.join(out, name, f'seed{seed}')}", f"seed={seed}",
                                            *overrides]))
            for name, config, overrides in rows for seed in seeds]


class SharedStore:
    """A feature store whose load_all keeps what it read, for the next finetune over the same features."""

    def __init__(self, store):
        self.store = store
        self.loaded: dict = {}

    def __getattr__(self, name):
        return getattr(self.store, name)

    def load_all(self, videos):
        k = tuple(sorted(videos))
        if k not in self.loaded:
            self.loaded[k] = self.store.load_all(videos)
        return {v: self.loaded[k][v] for v in videos if v in self.loaded[k]}


def features_key(cfg) -> str:
    """Jobs with the same key read the same features (heads may want regions, or an earlier block's)."""
    from finetune.heads.registry import spec_of

    spec, d = spec_of(cfg.head), C.to_dict(cfg)
    return json.dumps([d["features"], d["dataset"], cfg.checkpoint, d["tubes"], spec.regions,
                       spec.mid_layer(spec.section(cfg))], sort_keys=True, default=str)


def finished(cfg) -> dict | None:
    """The summary of a run that already finished with metrics in cfg.run, or None."""
    done = fsio.join(C.resolve(cfg).run, "summary.json")
    if fsio.exists(done):
        summary = fsio.read_json(done)
        if summary.get("metrics"):
            return summary
    return None


def run_local(grid: list[Job], on_done=None) -> list[dict]:
    """Each job's summary (or {"error": ...}), in order; runs in this process, one feature store per feature set."""
    from finetune.families import family_of
    from finetune.train import run

    stores: dict[str, SharedStore] = {}
    out = []
    for job in grid:
        summary = finished(job.cfg)
        if summary is None:
            key = features_key(job.cfg)
            if key not in stores:
                resolved = C.resolve(job.cfg)
                stores[key] = SharedStore(family_of(resolved).store(resolved))
            try:
                summary = run(job.cfg, store=stores[key])
            except Exception as e:  # noqa: BLE001 - one failed job must not hide the others' results
                # exit: what the job's own command would have returned (2: it refused its input)
                summary = {"run": job.cfg.run, "error": f"{type(e).__name__}: {e}"[:2000],
                           "exit": 2 if isinstance(e, UserError) else 1}
        out.append(summary)
        if on_done is not None:
            on_done(job, summary)
    return out


__all__ = ["Job", "SharedStore", "expand", "features_key", "finished", "jobs", "run_local"]
