"""Verb-swapped captions: hard negatives that keep the object and change the action (the imposter idea of Eq. 1).

"now we cut the red cube" -> "now we stir the red cube": the clip must score its own caption above the same
sentence with another verb, which the object alone cannot decide. The verbs are a list the user gives
(`data.verb_swap`: base form -> -ing form; for HowTo100M, e.g. the most frequent verbs of its step vocabulary),
and the first of them in a caption is replaced by another one of the same form. A caption without any listed
verb gets no hard negative. The pick is a function of the sample's seed, so a resumed run draws the same one.
"""
from __future__ import annotations

import re

import numpy as np


def verb_swapped(caption: str, verbs: dict[str, str], seed: int) -> str | None:
    """The caption with its first listed verb (either form) replaced by another listed verb of the same form."""
    if len(verbs) < 2:
        return None
    forms = {**{v: (v, 0) for v in verbs}, **{ing: (v, 1) for v, ing in verbs.items()}}
    words = re.split(r"(\W+)", caption)
    for i, w in enumerate(words):
        hit = forms.get(w.lower())
        if hit is None:
            continue
        base, form = hit
        others = [v for v in verbs if v != base]
        pick = others[int(np.random.default_rng(seed).integers(len(others)))]
        words[i] = pick if form == 0 else verbs[pick]
        return "".join(words)
    return None
