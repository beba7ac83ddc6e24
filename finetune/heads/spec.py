"""HeadSpec: everything the rest of finetune/ (config, features, batches, cluster/, benchmarks) may know about a
head, exported by the head's own module as `SPEC` (docs/finetune.md "Adding a head").

A head's name appears nowhere but in its module and in finetune/heads/registry.py: the config section is the
spec's dataclass, the features it needs are the spec's answers, its checks are the spec's functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TEMPORAL, STVG = "temporal", "stvg"   # the task families (finetune/family.py): moments, or tubes


def _no_check(section: Any, cfg: Any) -> None:
    return None


def _no_io(cfg: Any) -> None:
    return None


def _no_mid_layer(section: Any) -> bool:
    return False


def _no_pairs(section: Any) -> float | None:
    return None


def _no_options(section: Any) -> dict:
    return {}


def _no_prep(section: Any) -> None:
    return None


def _no_said(section: Any) -> bool:
    return False


def _no_lr_groups(section: Any) -> tuple:
    return ()


@dataclass(frozen=True)
class HeadSpec:
    """One head, described once.

    `head(dim, section)` builds it over d-dimensional features from its config section (`config`, a dataclass whose
    defaults are the head's; the YAML section and `NAME.key=value` overrides are named `name`). `validate(section,
    cfg)` is pure (raise common.config.ConfigError); `check_io(cfg)` runs once at the start of a run (files, installed
    models). `regions`/`supervised` are read from the head class (its `needs_regions`, `supervised`)."""
    name: str
    head: type                                                  # a finetune.heads.base.GroundingHead subclass
    config: type                                                # the config section's dataclass
    family: str = TEMPORAL                                      # TEMPORAL | STVG
    end_to_end: bool = False                                    # may train with features.end_to_end (pixels)
    mid_layer: Callable[[Any], bool] = _no_mid_layer             # section -> needs an earlier block's regions too
    validate: Callable[[Any, Any], None] = _no_check            # (section, FinetuneConfig) -> None, pure
    check_io: Callable[[Any], None] = _no_io                    # FinetuneConfig -> None, at the start of a run
    pseudo_positives: Callable[[Any], float | None] = _no_pairs  # section -> caption-cosine gate of the pairs it
                                                                # trains on (contracts.md section 4), None: unread
    predict_options: Callable[[Any], dict] = _no_options        # section -> keywords of its family's predictor
    text_prep: Callable[[Any], Any] = _no_prep                  # section -> None, or a callable (sentences,
                                                                # token_spans, word_mask) -> TextBatch.parsed that
                                                                # the STVG batcher and predictor call once per
                                                                # batch (it may cache per sentence for the run)
    said: Callable[[Any], bool] = _no_said                       # section -> a weak STVG batch also carries every
                                                                # training sentence of each of its videos, parsed
                                                                # by text_prep (TrainBatch.said: its video-level
                                                                # labels); text_prep must then take (sentences,
                                                                # None, None)
    lr_groups: Callable[[Any], tuple] = _no_lr_groups            # section -> ((parameter name prefix inside the
                                                                # head, lr), ...): parts that learn at their own rate
    predict_keys: tuple = ()                                    # section keys read at prediction only (the same
                                                                # trained head answers another way): what
                                                                # finetune.repredict may change besides span.*

    @property
    def regions(self) -> bool:
        """The head reads region features (B, T, N, d)."""
        return bool(self.head.needs_regions)

    @property
    def supervised(self) -> bool:
        """Training batches carry the truth (StvgTargets)."""
        return bool(self.head.supervised)

    def build(self, dim: int, cfg: Any):
        """The head over d-dimensional features, from its section of the FinetuneConfig `cfg`."""
        return self.head(dim, self.section(cfg))

    def section(self, cfg: Any) -> Any:
        return getattr(cfg, self.name)


__all__ = ["STVG", "TEMPORAL", "HeadSpec"]
