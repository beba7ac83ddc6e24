"""Finetunes from one pretrain export as Ray tasks: one finetune, or a sweep (heads x seeds x variants).

    python -m cluster.finetune --config configs/finetune/wsra_synthetic.yaml checkpoint=RUN/export dataset.root=DIR
    python -m cluster.finetune --config configs/finetune/wsra_ablation.yaml checkpoint=RUN/export \
        dataset.root=DIR sweep.seeds=[0,1,2] [--address auto]

Features missing from the cache are extracted first, as Ray tasks over chunks of videos (each loads the encoder
once), so that the finetune tasks only read the cache and never extract the same video side by side. Each
finetune is then one Ray task running finetune.train.run (its own one-rank DeepSpeed engine). Results land next
to the pretrain run: `<pretrain run>/finetune/<name>/` (or `run=`), one folder per job for a sweep, each with its
predictions.json and the evaluator's eval.json; a sweep also writes `sweep.json` (every job's metrics or error).
With no --address (and no RAY_ADDRESS) a local Ray is started (cluster.runtime.init_ray); token auth stays on.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from common import cli
from common import config as cfglib
from common import fsio
from finetune import config as C
from finetune import sweep
from finetune.heads import registry

log = logging.getLogger(__name__)


def _config_in_task(config: dict, heads: list):
    """A job's config inside a Ray task: the heads the driver registered (defined outside the library) first."""
    for spec in heads:
        registry.register(spec)
    return C.from_dict(config)


def _extract_task(config: dict, videos: dict[str, str], heads: list) -> dict:
    """One chunk of feature extraction (the encoder is loaded once per task)."""
    from finetune.train import feature_store

    cfg = _config_in_task(config, heads)
    return feature_store(cfg).extract(videos, None, cfg.features.batch_frames)


def _finetune_task(config: dict, heads: list) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    from finetune.train import run

    return run(_config_in_task(config, heads))


def extract_features(cfg, ray, chunk: int = 64) -> dict:
    """Fill the feature cache for cfg's dataset with Ray tasks (video chunks); sentences on the driver."""
    from finetune.families import build_adapter
    from finetune.train import feature_store, prepare, train_videos

    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg, adapter=adapter)
    todo = store.missing({**train_videos(cfg, adapter), **adapter.videos("test")})
    items = list(todo.items())
    c = cfg.cluster
    remote = ray.remote(num_cpus=c.cpus_per_task, num_gpus=c.gpus_per_task)(_extract_task)
    heads = registry.registered()
    parts = ray.get([remote.remote(C.to_dict(cfg), dict(items[i:i + chunk]), heads)
                     for i in range(0, len(items), chunk)])
    counts = prepare(cfg, adapter)  # whatever is left (nothing, unless a task failed) and the sentences
    counts["extracted"] += sum(p["extracted"] for p in parts)
    counts["cached"] -= sum(p["extracted"] for p in parts)
    for p in parts:
        if "multiscale_added" in p:
            counts["multiscale_added"] = counts.get("multiscale_added", 0) + p["multiscale_added"]
        for reason, n in p["failed"].items():
            counts["failed"][reason] = counts["failed"].get(reason, 0) + n
    return counts


def run_finetunes(cfg, ray=None) -> dict:
    """Run cfg's job(s) as Ray tasks; returns {"jobs": [summary or {"run", "error"}], "features": counts}."""
    from cluster.runtime import init_ray
    from trainer.engine import prebuild_ops

    from finetune.train import check_dataset, check_relaunch

    C.validate(cfg)
    cfg = C.resolve(cfg)
    jobs = sweep.expand(cfg)
    for job in jobs:  # before Ray starts: a bad input or a job that would overwrite another run's records stops all
        C.check_inputs(job)
        check_dataset(C.resolve(job))
        check_relaunch(C.resolve(job))
    if cfg.cluster.gpus_per_task <= 0:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # forwarded to the tasks by init_ray
    prebuild_ops()  # DeepSpeed's CPU op built once here; the tasks load it from the cache
    ray = ray or init_ray(cfg.cluster.address)
    features = {}
    for job in jobs:  # one extraction per distinct feature set (heads may want regions, or an earlier block's)
        key = sweep.features_key(job)
        if key not in features:
            features[key] = extract_features(job, ray)
    c = cfg.cluster
    remote = ray.remote(num_cpus=c.cpus_per_task, num_gpus=c.gpus_per_task, max_retries=0)(_finetune_task)
    refs = [remote.remote(C.to_dict(j), registry.registered()) for j in jobs]
    results = []
    for job, ref in zip(jobs, refs):
        try:
            results.append(ray.get(ref))
        except Exception as e:  # noqa: BLE001 - one failed job must not hide the others' results
            log.error("finetune %s failed: %s", job.run, e)
            results.append({"run": job.run, "error": f"{type(e).__name__}: {e}"[:2000]})
    out = {"jobs": results, "features": list(features.values())}
    if len(jobs) > 1:
        fsio.write_json_atomic(fsio.join(cfg.run, "sweep.json"), {
            "checkpoint": cfg.checkpoint, "jobs": [{"run": r.get("run"), "head": r.get("head"), "seed": r.get("seed"),
                                                    "metrics": r.get("metrics"), "error": r.get("error")}
                                                   for r in results]})
        out["sweep"] = fsio.join(cfg.run, "sweep.json")
    return out


def main(argv=None) -> int:
    p = cfglib.parser(C.config_class(), __doc__.split("\n\n")[0])
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    args = p.parse_args(argv)
    overrides = list(args.overrides) + ([f"cluster.address={args.address}"] if args.address else [])
    cfg = cfglib.load(C.config_class(), args.config, overrides)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run_finetunes(cfg)
    print(json.dumps(out, default=str))
    return 1 if any("error" in j for j in out["jobs"]) else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
