"""Reference predictions for the per-second benchmarks (groundingyoutube format): what a score must beat.

`random_segments`: per video, segments of random length at random places with a random step of the video's pool
(the "random-segment baseline" of the issue: same segment statistics as the truth, no looking at pixels), a point
uniform over the frame and a box of the mean true size around it. Averaging a few seeds gives chance level.
"""
from __future__ import annotations

import numpy as np

from grounding.readers.groundingyoutube import GytVideo


def random_segments(videos: dict[str, GytVideo], seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for vid, v in sorted(videos.items()):
        pool = [s for s in v.pool if s != "background"] or sorted({s for _, _, s in v.segments})
        w, h = v.size or (1, 1)
        last = max([e for _, e, _ in v.segments] + list(v.boxes) + [0]) + 3
        lengths = [e - s + 1 for s, e, _ in v.segments] or [4]
        sizes = [(b[2] - b[0], b[3] - b[1]) for _, b in v.boxes.values()] or [(w / 4, h / 4)]
        bw, bh = np.mean(sizes, axis=0)
        secs: dict[str, dict] = {}
        for _ in range(len(v.segments)):
            n = int(rng.choice(lengths))
            start = int(rng.integers(0, max(1, last - n)))
            step = str(rng.choice(pool))
            score = float(rng.random())
            for t in range(start, min(last, start + n)):
                x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
                secs[str(t)] = {"step": step, "score": score, "point": [x, y],
                                "box": [max(0.0, x - bw / 2), max(0.0, y - bh / 2), min(w, x + bw / 2),
                                        min(h, y + bh / 2)]}
        for t in range(last):  # background seconds still point somewhere (the pointing game reads every second)
            if str(t) not in secs:
                secs[str(t)] = {"step": "background", "score": 0.0,
                                "point": [float(rng.uniform(0, w)), float(rng.uniform(0, h))]}
        out[vid] = secs
    return out
