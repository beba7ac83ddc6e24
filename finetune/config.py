"""FinetuneConfig: one typed config for a downstream finetune (YAML + `a.b=value` overrides, common.config).

A finetune takes a pretrain export (docs/contracts.md section 3), a dataset adapter (finetune/datasets.py) and a
head (finetune/heads/), trains the head with DeepSpeed on cached encoder features and writes predictions in the
evaluator's format plus the evaluator's JSON into its run folder.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from common import config as cfglib
from trainer.settings import optimizer_ranges
from common import fsio
from tubes.config import TubeConfig

STVG_DATASETS = ("synthetic_stvg", "vidstg", "hcstvg")   # finetune/datasets_stvg.py
DATASETS = ("synthetic", "charades_sta", "didemo") + STVG_DATASETS
STVG_HEADS = ("tube_sim", "fsm", "winner", "vcma")              # heads that answer tube_output (docs/stvg.md)
HEADS = ("wsra",) + STVG_HEADS


@dataclass
class DatasetConfig:
    kind: str = "synthetic"          # synthetic | charades_sta | didemo | synthetic_stvg | vidstg | hcstvg
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


@dataclass
class WsraConfig:
    """Weights and margins of Eq. 11 (alpha L_bg + beta L_crov + gamma L_vas + delta L_ins-vas); a weight of 0
    switches its term off (paper Table 1). Defaults: the paper's DiDeMo setting (delta = 1, the others 0.1)."""
    alpha: float = 0.1               # L_bg, Eq. 3
    beta: float = 0.1                # L_crov, Eq. 9 (also off when no pseudo-positive table is given)
    gamma: float = 0.1               # L_vas, Eq. 5
    delta: float = 1.0               # L_ins-vas, Eq. 6
    margin: float = 0.2              # m of Eqs. 3, 5, 6 (phi lies in (0, 1))
    bg_temperature: float = 10.0     # gamma of Eq. 3 (the "temperature factor")
    crov_margin: float = 0.2         # m of Eq. 9 (cosine units)
    crov_tau: float = 0.9            # tau of Eq. 10: caption cosine a pseudo-positive pair must exceed
    top_k: int = 3                   # Sec. 3.2.1: most similar queries removed (pseudo-positives)
    last_k: int = 2                  # least similar queries removed (easy negatives); Fig. 5's best is 3 / 2
    attention_temperature: float = 1.0  # Eq. 2 as softmax(phi / this); 1 is the paper (see heads/wsra.py)
    hidden: int = 256                # width of phi's hidden layer
    fuse: str = "cat"                # phi input: cat = Cat(v, t) (Eq. 2) | cat_mul = Cat(v, t, v*t)
    dropout: float = 0.1
    moment_score: str = "contrast"   # how frame scores rank a candidate moment: mean | contrast (in - out)
    epsilon: float = 0.0             # our addition: weight of the video-query NCE (losses_wsra.loss_video_query_nce)
    nce_temperature: float = 0.05    # its logit temperature (phi lies in (0, 1))


@dataclass
class TubeSimConfig:
    """The similarity STVG head (finetune/heads/tube_sim.py): untrained, the zero-shot baseline as a head; trained,
    a video-sentence contrastive loss on its tube scores."""
    temperature: float = 0.05        # logit temperature of the video-sentence NCE (cosines lie in [-1, 1])
    words: bool = True               # region score: mean word-region cosine (true) or region-sentence cosine


@dataclass
class FsmConfig:
    """The supervised FSM head (finetune/heads/fsm.py, docs/stvg.md section 4): switches for the paper's ablations."""
    dim: int = 64                    # model width d after the input projection
    queries: int = 5                 # N learnable object queries (paper: 5; ablation 1, 3, 10)
    heads: int = 4                   # attention heads of the decoder (paper: 8)
    ffn: int = 0                     # decoder FFN width; 0: 2 x dim (paper: 2048)
    frame_fusion: bool = True        # Eqs. 1-3 (Table III)
    video_fusion: bool = True        # Eqs. 4-5 (Table III)
    gate: bool = True                # the sigmoid FFN gates of Eqs. 2-3 (Table IV); off: plain sums
    mrcl: bool = True                # Eq. 10
    tau: float = 0.1                 # MRCL temperature
    max_frames: int = 256            # gamma_t of Eq. 5 per frame; later frames share the last one
    anchor: bool = True              # Eq. 9 anchor decoder for MRCL's x^gt; off: the true box's pooled tokens
    share_decoder: bool = True       # the anchor decoder shares the first decoder's weights (Table VIII)
    positions: bool = True           # region box and frame time embeddings (ours: region tokens carry no grid)
    box_ref: bool = True             # boxes refine the attention-weighted mean of the region boxes (ours)
    pointer: bool = True             # box_ref's weights from a pointer over the frame's proposals, not the
                                     # cross-attention: query-region logits + prior_scale x the pretrained
                                     # word-region cosine (ours, docs/fsm.md); needs box_ref
    proposal_boxes: bool = True      # prediction: each frame's box is the proposal the pointer ranks first (without
                                     # the pointer: the query's cross-attention), not the regressed box (ours)
    prior_scale: float = 10.0        # initial weight of the pretrained cosine in the pointer (learnt); 0: no prior
    w_pointer: float = 1.0           # cross-entropy of the matched query's pointer to the proposal that best
                                     # overlaps the true box (ours); 0: the pointer learns through the box terms only
    pointer_queries: str = "all"     # which queries' pointers that cross-entropy trains: matched (the Hungarian
                                     # match, as the box terms) | all (one truth object per video: every query's
                                     # pointer can learn it; the class term still tells the queries apart)
    sted_sigma: float = 1.0          # start/end targets: Gaussian of this many frames (TubeDETR); 0: one-hot
    w_cls: float = 0.2               # Eq. 11 lambdas, the paper's HC-STVG setting (VidSTG: w_mrcl 2); lambda_box
    w_l1: float = 1.0                # = 1 on both box terms, lambda_t 10, lambda_att 1; a weight of 0 is a term off
    w_giou: float = 1.0
    w_sted: float = 10.0
    w_att: float = 1.0               # guided attention loss on the time self-attention
    w_mrcl: float = 1.0
    multiscale: bool = False         # a second scale: the proposals over an earlier visual block (tubes.mid_layer)


@dataclass
class WinnerConfig:
    """The weakly supervised WINNER head (finetune/heads/winner.py, docs/winner.md): Eq. 8/10/20/21 weights at the
    paper's values (Sec. 4.1), the interfering-node threshold delta, and switches for Table 3 and our choices."""
    alpha: float = 1.0               # Eq. 8: weight of the node's own tube correlation (learnable, starts here)
    beta: float = 0.5                # Eq. 8: weight of the parent/child context (learnable, starts here)
    gamma: float = 0.5               # Eq. 20: hinge margin
    lam: float = 1.0                 # Eq. 10: lambda, weight of the visual cue injected into a node
    mu: float = 1.0                  # Eq. 21: weight of the word-level NCE (Eq. 18)
    delta: float = 0.0               # Eq. 7: a node whose correlation cosine to the mean is below this interferes
    center_filter: bool = True       # Eq. 7 on tube-centred correlations (false: the raw ones, as printed)
    dsa: bool = True                 # Table 3: false = word-tube NCE only (no phrase hinge, Eqs. 19-20)
    svhu: bool = True                # Table 3: false = no structural attention, backtracking or reconstruction
    temperature: float = 1.0         # Eq. 18 logits s / temperature (the paper: none, i.e. 1)
    recon: float = 1.0               # weight of the sentence reconstruction from the updated leaves (SVHU)
    recon_temperature: float = 0.1   # its word-NCE temperature
    temporal: float = 1.0            # weight of the clip NCE of the temporal localisation
    temporal_temperature: float = 0.1
    segments: int = 8                # a video's valid frames in this many equal segments; clips = runs of them
    subject: str = "noun"            # node grounded at inference: noun (first noun's leaf) | phrase | root
    existence: str = "marginal"      # Eq. 19 weight: marginal = exp(cB + cU - cB_root) <= 1 | product (as printed)
    hidden: int = 64                 # width of the merge MLPs (Eqs. 1, 11)


@dataclass
class VcmaConfig:
    """The weak VCMA head (finetune/heads/vcma.py, docs/vcma.md): sizes, the EM schedule and the ablation switches.
    Defaults: the paper's D = 256, 2 blocks x 8 heads, beta = 0.3."""
    dim: int = 256                   # D
    blocks: int = 2                  # context encoder / temporal cross-attention / reconstruction decoder blocks
    heads: int = 8
    dropout: float = 0.1
    spatial_context: bool = True     # Table 4: self-attention among a frame's regions
    temporal_context: bool = True    # Table 4: self-attention along each linked tube
    losses: str = "both"             # Table 3: both (EM) | contrastive (q_phi alone) | reconstruction (p_theta alone)
    e_steps: int = 1                 # EM schedule: e_steps E-steps, then m_steps M-steps, repeated
    m_steps: int = 1
    reconstruct_from: str = "p"      # Z of Eqs. 13-15: p (p_theta's own, trained by it) | q (Eq. 12: q_phi's, fixed)
    pseudo_label: str = "sample"     # Eq. 9 target: sample (one draw, the paper) | argmax | soft
    similarity: str = "cosine"       # Eqs. 6 / 10 scores: cosine of g_S, g_V (Eq. 6: x a learned scale) | dot
    prior: float = 0.0               # weight of the export's own phrase-region cosine added to those scores (ours)
    temperature: float = 0.1         # tau of Eq. 11
    match_norm: bool = True          # Eq. 10 with z^T normalised over frames and phrases averaged; false: as printed
    gather: bool = True              # Eq. 11 negatives from all ranks
    w_contra: float = 1.0            # weights of L_contra, L_Z (both steps), L_rec
    w_assign: float = 1.0
    w_rec: float = 1.0
    beta: float = 0.3                # Eq. 16 (losses=contrastive uses 1, reconstruction 0)
    box: str = "region"              # region: Eq. 16's best region per frame | tube: the best linked tube in the span
    parser: str = "rules"            # rules (finetune/query_parse.py) | spacy (an installed spaCy model)
    spacy_model: str = ""            # parser=spacy: the model's package name ("": the first en_* installed)
    max_entities: int = 4
    max_relations: int = 3
    max_relation_words: int = 4
    vocab: int = 4096                # hashed word vocabulary of the relation decoder


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
class FinetuneConfig:
    checkpoint: str = ""             # pretrain export folder (model.pt + model_config.json)
    run: str = ""                    # output folder; "" -> <pretrain run>/finetune/<name>
    name: str = "wsra"
    head: str = "wsra"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    wsra: WsraConfig = field(default_factory=WsraConfig)
    tube_sim: TubeSimConfig = field(default_factory=TubeSimConfig)
    fsm: FsmConfig = field(default_factory=FsmConfig)
    winner: WinnerConfig = field(default_factory=WinnerConfig)
    vcma: VcmaConfig = field(default_factory=VcmaConfig)
    tubes: TubeConfig = field(default_factory=TubeConfig)  # STVG: proposals -> region features -> M linked tubes
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
    path = checkpoint.rstrip("/")
    if path.endswith(".pt"):
        path = path.rsplit("/", 1)[0] if "/" in path else "."
    base = path.rsplit("/", 1)
    return base[0] if len(base) == 2 and base[1] == "export" else path


def resolve(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill the derived defaults (run, cache) so the echoed config says where everything went."""
    validate(cfg)
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


def validate(cfg: FinetuneConfig) -> None:
    err = cfglib.ConfigError
    if not cfg.checkpoint:
        raise err("checkpoint is required (a pretrain export folder: model.pt + model_config.json)")
    if cfg.dataset.kind not in DATASETS:
        raise err(f"dataset.kind must be one of {DATASETS}, not {cfg.dataset.kind!r}")
    if cfg.dataset.kind in ("synthetic", "synthetic_stvg") and not cfg.dataset.root:
        raise err("dataset.root is required for the synthetic corpus (the folder with train/ and test/)")
    if cfg.dataset.kind not in ("synthetic", "synthetic_stvg") and not cfg.dataset.test:
        raise err(f"dataset.test is required for {cfg.dataset.kind}")
    if cfg.head not in HEADS:
        raise err(f"head must be one of {HEADS}, not {cfg.head!r}")
    if (cfg.dataset.kind in STVG_DATASETS) != (cfg.head in STVG_HEADS):
        raise err(f"FinetuneConfig [head]: {cfg.head!r} does not fit dataset.kind {cfg.dataset.kind!r} (STVG "
                  f"datasets {STVG_DATASETS} take the STVG heads {STVG_HEADS}, the others the temporal ones)")
    if cfg.dataset.kind in STVG_DATASETS:
        cfg.tubes.validate()
        if cfg.features.center:
            raise err("features.center is not available for STVG datasets (region features are cached as they are)")
        if cfg.features.end_to_end and cfg.head != "fsm":
            raise err(f"features.end_to_end on an STVG dataset is built for the fsm head only, not {cfg.head!r}: "
                      "the other heads choose among tubes linked once from the cached region features")
    if cfg.tube_sim.temperature <= 0:
        raise err("tube_sim.temperature must be > 0")
    f = cfg.fsm
    for name, ok, rule in (("heads", f.heads >= 1, ">= 1"), ("ffn", f.ffn >= 0, ">= 0"),
                           ("dim", f.dim > 0 and f.dim % max(f.heads, 1) == 0 and f.dim % 2 == 0,
                            f"a positive multiple of fsm.heads ({f.heads}), and even (sine/cosine time code)"),
                           ("queries", f.queries >= 1, ">= 1"), ("tau", f.tau > 0, "> 0"),
                           ("max_frames", f.max_frames >= 1, ">= 1"),
                           ("sted_sigma", f.sted_sigma >= 0, ">= 0"),
                           ("pointer_queries", f.pointer_queries in ("matched", "all"), "matched or all"),
                           ("pointer", f.box_ref or not f.pointer, "false when fsm.box_ref is false (it sets the "
                                                                    "reference box's weights)"),
                           *((w, getattr(f, w) >= 0, ">= 0") for w in ("w_cls", "w_l1", "w_giou", "w_sted", "w_att",
                                                                        "w_mrcl", "w_pointer", "prior_scale"))):
        if not ok:
            raise err(f"fsm.{name} must be {rule}")
    wn = cfg.winner
    for name, ok, rule in (*((x, getattr(wn, x) >= 0, ">= 0") for x in ("alpha", "beta", "gamma", "lam", "mu",
                                                                          "recon", "temporal")),
                           ("delta", -1 <= wn.delta <= 1, "in [-1, 1] (a cosine)"),
                           ("temperature", wn.temperature > 0, "> 0"),
                           ("recon_temperature", wn.recon_temperature > 0, "> 0"),
                           ("temporal_temperature", wn.temporal_temperature > 0, "> 0"),
                           ("segments", 1 <= wn.segments <= 64, "in [1, 64]"), ("hidden", wn.hidden >= 1, ">= 1"),
                           ("subject", wn.subject in ("noun", "phrase", "root"), "noun, phrase or root"),
                           ("existence", wn.existence in ("marginal", "product"), "marginal or product")):
        if not ok:
            raise err(f"winner.{name} must be {rule}, not {getattr(wn, name)!r}")
    validate_vcma(cfg)
    if cfg.batch_size < 2:
        raise err("batch_size must be >= 2 (the in-batch queries are the negatives)")
    if cfg.queries_per_video < 1:
        raise err("queries_per_video must be >= 1")
    if cfg.max_steps < 1 or cfg.checkpoint_every < 1 or cfg.log_every < 1 or cfg.keep_last < 1:
        raise err("max_steps, checkpoint_every, log_every and keep_last must be >= 1")
    w = cfg.wsra
    weights = (w.alpha, w.beta, w.gamma, w.delta, w.epsilon)
    if min(weights) < 0 or sum(weights) == 0:
        raise err("wsra.alpha/beta/gamma/delta/epsilon must be >= 0 and not all 0")
    if w.nce_temperature <= 0:
        raise err("wsra.nce_temperature must be > 0")
    if w.top_k < 0 or w.last_k < 0:
        raise err("wsra.top_k and wsra.last_k must be >= 0")
    if w.attention_temperature <= 0:
        raise err("wsra.attention_temperature must be > 0")
    if w.fuse not in ("cat", "cat_mul"):
        raise err(f"wsra.fuse must be cat or cat_mul, not {w.fuse!r}")
    if w.moment_score not in ("mean", "contrast"):
        raise err(f"wsra.moment_score must be mean or contrast, not {w.moment_score!r}")
    if cfg.features.center and cfg.features.end_to_end:
        raise err("features.center applies to cached features; it cannot be combined with features.end_to_end")
    if cfg.features.fps <= 0:
        raise err("features.fps must be > 0")
    o, f = cfg.optim, cfg.features
    cfglib.check_ranges(optimizer_ranges(o) + [
        ("optim.encoder_lr", o.encoder_lr, o.encoder_lr >= 0, ">= 0"),
        ("features.batch_frames", f.batch_frames, f.batch_frames >= 1, ">= 1"),
        ("features.max_frames", f.max_frames, f.max_frames >= 0, ">= 0"),
        ("features.size", f.size, f.size >= 0, ">= 0"),
        ("cluster.cpus_per_task", cfg.cluster.cpus_per_task, cfg.cluster.cpus_per_task >= 0, ">= 0"),
        ("cluster.gpus_per_task", cfg.cluster.gpus_per_task, cfg.cluster.gpus_per_task >= 0, ">= 0"),
    ])


def validate_vcma(cfg: FinetuneConfig) -> None:
    v, err = cfg.vcma, cfglib.ConfigError
    choices = (("losses", v.losses, ("both", "contrastive", "reconstruction")),
               ("reconstruct_from", v.reconstruct_from, ("p", "q")),
               ("pseudo_label", v.pseudo_label, ("sample", "argmax", "soft")), ("box", v.box, ("region", "tube")),
               ("parser", v.parser, ("rules", "spacy")), ("similarity", v.similarity, ("cosine", "dot")))
    for name, value, allowed in choices:
        if value not in allowed:
            raise err(f"vcma.{name} must be one of {allowed}, not {value!r}")
    cfglib.check_ranges([
        ("vcma.blocks", v.blocks, v.blocks >= 1, ">= 1"), ("vcma.heads", v.heads, v.heads >= 1, ">= 1"),
        ("vcma.dim", v.dim, v.dim > 0 and v.heads > 0 and v.dim % v.heads == 0 and v.dim % 2 == 0,
         "a positive even multiple of vcma.heads"),
        ("vcma.dropout", v.dropout, 0 <= v.dropout < 1, "in [0, 1)"),
        ("vcma.e_steps", v.e_steps, v.e_steps >= 1, ">= 1"), ("vcma.m_steps", v.m_steps, v.m_steps >= 1, ">= 1"),
        ("vcma.temperature", v.temperature, v.temperature > 0, "> 0"),
        ("vcma.beta", v.beta, 0 <= v.beta <= 1, "in [0, 1]"), ("vcma.prior", v.prior, v.prior >= 0, ">= 0"),
        *((f"vcma.{w}", getattr(v, w), getattr(v, w) >= 0, ">= 0") for w in ("w_contra", "w_assign", "w_rec")),
        ("vcma.max_entities", v.max_entities, v.max_entities >= 1, ">= 1"),
        ("vcma.max_relations", v.max_relations, v.max_relations >= 1, ">= 1"),
        ("vcma.max_relation_words", v.max_relation_words, 1 <= v.max_relation_words <= 16, "in 1..16"),
        ("vcma.vocab", v.vocab, v.vocab >= 16, ">= 16"),
    ])
    if cfg.head == "vcma" and v.parser == "spacy":
        from finetune.query_parse import spacy_parser

        spacy_parser(v.spacy_model)          # one error line now (not after features) when no model is installed
    if cfg.head == "vcma" and cfg.train:
        from trainer.engine import load_ds_file

        try:
            stage = load_ds_file(cfg.deepspeed).get("zero_optimization", {}).get("stage", 0)
        except OSError:
            return                           # a missing file is reported where the run reads it
        if stage:
            raise err(f"vcma: EM freezes one network per step (requires_grad off), which ZeRO stage {stage} "
                      f"[{cfg.deepspeed}] is not known to honour (its flat partitions hold every parameter); use "
                      "configs/deepspeed/zero0.json")


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
    return TrainSettings(run=cfg.run, name="finetune", max_steps=cfg.max_steps, micro_batch=cfg.batch_size,
                         deepspeed=cfg.deepspeed, optimizer="torch", lr=o.lr, lr_groups=groups,
                         weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps, warmup_steps=o.warmup_steps,
                         min_lr_ratio=o.min_lr_ratio, grad_clip=o.grad_clip, precision="fp32",
                         checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, log_every=cfg.log_every)


def load(path: str | None = None, overrides=()) -> FinetuneConfig:
    cfg = cfglib.load(FinetuneConfig, path, overrides)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> FinetuneConfig:
    cfg = cfglib.from_dict(FinetuneConfig, data)
    validate(cfg)
    return cfg


def to_dict(cfg: FinetuneConfig) -> dict:
    return dataclasses.asdict(cfg)
