"""FinetuneConfig: one typed config for a downstream finetune (YAML + `a.b=value` overrides, common.config).

A finetune takes a pretrain export (docs/contracts.md section 3), a dataset adapter (finetune/datasets.py) and a
head (finetune/heads/), trains the head with DeepSpeed on cached encoder features and writes predictions in the
evaluator's format plus the evaluator's JSON into its run folder.

The fields below are the stage's own; each head adds its section (its HeadSpec's dataclass, under the head's name),
so `FinetuneConfig` is the class `config_class()` builds from the head registry (finetune/heads/registry.py): the
built-in heads' sections, and those of heads registered in this process. `validate` is pure (no file is read);
`check_inputs` holds the checks that read something, run once at the start of a run.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Optional

from common import config as cfglib
from common import fsio
from finetune.families import family_of_kind, kinds
from finetune.heads import registry
from pretrain.export_ref import Export
from trainer.settings import optimizer_ranges
from tubes.config import TubeConfig


@dataclass
class DatasetConfig:
    kind: str = "synthetic"          # temporal: synthetic | charades_sta | didemo; STVG: synthetic_stvg | vidstg | hcstvg
    root: str = ""                   # synthetic, synthetic_stvg: corpus folder holding train/ and test/
    train: str = ""                  # charades_sta_train.txt | didemo train_data.json | vidstg/hcstvg train file
    test: str = ""                   # charades_sta_test.txt | didemo val/test_data.json | vidstg/hcstvg test file
    detections: str = ""             # vidstg / hcstvg: detections file of the train videos (docs/stvg.md)
    test_detections: str = ""        # vidstg / hcstvg: detections file of the test videos
    boxes: str = ""                  # vidstg: trajectories for raw VidSTG files (converted ones carry their own)
    durations: str = ""              # charades_sta: Charades_v1_test.csv (default: beside `test`)
    videos: str = ""                 # charades_sta / didemo: folder of the videos (<id>.mp4 or DiDeMo's file names)
    max_train_videos: int = 0        # > 0: only the first N training videos (smoke runs)


@dataclass
class FeatureConfig:
    cache: str = ""                  # feature cache root; "" -> <pretrain run>/finetune/features
    fps: float = 1.0                 # frames per second fed to the encoder (the benchmarks annotate seconds)
    size: int = 0                    # decode size; 0: the encoder's image size
    regions: bool = False            # also cache the patch (region) features (B, T, N, d) for spatial heads
    batch_frames: int = 64           # frames per encoder call during extraction
    end_to_end: bool = False         # train the encoder with the head (frames cached, features recomputed)
    max_frames: int = 0              # > 0: frames per training video are evenly subsampled to at most this
    center: bool = False             # subtract each video's mean frame feature (and re-normalise): what changes
                                     # over the video, not the scene it stays in


@dataclass
class SpanConfig:
    """How an STVG prediction decides *when* (docs/stvg.md "The span rule"). `head`: the head's own span, its
    paper's rule. `activity`: the best segment of the head's chosen tube's activity (tubes/activity.py: how far the
    tube's object looks from its rest appearance; no text, no training, so weak heads may use it). `mix`: the
    standardised activity plus `weight` x the head's standardised frame scores. `when`: the run of largest expected
    tIoU under the head's when-score along its chosen tube (heads/when_score.py; a head trained with one:
    winner.when, fsm.when)."""
    rule: str = "head"               # head | activity | mix | when
    weight: float = 1.0              # mix: the head's frame scores' weight beside the activity
    smooth: int = 1                  # frames of a centred moving mean over the span scores (1: none)
    tube_weight: float = 0.0         # activity / mix: the tube is chosen by the head's standardised tube scores plus
                                     # this x each tube's standardised peak activity (tubes/activity.py tube_peak:
                                     # the query's object is acted on during it); 0: the head's choice alone (a
                                     # trained WINNER chooses better alone: docs/results/stvg.md). A head that
                                     # answers with a when-score (winner.when): the peak is the tube's when-score's
                                     # (the sentence's object, by its words)


SPAN_RULES = ("head", "activity", "mix", "when")


@dataclass
class OptimConfig:
    lr: float = 1e-4                 # the paper: Adam, constant 1e-4, betas (0.9, 0.999)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0        # 1: constant LR after warmup
    grad_clip: float = 0.0           # 0: no clipping
    encoder_lr: float = 0.0          # features.end_to_end: the encoder's lr (FSM paper: 1e-5 next to 5e-5); 0: lr


@dataclass
class ClusterConfig:
    address: Optional[str] = None    # Ray address; None (and no RAY_ADDRESS): a local Ray
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


@dataclass
class SweepConfig:
    heads: list[str] = field(default_factory=list)      # [] = [head]
    seeds: list[int] = field(default_factory=list)      # [] = [seed]
    variants: dict = field(default_factory=dict)        # name -> list of key=value overrides (e.g. ablations)


@dataclass
class FinetuneBase:
    """The stage's own fields; FinetuneConfig adds one section per head (config_class)."""
    checkpoint: str = ""             # pretrain export folder (model.pt + model_config.json)
    run: str = ""                    # output folder; "" -> <pretrain run>/finetune/<name>
    name: str = "wsra"
    head: str = "wsra"               # a head the registry knows (finetune/heads/registry.py); its section below
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tubes: TubeConfig = field(default_factory=TubeConfig)  # STVG: proposals -> region features -> M linked tubes
    span: SpanConfig = field(default_factory=SpanConfig)   # STVG: how a prediction's span is decided
    optim: OptimConfig = field(default_factory=OptimConfig)
    pseudo_positives: str = ""       # pseudo-positive table (contracts.md section 4) for L_crov; "" = term off
    batch_size: int = 32             # videos per step
    queries_per_video: int = 1       # weak queries drawn per video (rows per step <= batch_size x this)
    max_steps: int = 200
    checkpoint_every: int = 100
    keep_last: int = 1
    log_every: int = 10
    seed: int = 0
    deepspeed: str = "configs/deepspeed/zero0.json"
    evaluate: bool = True            # run `python -m grounding.evaluate` on the predictions
    train: bool = True               # false: predict with the head at its initialisation (a baseline)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def pretrain_run_of(checkpoint: str) -> str:
    """The pretrain run folder of an export (<run>/export -> <run>); the export's own folder otherwise."""
    return Export.of(checkpoint).run


def config_class() -> type:
    """FinetuneConfig: FinetuneBase with a section per head the registry knows now (built-in and registered)."""
    return _with_sections(tuple((spec.name, spec.config) for spec in registry.specs()))


@functools.lru_cache(maxsize=None)
def _with_sections(sections: tuple) -> type:
    fields = [(name, cls, field(default_factory=cls)) for name, cls in sections]
    cls = dataclasses.make_dataclass("FinetuneConfig", fields, bases=(FinetuneBase,))
    cls.__module__ = __name__
    return cls


def __getattr__(name: str):
    # `from finetune.config import FinetuneConfig`: the class for the heads registered at that moment
    if name == "FinetuneConfig":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve(cfg):
    """Fill the derived defaults (run, cache) so the echoed config says where everything went."""
    run = cfg.run or fsio.join(pretrain_run_of(cfg.checkpoint), "finetune", cfg.name)
    cache = cfg.features.cache or fsio.join(pretrain_run_of(cfg.checkpoint), "finetune", "features")
    absolute = (lambda u: os.path.abspath(u) if u and fsio.is_local(u) else u)
    ds = cfg.dataset
    ds = dataclasses.replace(ds, root=absolute(ds.root), train=absolute(ds.train), test=absolute(ds.test),
                             durations=absolute(ds.durations), videos=absolute(ds.videos),
                             detections=absolute(ds.detections), test_detections=absolute(ds.test_detections))
    return dataclasses.replace(cfg, run=absolute(run), checkpoint=absolute(cfg.checkpoint), dataset=ds,
                               pseudo_positives=absolute(cfg.pseudo_positives),
                               features=dataclasses.replace(cfg.features, cache=absolute(cache)))


def validate(cfg) -> None:
    """Every check that needs nothing but the config (pure: no file is read, nothing is loaded)."""
    err = cfglib.ConfigError
    if not cfg.checkpoint:
        raise err("checkpoint is required (a pretrain export folder: model.pt + model_config.json)")
    family = family_of_kind(cfg.dataset.kind)
    if family is None:
        raise err(f"dataset.kind must be one of {kinds()}, not {cfg.dataset.kind!r}")
    if cfg.dataset.kind in ("synthetic", "synthetic_stvg") and not cfg.dataset.root:
        raise err("dataset.root is required for the synthetic corpus (the folder with train/ and test/)")
    if cfg.dataset.kind not in ("synthetic", "synthetic_stvg") and not cfg.dataset.test:
        raise err(f"dataset.test is required for {cfg.dataset.kind}")
    if cfg.head not in registry.names():
        raise err(f"head must be one of {tuple(registry.names())}, not {cfg.head!r}")
    spec = registry.spec_of(cfg.head)
    if spec.family != family.name:
        fits = tuple(n for n in registry.names() if registry.spec_of(n).family == family.name)
        raise err(f"FinetuneConfig [head]: {cfg.head!r} does not fit dataset.kind {cfg.dataset.kind!r} (the "
                  f"{family.name} datasets {family.kinds} take the heads {fits})")
    family.validate(cfg, spec)
    if cfg.features.end_to_end and not spec.end_to_end:
        able = " / ".join(n for n in registry.names()
                          if registry.spec_of(n).family == family.name and registry.spec_of(n).end_to_end)
        raise err(f"features.end_to_end on {family.title} dataset is built for the {able or 'no'} head only, not "
                  f"{cfg.head!r}: the other heads choose among what the cached features give")
    spec.validate(spec.section(cfg), cfg)
    if cfg.span.rule not in SPAN_RULES:
        raise err(f"span.rule must be one of {SPAN_RULES}, not {cfg.span.rule!r}")
    if cfg.span.rule != "head" and family.name != "stvg":
        raise err(f"span.rule={cfg.span.rule} decides an STVG tube's span from its tube; {family.title} head "
                  "ranks moments (leave span.rule=head)")
    if cfg.span.rule == "when" and not getattr(spec.section(cfg), "when", False):
        raise err(f"span.rule=when decodes the head's when-score, and {cfg.head} is trained without one "
                  f"({cfg.head}.when=true, where its section has the switch)")
    if cfg.batch_size < 2:
        raise err("batch_size must be >= 2 (the in-batch queries are the negatives)")
    if cfg.queries_per_video < 1:
        raise err("queries_per_video must be >= 1")
    if cfg.max_steps < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1 or cfg.keep_last < 1:
        raise err("max_steps, checkpoint_every, log_every and keep_last must be >= 1")
    if cfg.features.fps <= 0:
        raise err("features.fps must be > 0")
    o, f = cfg.optim, cfg.features
    cfglib.check_ranges(optimizer_ranges(o) + [
        ("optim.encoder_lr", o.encoder_lr, o.encoder_lr >= 0, ">= 0"),
        ("features.batch_frames", f.batch_frames, f.batch_frames >= 1, ">= 1"),
        ("features.max_frames", f.max_frames, f.max_frames >= 0, ">= 0"),
        ("features.size", f.size, f.size >= 0, ">= 0"),
        ("span.weight", cfg.span.weight, cfg.span.weight >= 0, ">= 0"),
        ("span.smooth", cfg.span.smooth, cfg.span.smooth >= 1, ">= 1"),
        ("span.tube_weight", cfg.span.tube_weight, cfg.span.tube_weight >= 0, ">= 0"),
        ("cluster.cpus_per_task", cfg.cluster.cpus_per_task, cfg.cluster.cpus_per_task >= 0, ">= 0"),
        ("cluster.gpus_per_task", cfg.cluster.gpus_per_task, cfg.cluster.gpus_per_task >= 0, ">= 0"),
    ])


def check_inputs(cfg) -> None:
    """The checks that read something, once at the start of a run (finetune.train.run, cluster.finetune's driver):
    the export is there, the DeepSpeed JSON is readable, and whatever the head's spec checks (an installed parser
    model, ...). Each failure is one UserError line before any feature is extracted."""
    from trainer.engine import load_ds_file

    spec = registry.spec_of(cfg.head)
    spec.check_io(cfg)
    for url in Export.of(cfg.checkpoint).files():
        if not fsio.exists(url):
            raise cfglib.ConfigError(f"checkpoint [{url}]: not found (a pretrain export holds model.pt and "
                                     "model_config.json)")
    try:
        load_ds_file(cfg.deepspeed)
    except OSError as e:
        raise cfglib.ConfigError(f"deepspeed [{cfg.deepspeed}]: cannot be read ({e})") from e


# What a re-launch into an existing finetune run may change (docs/cluster.md "Resuming a run"); any other
# difference from the run's config.yaml is refused before anything is written.
RESUMABLE = ("max_steps", "checkpoint_every", "keep_last", "log_every", "evaluate", "cluster", "sweep",
             "features.batch_frames", "tubes.batch_frames")


def train_settings(cfg: FinetuneConfig):
    """The trainer's view of this config (trainer/settings.py): one rank, fp32 (the heads are small and their
    inputs are fp32 features), torch Adam handed to DeepSpeed."""
    from trainer.settings import TrainSettings

    o = cfg.optim
    # end to end, the encoder (FinetuneModule.encoder) may learn at its own rate (the FSM paper's backbone 1e-5)
    groups = (("encoder.", o.encoder_lr),) if cfg.features.end_to_end and o.encoder_lr > 0 else ()
    spec = registry.spec_of(cfg.head)
    groups += tuple((f"head.{prefix}", lr) for prefix, lr in spec.lr_groups(spec.section(cfg)))
    return TrainSettings(run=cfg.run, name="finetune", max_steps=cfg.max_steps, micro_batch=cfg.batch_size,
                         deepspeed=cfg.deepspeed, optimizer="torch", lr=o.lr, lr_groups=groups,
                         weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps, warmup_steps=o.warmup_steps,
                         min_lr_ratio=o.min_lr_ratio, grad_clip=o.grad_clip, precision="fp32",
                         checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, log_every=cfg.log_every)


def load(path: str | None = None, overrides=()):
    """The config of a YAML file and overrides, validated."""
    cfg = cfglib.load(config_class(), path, overrides)
    validate(cfg)
    return cfg


def parse(argv=None, description: str = ""):
    """The config of a command line (--config FILE key=value ...); validated where it is run."""
    return cfglib.parse(config_class(), argv, description)


def from_dict(data: dict):
    cfg = cfglib.from_dict(config_class(), data)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg, url: str) -> None:
    cfglib.dump(cfg, url)
