"""Standard grounding metrics: pure numpy functions over arrays, returning fractions (0..1).

One module per protocol family; `docs/evaluation.md` gives each definition and its source.
"""
from grounding.metrics.boxes import box_iou_aligned, point_in_box
from grounding.metrics.didemo import didemo_chunk_iou, didemo_metrics
from grounding.metrics.moments import charades_metrics, nms_1d, segment_iou
from grounding.metrics.pointing import pointing_game
from grounding.metrics.segmentation import frame_iou_iod
from grounding.metrics import spatiotemporal
from grounding.metrics.spatiotemporal import (
    average_precision,
    iou_plus_point,
    label_runs,
    tube_iou,
    video_map,
)
from grounding.tube import Tube  # the one tube type (grounding/tube.py), which the metrics take
from grounding.metrics.stvg import sample_frame_ids, stvg_query_metrics, summarize_stvg

__all__ = [
    "average_precision",
    "box_iou_aligned",
    "charades_metrics",
    "didemo_chunk_iou",
    "didemo_metrics",
    "frame_iou_iod",
    "iou_plus_point",
    "label_runs",
    "nms_1d",
    "point_in_box",
    "pointing_game",
    "sample_frame_ids",
    "segment_iou",
    "stvg_query_metrics",
    "summarize_stvg",
    "spatiotemporal",
    "Tube",
    "tube_iou",
    "video_map",
]
