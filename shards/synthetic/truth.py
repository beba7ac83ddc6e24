"""Hidden ground truth of a video in the GroundingYouTube formats (read by grounding.readers.groundingyoutube).

Segments are whole seconds, inclusive at both ends as in the official files: an action over [start, start + n)
seconds is the segment [start, start + n - 1], and it has one box per second, the target's box in the frame at
that second. Proposals imitate a detector run at 1 fps: every object's box, jittered, plus false positives.
"""
from __future__ import annotations

import numpy as np

from shards.synthetic.render import Box
from shards.synthetic.scene import VideoPlan

BACKGROUND = "background"


def segments(plan: VideoPlan) -> list[dict]:
    return [{"segment": [a.start, a.end - 1], "id": i, "sentence": a.sentence} for i, a in enumerate(plan.actions)]


def boxes(plan: VideoPlan, per_second: dict[int, list[Box | None]]) -> dict[str, dict]:
    """{"<second>": {"box": [x1, y1, x2, y2], "step": sentence}} for every second inside an action."""
    out: dict[str, dict] = {}
    for a in plan.actions:
        for t in range(a.start, a.end):
            box = per_second[t][a.target]
            if box is not None:        # an object pushed fully out of frame has no box (never with the defaults)
                out[str(t)] = {"box": list(box), "step": a.sentence}
    return out


def pool(plan: VideoPlan) -> list[str]:
    steps: list[str] = []
    for a in plan.actions:
        if a.sentence not in steps:
            steps.append(a.sentence)
    return steps + [BACKGROUND]


def proposals(plan: VideoPlan, per_second: dict[int, list[Box | None]], jitter: float) -> dict[str, list]:
    """{"<second>": [[x1, y1, x2, y2, score], ...]} best score first: true objects score 0.5-1, the 1-2 false
    positives per second 0.05-0.6, so a score threshold alone cannot clean the list."""
    rng = np.random.default_rng([*plan.seed_key, 13])
    W, H = plan.width, plan.height
    out: dict[str, list] = {}
    for t in range(plan.seconds):
        rows = []
        for box in per_second[t]:
            if box is None:
                continue
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            noise = rng.normal(0.0, jitter, 4) * np.asarray([w, h, w, h])
            rows.append(_row(x1 + noise[0], y1 + noise[1], x2 + noise[2], y2 + noise[3], rng.uniform(0.5, 1.0), W, H))
        for _ in range(int(rng.integers(1, 3))):
            w, h = rng.uniform(0.1, 0.4) * W, rng.uniform(0.1, 0.4) * H
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            rows.append(_row(x, y, x + w, y + h, rng.uniform(0.05, 0.6), W, H))
        rows.sort(key=lambda r: -r[4])
        out[str(t)] = rows
    return out


def _row(x1: float, y1: float, x2: float, y2: float, score: float, W: int, H: int) -> list:
    x1, x2 = sorted((min(max(x1, 0.0), W - 1.0), min(max(x2, 1.0), float(W))))
    y1, y2 = sorted((min(max(y1, 0.0), H - 1.0), min(max(y2, 1.0), float(H))))
    return [int(round(x1)), int(round(y1)), max(int(round(x2)), int(round(x1)) + 1),
            max(int(round(y2)), int(round(y1)) + 1), round(float(score), 3)]
