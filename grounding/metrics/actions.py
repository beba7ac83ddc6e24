"""Per-frame action accuracy: does the frame's predicted step name the action that is happening?

Over the annotated frames (seconds with a true step), the share whose predicted step equals the true one; a frame
predicted as background counts as wrong. Its chance level is the mean over those frames of 1 / (number of actions
in the video's pool, background excluded): the accuracy of picking one of the video's actions at random. The
verb-only and object-only variants compare one part of the step ("cut" / "red cube") and tell which half of the
description a model gets wrong.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def frame_accuracy(truth: Sequence[str], pred: Sequence[str | None],
                   part: Callable[[str], str] | None = None) -> float:
    """Fraction of frames with pred == truth (after `part`, e.g. the verb); None or "background" is wrong."""
    if len(truth) != len(pred):
        raise ValueError(f"{len(truth)} true steps but {len(pred)} predictions")
    if not truth:
        return float("nan")
    key = part or (lambda s: s)
    hits = [p is not None and p != "background" and key(p) == key(t) for t, p in zip(truth, pred)]
    return float(np.mean(hits))


def pool_chance(pool_sizes: Sequence[int]) -> float:
    """Mean of 1 / pool size over the annotated frames (pool sizes without background)."""
    if not len(pool_sizes):
        return float("nan")
    sizes = np.asarray(pool_sizes, dtype=np.float64)
    if (sizes < 1).any():
        raise ValueError("every annotated frame's video needs at least one action in its pool")
    return float(np.mean(1.0 / sizes))


def verb(step: str) -> str:
    """The first word of a step description ("cut red cube" -> "cut")."""
    return step.split(" ", 1)[0]


def obj(step: str) -> str:
    """Everything after the verb ("cut red cube" -> "red cube")."""
    parts = step.split(" ", 1)
    return parts[1] if len(parts) > 1 else ""
