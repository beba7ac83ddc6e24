"""Thin readers, one per annotation format, plus the prediction formats (docs/evaluation.md). numpy only."""
from grounding.readers.charades import CharadesQuery, read_charades_durations, read_charades_sta
from grounding.readers.common import BACKGROUND, InputError, norm_label
from grounding.readers.didemo import DidemoQuery, read_didemo
from grounding.readers.groundingyoutube import GytVideo, read_groundingyoutube, segment_seconds
from grounding.readers.miningyoutube import labels_per_second, parse_srt, read_miningyoutube
from grounding.readers.predictions import (
    SecondPrediction,
    read_moment_predictions,
    read_per_second_predictions,
    read_stvg_predictions,
)
from grounding.readers.stvg import StvgQuery, read_hcstvg, read_vidstg
from grounding.readers.youcook import PointingFrame, read_youcook_interactions

__all__ = [
    "BACKGROUND", "CharadesQuery", "DidemoQuery", "GytVideo", "InputError", "PointingFrame", "SecondPrediction",
    "StvgQuery", "labels_per_second", "norm_label", "parse_srt", "read_charades_durations",
    "read_charades_sta", "read_didemo", "read_groundingyoutube", "read_hcstvg", "read_miningyoutube",
    "read_moment_predictions", "read_per_second_predictions", "read_stvg_predictions", "read_vidstg",
    "read_youcook_interactions", "segment_seconds",
]
