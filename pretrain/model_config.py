"""ModelConfig: the `model` section of the pretrain config, exported unchanged as `model_config.json`.

Everything that changes the model's parameters or its forward pass lives here, so an export can be rebuilt from
this file and `model.pt` alone. The backbone's architecture fields (quick_gelu, image_size, image_mean, image_std)
may be left unset in a config; building the model resolves them (from the weights file, the open_clip tag, the
backbone name: pretrain.architecture) and the resolved values are what pretraining records and every loader reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import ConfigError

FREEZE_MODES = ("none", "all", "partial")
SELECTION_MODES = ("sinkhorn", "topk", "none")
GRANULARITIES = ("local", "global")


@dataclass
class ModelConfig:
    backbone: str = "stg-tiny"        # any open_clip model name or a config in pretrain/model_configs/
    pretrained: str | None = None     # open_clip tag or a local weights file; tags resolve from the local cache only
    # the backbone's architecture beyond its name; None / 0: as the weights were trained where their file or tag
    # says, else the open_clip name's config (pretrain.architecture.resolve; README "Start from CLIP weights")
    quick_gelu: bool | None = None    # QuickGELU (OpenAI's and LAION-400M's CLIP) instead of GELU in both towers
    image_size: int = 0               # the image tower's input size; 0: the name's (another size resizes the
                                      # positional embedding of the loaded weights, as open_clip does)
    image_mean: tuple[float, float, float] | None = None  # per-channel normalisation of frames; None: the tag's,
    image_std: tuple[float, float, float] | None = None   # else OpenAI's CLIP values
    freeze: str = "none"              # none | all | partial
    unfrozen_blocks: int = 2          # partial: last N transformer blocks of each tower (+ final norms) train
    embed_dim: int = 256              # d of f, g (global) and f', g' (local)
    local_heads: int = 4              # heads of the local branch's self-attention
    local_attention: str = "frame"    # video self-attention scope of the local branch: frame (N tokens) | clip (T*N)
    frames_in: int = 16               # U
    frames_selected: int = 8          # T
    max_words: int = 20               # K: word tokens kept per caption for the local branch
    selection: str = "sinkhorn"       # sinkhorn | topk (no OT) | none (evenly strided; T = U is the paper's None)
    selection_text: str = "local"     # local (words) | global (sentence) side of the similarity P
    selection_video: str = "global"   # local (patches) | global (frame CLS) side of P
    sinkhorn_iters: int = 3
    sinkhorn_temperature: float = 0.1
    attention_temperature: float = 0.1  # cosine scores / this before the softmax of the cross-modal attention
    loss_local: bool = True
    loss_global: bool = True
    margin: float = 0.1               # delta of Eq. 1 (cosine units, subtracted from the positive)
    temperature: float = 0.07         # tau: logits are cosine / tau (CLIP's initial value)
    learn_temperature: bool = True    # tau is a trained parameter (clamped at 1/100)
    word_region_weight: float = 1.0   # + this * word-region nce in L_local (losses.word_region_contrastive); 0: the
                                      # paper's pooled L_local alone (ablation)
    heatmap: str = "word_region"      # word_region: word-over-region attention of the projected tokens f', g';
                                      # branch: the local branch's last cross-attention (the paper's Sec. 3.5)
    imposters: int = 3                # CoMMA imposter pairings per clip for L_local (see pretrain/losses.py)
    imposter_weight: float = 1.0      # weight of the imposter term of L_local (0: only gathered negatives)
    gather: bool = True               # negatives from all ranks (all_gather with gradients)
    cross_video: bool = True          # L_crov: a pseudo-positive caption (data.pseudo_positives) as extra positive;
                                      # false: the table is not read and the term is absent (ablation)
    pseudo_positive_weight: float = 1.0  # weight of L_crov in the loss (pretrain/losses.py)
    mil_windows: int = 0              # > 0: L_global in MIL-NCE form; the captions of up to this many neighbouring
                                      # ASR windows on each side of a clip (same video, within mil_shift s) are
                                      # extra positives (losses.mil_contrastive); 0: Eq. 1 as printed
    mil_shift: float = 2.0            # seconds between ASR spans that still count as neighbours (the narration's
                                      # shift against the action, the synthetic corpus's asr_shift)
    frame_pool: str = "mean"          # how L_global scores a (clip, caption) pair from the T selected frames: mean
                                      # (the paper: the mean frame feature) | max (its best frame's cosine, the
                                      # per-frame score inference uses; losses.frame_max_contrastive)

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"model.freeze must be one of {FREEZE_MODES}, got {self.freeze!r}")
        if self.selection not in SELECTION_MODES:
            raise ConfigError(f"model.selection must be one of {SELECTION_MODES}, got {self.selection!r}")
        for name in ("selection_text", "selection_video"):
            if getattr(self, name) not in GRANULARITIES:
                raise ConfigError(f"model.{name} must be one of {GRANULARITIES}, got {getattr(self, name)!r}")
        if not 1 <= self.frames_selected <= self.frames_in:
            raise ConfigError(f"model.frames_selected must be in [1, frames_in={self.frames_in}], "
                             f"got {self.frames_selected}")
        if self.heatmap not in ("word_region", "branch"):
            raise ConfigError(f"model.heatmap must be word_region|branch, got {self.heatmap!r}")
        if self.word_region_weight < 0:
            raise ConfigError(f"model.word_region_weight must be >= 0, got {self.word_region_weight}")
        if self.local_attention not in ("frame", "clip"):
            raise ConfigError(f"model.local_attention must be frame|clip, got {self.local_attention!r}")
        if not (self.loss_local or self.loss_global):
            raise ConfigError("model.loss_local and model.loss_global cannot both be off")
        if self.imposters < 0 or self.temperature <= 0:
            raise ConfigError("model.imposters must be >= 0 and model.temperature > 0")
        if self.max_words < 1 or self.embed_dim < 1 or self.sinkhorn_iters < 1:
            raise ConfigError("model.max_words, embed_dim and sinkhorn_iters must be >= 1")
        if self.sinkhorn_temperature <= 0 or self.attention_temperature <= 0:
            raise ConfigError("model temperatures must be > 0")
        if self.pseudo_positive_weight < 0:
            raise ConfigError(f"model.pseudo_positive_weight must be >= 0, got {self.pseudo_positive_weight}")
        if self.frame_pool not in ("mean", "max"):
            raise ConfigError(f"model.frame_pool must be mean|max, got {self.frame_pool!r}")
        if self.frame_pool == "max" and self.mil_windows > 0:
            raise ConfigError("model.frame_pool=max is not built for MIL-NCE (model.mil_windows > 0)")
        if self.mil_windows < 0 or self.mil_shift < 0:
            raise ConfigError(f"model.mil_windows and model.mil_shift must be >= 0, got {self.mil_windows}, "
                              f"{self.mil_shift}")
        if self.image_size < 0:
            raise ConfigError(f"model.image_size must be >= 0 (0: the backbone's), got {self.image_size}")
        if self.image_std is not None and min(self.image_std) <= 0:
            raise ConfigError(f"model.image_std must be > 0, got {self.image_std}")
        if self.margin < 0:
            raise ConfigError(f"model.margin must be >= 0, got {self.margin}")
        if self.embed_dim % self.local_heads:
            raise ConfigError(f"model.embed_dim {self.embed_dim} must divide by local_heads {self.local_heads}")
