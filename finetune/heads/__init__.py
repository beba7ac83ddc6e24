"""Downstream heads behind one interface (base.GroundingHead), each described by the HeadSpec its module exports
(finetune/heads/spec.py) and found through finetune/heads/registry.py. Adding a head is one file
(docs/finetune.md "Adding a head")."""
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.registry import spec_of


def build_head(name: str, dim: int, cfg) -> GroundingHead:
    """The head named by FinetuneConfig.head over d-dimensional features; `cfg` is the FinetuneConfig (the head
    reads its own section)."""
    return spec_of(name).build(dim, cfg)


__all__ = ["GroundingHead", "TextBatch", "TrainBatch", "VideoBatch", "build_head"]
