"""TubeConfig: how proposals become region features and tubes (docs/stvg.md, "Decisions")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TubeConfig:
    tubes: int = 10           # M tubes per video (VCMA keeps 10 regions per frame; the paper's M)
    alpha: float = 0.5        # IoU weight in the link score (VCMA Eq. 4, Sec. 4.1)
    max_gap: int = 2          # missed frames a link may bridge
    gap_discount: float = 0.8 # a link bridging k-1 missed frames counts k x score x this^(k-1)
    min_iou: float = 0.3      # a link needs IoU above this (gating, as SORT); -1: any link (Eq. 4 as written)
    roi_output: int = 2       # RoI-Align bins per side before the mean
    batch_frames: int = 64    # frames per encoder call
    mid_layer: int = 0        # multi-scale input (a head asking for it: fsm.multiscale): the earlier visual block
                              # (1-based) whose patch tokens give the second region features; 0: the middle one

    def validate(self) -> "TubeConfig":
        from common.config import ConfigError

        if self.tubes < 1 or self.max_gap < 0 or self.roi_output < 1 or self.batch_frames < 1 or self.mid_layer < 0:
            raise ConfigError("TubeConfig: tubes, roi_output and batch_frames must be >= 1, max_gap and mid_layer >= 0")
        if not 0 < self.gap_discount <= 1 or not -1 <= self.min_iou < 1:
            raise ConfigError("TubeConfig: gap_discount must be in (0, 1], min_iou in [-1, 1)")
        return self
