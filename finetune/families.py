"""The task families (finetune/family.py) by name and by dataset kind."""
from __future__ import annotations

from finetune.family import TaskFamily
from finetune.family_stvg import StvgFamily
from finetune.family_temporal import TemporalFamily

FAMILIES: dict[str, TaskFamily] = {f.name: f for f in (TemporalFamily(), StvgFamily())}


def family_of_kind(kind: str) -> TaskFamily | None:
    return next((f for f in FAMILIES.values() if kind in f.kinds), None)


def kinds() -> tuple[str, ...]:
    return tuple(k for f in FAMILIES.values() for k in f.kinds)


def build_adapter(dataset):
    """The dataset adapter of a DatasetConfig, whichever family reads it."""
    return family_of_kind(dataset.kind).adapter(dataset)


def family_of(cfg) -> TaskFamily:
    """The family of a validated FinetuneConfig (its dataset kind's)."""
    return family_of_kind(cfg.dataset.kind)


__all__ = ["FAMILIES", "build_adapter", "family_of", "family_of_kind", "kinds"]
