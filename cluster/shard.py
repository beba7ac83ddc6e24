"""Ray job entry for the sharder (docs/contracts.md section 1 -> 2).

  ray job submit -- python cluster/shard.py manifest=<manifest.csv> output=<folder or s3://...> [key=value ...]
  python -m cluster.shard --config shard.yaml distributor=sequential     # in-process, for debugging

Without a cluster address (ray_address= or RAY_ADDRESS) a local Ray is started. Prints one JSON summary; exits 1
when a shard task still failed after its retries (the others are committed and a re-run builds only what is missing).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Iterable, Iterator

if __package__ in (None, ""):  # run as a script (ray job submit -- python cluster/shard.py): import the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli, fsio
from common import config as C
from shards.config import ShardConfig
from shards.distribute import Outcome, SequentialDistributor
from shards.pipeline import run


class RayDistributor:
    """One Ray task per shard, Ray's own retries (worker deaths and exceptions), a bounded number in flight."""

    def __init__(self, ray, num_cpus: float = 1.0, max_in_flight: int = 0):
        from cluster.runtime import tasks_ahead

        self.ray = ray
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight or tasks_ahead(ray, num_cpus)

    def run(self, fn: Callable, args: Iterable[tuple], retries: int) -> Iterator[Outcome]:
        from cluster.runtime import worker_env

        ray = self.ray
        # storage options and credentials as the driver sees them now (a shared Ray may predate them)
        remote = ray.remote(fn).options(num_cpus=self.num_cpus, max_retries=retries, retry_exceptions=True,
                                        runtime_env={"env_vars": worker_env()})
        pending: dict = {}
        source = enumerate(args)  # pulled only while fewer than max_in_flight run: the driver holds a window
        more = True
        while more or pending:
            while more and len(pending) < self.max_in_flight:
                nxt = next(source, None)
                if nxt is None:
                    more = False
                    break
                pending[remote.remote(*nxt[1])] = nxt[0]
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            pos = pending.pop(ready[0])
            try:
                yield Outcome(pos, ray.get(ready[0]))
            except Exception as e:  # noqa: BLE001 - RayTaskError after retries, worker/node loss
                yield Outcome(pos, error=f"{type(e).__name__}: {e}", attempts=retries + 1)


def make_distributor(cfg: ShardConfig, ray=None):
    if cfg.distributor == "sequential":
        return SequentialDistributor()
    if ray is None:
        from cluster.runtime import init_ray

        ray = init_ray(cfg.ray_address or None)
    return RayDistributor(ray, cfg.num_cpus_per_task)


def check_inputs(cfg: ShardConfig) -> None:
    """The manifest and captions must exist and parse (a bad video is counted and skipped later, not fatal)."""
    from shards.corpus import caption_runs, default_captions, iter_manifest
    from shards.pipeline import CAPTION_INDEX

    if next(iter_manifest(cfg.manifest), None) is None:  # its first video, not the whole list
        raise C.ConfigError(f"manifest [{cfg.manifest}]: lists no video")
    fsio.makedirs(cfg.output)  # the caption file is indexed once, streaming; run() reuses the index
    caption_runs(cfg.captions or default_captions(cfg.manifest), fsio.join(cfg.output, CAPTION_INDEX))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = C.parser(ShardConfig, __doc__, prog="python -m cluster.shard").parse_args(argv)
    cfg = C.load(ShardConfig, args.config, args.overrides).validate()
    check_inputs(cfg)  # before any cluster starts
    summary = run(cfg, make_distributor(cfg))
    print(json.dumps(summary, indent=1), flush=True)
    return 1 if summary["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
