"""ASR-like narration of a planned video: loosely aligned, split into 2-5 s segments, with fillers and off-topic talk.

As in HowTo100M, the narrator talks about an action a little before or after doing it (a random shift of up to
`asr_shift` seconds per action), a long action is narrated over several ASR segments of which one names the action
("now we cut the red cube") and the others only follow it up ("keep cutting it"), and some segments are about
nothing visible ("don't forget to subscribe"): first in the silent stretches, then in place of follow-ups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.synthetic import vocab
from shards.synthetic.config import SyntheticConfig
from shards.synthetic.scene import VideoPlan

KEY, FOLLOW, UNRELATED = "key", "follow", "unrelated"


@dataclass
class Segment:
    start: float
    end: float
    text: str
    kind: str            # KEY, FOLLOW or UNRELATED
    action: int          # index of the action it narrates; -1 for unrelated talk


def _pieces(rng: np.random.Generator, a: float, b: float, lo: float, hi: float) -> list[tuple[float, float]]:
    """Split [a, b] into consecutive pieces of lo..hi seconds (one shorter piece when the span is short)."""
    out = []
    while b - a > hi:
        n = float(rng.uniform(lo, min(hi, b - a - lo)))
        out.append((a, a + n))
        a += n
    out.append((a, b))
    return out


def _filler(rng: np.random.Generator, text: str, prob: float) -> str:
    if rng.uniform() >= prob:
        return text
    f = str(rng.choice(vocab.FILLERS))
    words = text.split()
    # at the start, or after the first word ("now um we cut"): never inside "red cube", which names the object
    pos = 1 if len(words) > 1 and rng.uniform() < 0.3 else 0
    return " ".join(words[:pos] + [f] + words[pos:])


def narrate(plan: VideoPlan, cfg: SyntheticConfig) -> list[Segment]:
    rng = np.random.default_rng([*plan.seed_key, 11])
    D = float(plan.seconds)
    segs: list[Segment] = []
    prev_end = 0.0
    for k, a in enumerate(plan.actions):
        obj = plan.objects[a.target]
        shift = float(rng.uniform(-cfg.asr_shift, cfg.asr_shift))
        # keep the narration inside the video and after the previous action's narration (ASR is sequential)
        s0 = max(prev_end, min(max(a.start + shift, prev_end), D - 1.0))
        s1 = min(s0 + a.seconds, D)
        if s1 - s0 < 0.5:
            continue  # no time left to talk (only when asr_shift is far larger than min_gap_seconds)
        pieces = _pieces(rng, s0, s1, cfg.min_asr_seconds, cfg.max_asr_seconds)
        key_at = int(rng.integers(len(pieces))) if len(pieces) > 1 and rng.uniform() < 0.3 else 0
        for p, (u, v) in enumerate(pieces):
            if p == key_at:
                text = str(rng.choice(vocab.KEY_PHRASES)).format(verb=a.verb, colour=obj.colour, noun=obj.noun)
                kind = KEY
            else:
                text = str(rng.choice(vocab.FOLLOW_PHRASES)).format(ing=vocab.VERBS[a.verb], noun=obj.noun)
                kind = FOLLOW
            segs.append(Segment(u, v, text, kind, k))
        prev_end = s1
    _add_unrelated(rng, cfg, D, segs)
    for s in segs:
        s.text = _filler(rng, s.text, cfg.filler_prob)
        s.start, s.end = round(s.start, 2), round(s.end, 2)
    segs.sort(key=lambda s: (s.start, s.end))
    return segs


def _add_unrelated(rng: np.random.Generator, cfg: SyntheticConfig, D: float, segs: list[Segment]) -> None:
    f = cfg.unrelated_fraction
    want = int(round(f * len(segs) / (1.0 - f))) if f > 0 else 0
    # silent stretches first
    busy = sorted((s.start, s.end) for s in segs)
    free, t = [], 0.0
    for a, b in busy + [(D, D)]:
        if a - t >= cfg.min_asr_seconds:
            free.append((t, a))
        t = max(t, b)
    placed = 0
    while placed < want and free:
        i = int(rng.integers(len(free)))
        a, b = free.pop(i)
        n = float(rng.uniform(cfg.min_asr_seconds, min(cfg.max_asr_seconds, b - a)))
        u = float(rng.uniform(a, b - n))
        segs.append(Segment(u, u + n, str(rng.choice(vocab.UNRELATED_PHRASES)), UNRELATED, -1))
        placed += 1
        for lo, hi in ((a, u), (u + n, b)):
            if hi - lo >= cfg.min_asr_seconds:
                free.append((lo, hi))
    # then off-topic talk over an action, in place of follow-up segments (the key phrase always stays)
    follows = [s for s in segs if s.kind == FOLLOW]
    for i in rng.permutation(len(follows))[:max(0, want - placed)]:
        s = follows[int(i)]
        s.text, s.kind, s.action = str(rng.choice(vocab.UNRELATED_PHRASES)), UNRELATED, -1
