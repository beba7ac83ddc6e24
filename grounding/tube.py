"""Tube: the project's one box-tube type (ground truth, predictions, linked proposal tubes, per-second tubes).

A tube is a sequence of integer time indices on one grid (a video's own frames for VidSTG/HC-STVG and the tubes/
package, whole seconds for GroundingYouTube) with one x1, y1, x2, y2 box each; a NaN row means "no box here"
(a linked tube outside its extent, a second to leave out). It reads as a mapping frame -> box over the frames that
have one (`tube[f]`, `f in tube`, `sorted(tube)`, `tube.items()`), which is how the metrics look boxes up.
Optional fields: `sted`, the temporal span [start, end) half-open a prediction or annotation states (it may differ
from the boxed frames: TubeDETR's predictions box every sampled frame of the span), `score` (a linked tube's link
score, a detection's confidence) and `index` (per frame, which proposal of that frame the tube took; -1 none).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Tube(Mapping):
    frames: np.ndarray                      # (F,) int64 ascending, unique
    boxes: np.ndarray                       # (F, 4) float x1, y1, x2, y2; a NaN row: no box at that frame
    sted: tuple[int, int] | None = None     # [start, end) the tube claims; None: the boxed frames' extent
    score: float | None = None
    index: np.ndarray | None = None         # (F,) proposal index per frame (linked tubes), -1 where none

    def __post_init__(self):
        self.frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        boxes = np.asarray(self.boxes)
        self.boxes = boxes.astype(boxes.dtype if boxes.dtype == np.float32 else np.float64).reshape(-1, 4)
        if len(self.frames) != len(self.boxes):
            raise ValueError(f"a tube needs one box row per frame: {len(self.frames)} frames, {len(self.boxes)} boxes")
        if len(self.frames) > 1 and not np.all(np.diff(self.frames) > 0):
            raise ValueError("a tube's frames must be strictly ascending")
        if self.sted is not None:
            self.sted = (int(self.sted[0]), int(self.sted[1]))

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_boxes(cls, boxes: Mapping, sted: tuple[int, int] | None = None, score: float | None = None) -> "Tube":
        """From {frame: box} (any order)."""
        frames = sorted(int(f) for f in boxes)
        rows = np.asarray([np.asarray(boxes[f], dtype=np.float64) for f in frames], np.float64).reshape(-1, 4)
        return cls(np.asarray(frames, np.int64), rows, sted, score)

    @classmethod
    def empty(cls, sted: tuple[int, int] | None = None) -> "Tube":
        return cls(np.zeros(0, np.int64), np.zeros((0, 4)), sted)

    # --- the mapping frame -> box (frames with a box) -----------------------------------------------------------
    def _pos(self, frame) -> int:
        i = int(np.searchsorted(self.frames, int(frame)))
        if i < len(self.frames) and self.frames[i] == int(frame) and not np.isnan(self.boxes[i, 0]):
            return i
        return -1

    def __getitem__(self, frame) -> np.ndarray:
        i = self._pos(frame)
        if i < 0:
            raise KeyError(frame)
        return self.boxes[i]

    def __contains__(self, frame) -> bool:
        try:
            return self._pos(frame) >= 0
        except (TypeError, ValueError):
            return False

    def __iter__(self):
        return iter(int(f) for f in self.frames[self.boxed])

    def __len__(self) -> int:
        return int(self.boxed.sum())

    @property
    def boxed(self) -> np.ndarray:
        """(F,) bool: rows that hold a box."""
        return ~np.isnan(self.boxes).any(1) if len(self.boxes) else np.zeros(0, bool)

    def box_at(self, frame) -> np.ndarray | None:
        i = self._pos(frame)
        return self.boxes[i] if i >= 0 else None

    @property
    def extent(self) -> tuple[int, int]:
        """(first, last) positions into `frames` that hold a box; (0, -1) when none does."""
        on = np.flatnonzero(self.boxed)
        return (int(on[0]), int(on[-1])) if len(on) else (0, -1)

    @property
    def span(self) -> tuple[int, int]:
        """[start, end) frames: `sted` when given, else from the first boxed frame to one past the last."""
        if self.sted is not None:
            return self.sted
        a, b = self.extent
        return (int(self.frames[a]), int(self.frames[b]) + 1) if b >= a else (0, 0)

    # --- derived tubes ----------------------------------------------------------------------------------------
    def filled(self) -> "Tube":
        """Boxes on every listed frame: before the extent its first box, after it its last (a tube's object is
        assumed to stay where it was last seen)."""
        a, b = self.extent
        boxes = self.boxes.copy()
        if b >= a:
            boxes[:a] = boxes[a]
            boxes[b + 1:] = boxes[b]
        return Tube(self.frames, boxes, self.sted, self.score, self.index)

    def at_frames(self, frames) -> np.ndarray:
        """(len(frames), 4) boxes at arbitrary frames: linear interpolation between the boxed frames, the first/last
        box held outside them. NaN rows when the tube has no box at all."""
        frames = np.asarray(frames, dtype=np.float64)
        on = self.boxed
        if not on.any():
            return np.full((len(frames), 4), np.nan)
        f, b = self.frames[on].astype(np.float64), self.boxes[on].astype(np.float64)
        return np.stack([np.interp(frames, f, b[:, c]) for c in range(4)], -1)

    def with_span(self, sted: tuple[int, int], frames=None) -> "Tube":
        """This tube's boxes at every frame of [start, end) (or at `frames` inside it), stated with that span: what
        a prediction file holds."""
        s, e = int(sted[0]), int(sted[1])
        frames = np.arange(s, e) if frames is None else np.asarray([f for f in frames if s <= int(f) < e], np.int64)
        return Tube(frames, self.at_frames(frames), (s, e), self.score)

    def to_json(self, digits: int | None = 2) -> dict:
        """The vidstg prediction entry: {"sted": [s, e], "boxes": {"<frame>": [x1, y1, x2, y2]}} (coordinates
        rounded to `digits`; None: as they are)."""
        s, e = self.span
        r = (lambda c: float(c)) if digits is None else (lambda c: round(float(c), digits))
        return {"sted": [int(s), int(e)],
                "boxes": {str(int(f)): [r(c) for c in self.boxes[i]]
                          for i, f in enumerate(self.frames) if not np.isnan(self.boxes[i, 0])}}


__all__ = ["Tube"]
