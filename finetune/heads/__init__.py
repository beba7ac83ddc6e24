"""Downstream heads behind one interface (base.GroundingHead). A new head (WINNER, VCMA, FSM) adds its module,
its config section in finetune/config.py and a line in head_class / build_head."""
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch


def head_class(name: str) -> type[GroundingHead]:
    if name == "wsra":
        from finetune.heads.wsra import WSRAHead

        return WSRAHead
    if name == "tube_sim":
        from finetune.heads.tube_sim import TubeSimHead

        return TubeSimHead
    if name == "fsm":
        from finetune.heads.fsm import FsmHead

        return FsmHead
    if name == "winner":
        from finetune.heads.winner import WinnerHead

        return WinnerHead
    if name == "vcma":
        from finetune.heads.vcma import VcmaHead

        return VcmaHead
    raise ValueError(f"unknown head {name!r}")


def build_head(name: str, dim: int, cfg) -> GroundingHead:
    """The head named by FinetuneConfig.head over d-dimensional features; `cfg` is the FinetuneConfig (each head
    reads its own section)."""
    return head_class(name)(dim, getattr(cfg, name))


__all__ = ["GroundingHead", "TextBatch", "TrainBatch", "VideoBatch", "build_head", "head_class"]
