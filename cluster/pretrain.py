"""Pretraining as a Ray Train job: a TorchTrainer whose workers are DeepSpeed ranks (pretrain/train.py).

    python -m cluster.pretrain --config configs/pretrain/tiny.yaml data.shards=DIR run=runs/tiny
    python -m cluster.pretrain --config configs/pretrain/vitb32.yaml --address auto --workers 16 \
        --gpus-per-worker 1 data.shards=s3://bucket/shards run=s3://bucket/runs/vitb32

The run URL is Ray's storage_path/name, so Ray's own run state sits beside our checkpoints, and Ray prunes them
(CheckpointConfig(num_to_keep=keep_last)) so that its run snapshot never lists a deleted one. A worker that dies
makes Ray restart the whole worker group (FailureConfig.max_failures); the restarted workers resume from the
newest complete checkpoint, as does a re-submitted job with the same `run` (after a crash, a stopped cluster, or
with a larger max_steps). A re-launch may change only pretrain.config.RESUMABLE; any other difference from the
run's config.yaml is refused before anything is written (docs/cluster.md). The config, the shard set and the
backbone's weights file (opened and fitted to the backbone by names and shapes) are checked before Ray starts.
With no --address (and no RAY_ADDRESS) a local Ray is started (cluster.runtime.init_ray); token authentication
stays on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import sys

from common import cli
from common import config as cfglib
from common import fsio
from pretrain import architecture
from pretrain.config import RESUMABLE, PretrainConfig, check_shards, from_dict, to_dict, train_settings, validate

log = logging.getLogger(__name__)


def _split_run(run: str) -> tuple[str, str]:
    """(storage_path, name) with storage_path/name == run; object-store paths without their scheme, as Ray
    wants them next to an explicit storage_filesystem."""
    if fsio.is_local(run):
        path = fsio.filesystem(run)[1]
    else:
        path = run.split("://", 1)[1].rstrip("/")
    return posixpath.dirname(path), posixpath.basename(path)


def _absolute(url: str) -> str:
    return fsio.filesystem(url)[1] if fsio.is_local(url) else url


def storage_filesystem(run: str):
    """A pyarrow filesystem for Ray's storage on object stores, built from the same fsspec options as fsio
    (endpoint, credentials), so Ray and our checkpoints see the same bucket. None for local runs."""
    if fsio.is_local(run):
        return None
    import pyarrow.fs

    fs, _ = fsio.filesystem(run)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _worker(config: dict) -> None:
    """Runs inside every Ray Train worker."""
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint, CheckpointUploadMode

    from pretrain import train

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    quiet_ray_train()
    cfg = from_dict(config["config"])
    ctx = ray.train.get_context()
    storage = ctx.get_storage()
    rank = ctx.get_world_rank()
    node = ray.get_runtime_context().get_node_id()
    nodes: list = []

    def report(metrics: dict, ckpt_url: str | None) -> None:
        if not nodes:  # first report: every rank is past process-group set-up
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, node)
            nodes.extend(gathered)
        metrics = {**metrics, "worker_nodes": list(nodes), "attempt_pid": os.getpid()}
        if ckpt_url is None or rank != 0:
            ray.train.report(metrics)
            return
        rel = ckpt_url[len(cfg.run.rstrip("/")):].lstrip("/")
        ckpt = Checkpoint(path=posixpath.join(storage.experiment_fs_path, rel), filesystem=storage.storage_filesystem)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    train.run(cfg, report=report, ds_base=config["deepspeed"], pruned_elsewhere=True)


def quiet_ray_train() -> None:
    """Ray Train (2.60) logs every ray.train.report at INFO ("Reporting training result N: TrainingReport(...)"),
    per rank per log step, through a logger named by its file's path (`getLogger(__file__)`), which is outside
    `ray.train` and so escapes RunConfig's LoggingConfig level: that logger is set to warnings here."""
    from ray.train.v2._internal.execution import context

    context.logger.setLevel(logging.WARNING)


def trainer_class():
    """TorchTrainer, without its placement-group cleaner on a Ray that serves no State API. The cleaner (a
    detached actor, Ray Train 2.60) asks the State API every second whether the controller lives, to remove the
    run's placement group should the controller die while the cluster lives on; on our local Ray the question
    can never be answered (cluster.runtime.serves_state_api), and the case cannot arise either: the local cluster
    belongs to the driver and goes down with it. Ray offers no switch for it, so it is left out of the
    trainer's default callbacks."""
    from ray.train.torch import TorchTrainer

    from cluster.runtime import serves_state_api

    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:  # a Ray Train without the cleaner
        return TorchTrainer
    if serves_state_api():
        return TorchTrainer

    class LocalTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

    return LocalTorchTrainer


def prepare(cfg: PretrainConfig) -> tuple[PretrainConfig, dict, dict]:
    """Everything checked before Ray starts and nothing written: (cfg with absolute URLs, the DeepSpeed file's
    content, the DeepSpeed config this run uses). Raises a UserError for a bad config, a missing or empty shard
    set, a weights file (model.pretrained) that is missing, truncated or does not load into the backbone, or a re-launch
    into an existing run with a different contract."""
    from trainer.engine import ds_config, load_ds_file
    from trainer.run_folder import refuse_changes

    validate(cfg)
    check_shards(cfg)
    # workers run elsewhere (another cwd, maybe another machine): send them absolute URLs and the DeepSpeed file
    cfg = dataclasses.replace(cfg, run=_absolute(cfg.run), data=dataclasses.replace(
        cfg.data, shards=_absolute(cfg.data.shards),
        pseudo_positives=_absolute(cfg.data.pseudo_positives) if cfg.data.pseudo_positives else ""),
        init=_absolute(cfg.init) if cfg.init else "")
    ds_base = load_ds_file(cfg.deepspeed)
    ds = ds_config(train_settings(cfg), cfg.cluster.workers, gpu=cfg.cluster.gpus_per_worker > 0, base=ds_base)
    # the backbone's architecture resolved and its weights file opened and fitted to it here, not in every worker;
    # a run begun before the architecture was recorded keeps being built as it was (architecture.legacy)
    stored = _stored_model(cfg.run)
    before = stored is not None and "quick_gelu" not in stored
    model = cfg.model
    if before:
        model = dataclasses.replace(model, **{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in architecture.legacy(to_dict(cfg)["model"], cfg.run).items()})
    resolved = dataclasses.replace(cfg, model=architecture.check(model))
    refuse_changes(cfg.run, to_dict(cfg if before else resolved), RESUMABLE, ds, defaults=to_dict(PretrainConfig()))
    return resolved, ds_base, ds


def _stored_model(run: str) -> dict | None:
    """The model section of the run's config.yaml; None for a new run."""
    import yaml

    url = fsio.join(run, "config.yaml")
    if not fsio.exists(url):
        return None
    return dict((yaml.safe_load(fsio.read_text(url)) or {}).get("model") or {})


def prune_unreported(run: str) -> list[int]:
    """Delete complete checkpoints Ray Train was never told of, except the newest: a job whose cluster died
    between a checkpoint's marker and its report leaves one that Ray's num_to_keep would never prune. Reads Ray's
    run snapshot (checkpoint_manager_snapshot.json, Ray 2.60's format); in any other format it leaves them all."""
    from trainer import checkpoint

    url = fsio.join(run, "checkpoint_manager_snapshot.json")
    if not fsio.exists(url):
        return []
    try:
        listed = {r["checkpoint_dir_name"] for r in fsio.read_json(url)["checkpoint_results"]}
    except (KeyError, TypeError, ValueError):
        return []
    gone = [s for s in checkpoint.complete_steps(run)[:-1] if f"checkpoints/{checkpoint.tag(s)}" not in listed]
    for step in gone:
        checkpoint.delete(run, step)
    return gone


def run_pretrain(cfg: PretrainConfig):
    """Run (or resume) the job described by cfg; returns Ray Train's Result."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from cluster.runtime import init_ray
    from trainer.engine import prebuild_ops

    cfg, ds_base, ds = prepare(cfg)
    c = cfg.cluster
    gpu = c.gpus_per_worker > 0
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # forwarded to the workers by init_ray
    # Compile DeepSpeed's CPU op here once; the workers on this machine then load it from the cache.
    prebuild_ops()
    init_ray(c.address)

    prune_unreported(cfg.run)
    # echo what this run uses into its own folder
    fsio.makedirs(cfg.run)
    cfglib.dump(cfg, fsio.join(cfg.run, "config.yaml"))
    fsio.write_json_atomic(fsio.join(cfg.run, "deepspeed.json"), ds)

    storage_path, name = _split_run(cfg.run)
    resources = {"CPU": c.cpus_per_worker}
    if gpu:
        resources["GPU"] = c.gpus_per_worker
    trainer = trainer_class()(
        _worker,
        train_loop_config={"config": to_dict(cfg), "deepspeed": ds_base},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=cfg.comm_timeout_s),
        scaling_config=ScalingConfig(num_workers=c.workers, use_gpu=gpu, resources_per_worker=resources,
                                     placement_strategy=c.placement),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem(cfg.run),
            failure_config=FailureConfig(max_failures=c.max_failures),
            # Ray prunes: it writes its run snapshot before it deletes, so the snapshot a re-submitted job reads
            # never lists a deleted checkpoint (ours would; docs/cluster.md "Resuming a run")
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_last),
            # Ray Train's INFO lines (a TrainingReport dump per report per rank) drown the progress bar
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit()


def main(argv=None) -> int:
    p = cfglib.parser(PretrainConfig, __doc__.split("\n\n")[0])
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--workers", type=int, help="Ray Train workers (DeepSpeed ranks)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU, gloo, fp32)")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    if args.workers is not None:
        overrides.append(f"cluster.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"cluster.gpus_per_worker={args.gpus_per_worker}")
    cfg = cfglib.load(PretrainConfig, args.config, overrides)
    result = run_pretrain(cfg)
    out = {"run": cfg.run, "metrics": result.metrics,
           "checkpoint": result.checkpoint.path if result.checkpoint else None,
           "export": fsio.join(cfg.run, "export", "model.pt") if cfg.export else None}
    print(json.dumps(out, default=str))
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
