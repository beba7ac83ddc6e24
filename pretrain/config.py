"""PretrainConfig: the one typed config of the pretraining stage (YAML + `a.b=value` overrides).

The `model` section is the model's own ModelConfig and is exported unchanged next to the weights
(docs/contracts.md section 3). `cluster` only sizes the Ray job; the worker loop never reads it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from common import config as cfglib
from trainer.settings import optimizer_ranges
from pretrain.model_config import ModelConfig


@dataclass
class DataConfig:
    shards: str = ""  # shard set URL (local or s3://), holding manifest.json (docs/contracts.md section 2)
    micro_batch: int = 4  # samples per rank per forward/backward
    samples_per_epoch: int = 0  # 0: the manifest's total_samples
    loader_workers: int = 0  # DataLoader processes per rank; 0 decodes in the training process
    shuffle_buffer: int = 32  # windows mixed (after videos are mixed in a buffer holding about as many windows)
    clips_per_video: int = 1  # k > 1: video-grouped batches, B / k videos with k clips each (same-video negatives)
    verb_swap: dict[str, str] = field(default_factory=dict)  # verb -> -ing form; each caption's first listed verb
                                                              # swapped gives its clip a hard negative (L_global)
    prefetch: int = 2  # batches each loader worker keeps ready
    # where JPEG frames are decoded: cpu (PIL, in the loader), gpu (nvJPEG via torchvision in the training process,
    # needs loader_workers=0), auto (gpu where CUDA is present and loader_workers=0, else cpu)
    decode: str = "auto"
    window_frames: int = 0  # U frames per window cut by the loader; 0: the shard set's window_frames
    max_bad_shards: int = 50  # consecutive unreadable shards before a loader gives up (all shards broken)
    # pseudo-positive table of `cluster.index mine` (docs/contracts.md section 4); empty: no cross-video term.
    # Read only when model.cross_video is true; each sample with an entry gets one neighbour's caption.
    pseudo_positives: str = ""
    pseudo_positives_strict: bool = True  # table keys not in data.shards: error (true) or counted and dropped


@dataclass
class OptimConfig:
    optimizer: str = "torch"  # "torch": torch AdamW handed to DeepSpeed (no JIT op); "deepspeed": JSON's optimizer
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at max_steps
    grad_accum: int = 1
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # Ray address; None (and no RAY_ADDRESS): a local Ray
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 3  # worker-group restarts (from the last complete checkpoint) before the job fails
    placement: str = "PACK"  # Ray placement strategy of the workers: PACK, SPREAD, STRICT_SPREAD


@dataclass
class PretrainConfig:
    run: str = "runs/pretrain"  # run storage (local folder or s3://bucket/prefix): config, checkpoints, logs, export
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    deepspeed: str = "configs/deepspeed/zero2.json"  # editable DeepSpeed JSON/YAML; batch keys are filled in here
    zero_stage: int = -1  # >= 0 overrides the JSON's zero_optimization.stage
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    max_steps: int = 100  # optimizer steps; also the length of the LR schedule
    stop_at_step: int = 0  # > 0: checkpoint and stop after this step (a planned interruption; resume later)
    checkpoint_every: int = 50
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted
    log_every: int = 10
    seed: int = 0
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only) for exact resume
    progress: bool = True  # tqdm bar on rank 0
    export: bool = True  # write <run>/export/model.pt at the end
    init: str = ""  # start from the weights of this export (model.pt + model_config.json); resume still wins
    comm_timeout_s: int = 600  # collective timeout; a dead peer surfaces as an error after this


def load(path: str | None = None, overrides=()) -> PretrainConfig:
    cfg = cfglib.load(PretrainConfig, path, overrides)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> PretrainConfig:
    cfg = cfglib.from_dict(PretrainConfig, data)
    validate(cfg)
    return cfg


# What a re-launch into an existing run may change (docs/cluster.md "Resuming a run"); any other difference from
# the run's config.yaml is refused before anything is written. Dotted names; a section name covers its fields.
RESUMABLE = ("run", "max_steps", "stop_at_step", "checkpoint_every", "keep_last", "log_every", "progress", "export",
             "comm_timeout_s", "cluster", "data.loader_workers", "data.prefetch", "data.max_bad_shards",
             "data.decode")


def validate(cfg: PretrainConfig) -> None:
    """Everything that can be checked without workers: ranges, and the shard set's manifest (so that a wrong
    shard folder fails here, in one line, not in every Ray Train worker)."""
    err = cfglib.ConfigError
    if not cfg.data.shards:
        raise err("data.shards is required (a shard set URL with manifest.json)")
    if cfg.data.micro_batch < 1 or cfg.optim.grad_accum < 1:
        raise err("data.micro_batch and optim.grad_accum must be >= 1")
    if cfg.data.clips_per_video < 1 or cfg.data.micro_batch % cfg.data.clips_per_video:
        raise err(f"data.clips_per_video must be >= 1 and divide data.micro_batch={cfg.data.micro_batch}, "
                  f"got {cfg.data.clips_per_video}")
    if cfg.max_steps < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1 or cfg.keep_last < 1:
        raise err("max_steps, checkpoint_every, log_every and keep_last must be >= 1")
    o, d, c = cfg.optim, cfg.data, cfg.cluster
    cfglib.check_ranges(optimizer_ranges(o) + [
        ("data.samples_per_epoch", d.samples_per_epoch, d.samples_per_epoch >= 0, ">= 0"),
        ("data.loader_workers", d.loader_workers, d.loader_workers >= 0, ">= 0"),
        ("data.shuffle_buffer", d.shuffle_buffer, d.shuffle_buffer >= 0, ">= 0"),
        ("data.prefetch", d.prefetch, d.prefetch >= 1, ">= 1"),
        ("data.decode", d.decode, d.decode in ("cpu", "gpu", "auto"), "cpu, gpu or auto"),
        ("data.window_frames", d.window_frames, d.window_frames >= 0, ">= 0 (0: the shard set's)"),
        ("data.max_bad_shards", d.max_bad_shards, d.max_bad_shards >= 1, ">= 1"),
        ("cluster.workers", c.workers, c.workers >= 1, ">= 1"),
        ("cluster.cpus_per_worker", c.cpus_per_worker, c.cpus_per_worker >= 0, ">= 0"),
        ("cluster.gpus_per_worker", c.gpus_per_worker, c.gpus_per_worker >= 0, ">= 0"),
        ("cluster.max_failures", c.max_failures, c.max_failures >= 0, ">= 0"),
        ("comm_timeout_s", cfg.comm_timeout_s, cfg.comm_timeout_s >= 1, ">= 1"),
    ])
    if not 0 <= cfg.stop_at_step <= cfg.max_steps:
        raise err(f"stop_at_step must be in [0, max_steps={cfg.max_steps}]")
    if cfg.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise err(f"precision must be auto, bf16, fp16 or fp32, not {cfg.precision!r}")
    if cfg.optim.optimizer not in ("torch", "deepspeed"):
        raise err(f"optim.optimizer must be torch or deepspeed, not {cfg.optim.optimizer!r}")
    if cfg.zero_stage not in (-1, 0, 1, 2, 3):
        raise err(f"zero_stage must be -1 (from the JSON) or 0..3, not {cfg.zero_stage}")
    if cfg.cluster.placement not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise err(f"cluster.placement {cfg.cluster.placement!r} is not a Ray placement strategy")


def check_shards(cfg: PretrainConfig) -> None:
    """The shard set has a manifest listing samples and at least one of its tars exists (one listing of the
    folder; a tar that is missing among others is the loader's to count and skip)."""
    from common import fsio
    from pretrain import data

    url = cfg.data.shards
    if not fsio.exists(fsio.join(url, "manifest.json")):
        raise cfglib.ConfigError(f"data.shards [{url}]: no manifest.json there (not a finished shard set, "
                                 "docs/contracts.md section 2)")
    try:
        shards = data.read_manifest(url)
    except (data.DataError, ValueError, KeyError, TypeError) as e:
        raise cfglib.ConfigError(f"data.shards [{fsio.join(url, 'manifest.json')}]: {e}") from None
    local = {fsio.join(url, n) for n in fsio.listdir(url)}
    if not any(u in local or fsio.exists(u) for u in shards.urls[:1]) and not any(u in local for u in shards.urls):
        raise cfglib.ConfigError(f"data.shards [{url}]: none of the {len(shards.urls)} shards the manifest lists "
                                 "exists")


def to_dict(cfg: PretrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def train_settings(cfg: PretrainConfig, keep_last: int | None = None):
    """The trainer's view of this config (trainer/settings.py)."""
    from trainer.settings import TrainSettings

    o = cfg.optim
    return TrainSettings(run=cfg.run, name="pretrain", max_steps=cfg.max_steps, stop_at_step=cfg.stop_at_step,
                         micro_batch=cfg.data.micro_batch, grad_accum=o.grad_accum, deepspeed=cfg.deepspeed,
                         optimizer=o.optimizer, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                         eps=o.eps, warmup_steps=o.warmup_steps, min_lr_ratio=o.min_lr_ratio,
                         grad_clip=o.grad_clip, zero_stage=cfg.zero_stage, precision=cfg.precision,
                         checkpoint_every=cfg.checkpoint_every,
                         keep_last=cfg.keep_last if keep_last is None else keep_last, log_every=cfg.log_every,
                         progress=cfg.progress, print_metrics=not cfg.progress, comm_timeout_s=cfg.comm_timeout_s)
