"""Frames of a planned video, and where every object is in each of them.

A frame is the background seen through the camera offset, the objects composited in order (the target of an
ongoing action as its verb's layers, effects.py; in STVG mode a concurrent action's object too), then the light
factor. The extent of each object is the union of its layers' opaque pixels; for the target of an action it also
holds the resting place, so the truth box covers every pixel that the action changes (where the object went *and*
where it used to be).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from shards.synthetic import effects, sprites
from shards.synthetic.scene import VideoPlan

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels, x2/y2 exclusive


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


class Renderer:
    def __init__(self, plan: VideoPlan):
        self.plan = plan
        self.sprites = [sprites.sprite(o.noun, o.colour, o.texture, o.size) for o in plan.objects]

    def _paste(self, canvas: np.ndarray, layer: effects.Layer) -> Box | None:
        """Alpha-composite a layer (clipped to the frame); returns the box of its opaque pixels in the frame."""
        H, W = canvas.shape[:2]
        h, w = layer.rgba.shape[:2]
        x0, y0 = max(0, layer.x), max(0, layer.y)
        x1, y1 = min(W, layer.x + w), min(H, layer.y + h)
        if x0 >= x1 or y0 >= y1:
            return None
        src = layer.rgba[y0 - layer.y:y1 - layer.y, x0 - layer.x:x1 - layer.x]
        alpha = src[..., 3:4]
        region = canvas[y0:y1, x0:x1]
        region += alpha * (src[..., :3] - region)
        opaque = alpha[..., 0] > 0
        rows, cols = np.nonzero(opaque.any(1))[0], np.nonzero(opaque.any(0))[0]
        if not len(rows):
            return None
        return x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1

    def frame(self, i: int, actions: bool = True) -> tuple[np.ndarray, list[Box | None]]:
        """(uint8 (H, W, 3) frame i, per object its box in this frame). actions=False renders the same scene
        with nothing happening (used by tests to locate the pixels an action changes)."""
        p = self.plan
        t = i / p.fps
        dx, dy = (int(v) for v in p.camera[i])
        m = p.margin
        canvas = p.background[m + dy:m + dy + p.height, m + dx:m + dx + p.width].copy()
        # the scene moves with the camera: a pan shifts background and objects alike
        acting = p.acting_at(t) if actions else {}
        boxes: list[Box | None] = []
        for j, (obj, spr) in enumerate(zip(p.objects, self.sprites)):
            x = obj.x - dx + int(p.jitter[i, j, 0])
            y = obj.y - dy + int(p.jitter[i, j, 1])
            if j in acting:
                tag, a = acting[j]
                rng = np.random.default_rng([*p.seed_key, *tag, i])
                progress = (t - a.start) / a.seconds
                h, w = spr.shape[:2]
                box: Box | None = _clip((x, y, x + w, y + h), p.width, p.height)
                for layer in effects.layers(a.verb, spr, obj.colour, x, y, obj.size, progress, t, rng):
                    box = _union(box, self._paste(canvas, layer))
            else:
                box = self._paste(canvas, effects.Layer(spr, x, y))
            boxes.append(box)
        canvas *= p.light[i]
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes

    def frames(self, actions: bool = True) -> Iterator[tuple[np.ndarray, list[Box | None]]]:
        for i in range(self.plan.frames):
            yield self.frame(i, actions)


def _clip(box: Box, width: int, height: int) -> Box | None:
    x1, y1 = max(0, box[0]), max(0, box[1])
    x2, y2 = min(width, box[2]), min(height, box[3])
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None
