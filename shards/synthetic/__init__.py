"""Synthetic HowTo100M-style instructional videos with known truth (docs/contracts.md section 1).

    python -m shards.synthetic --out DIR [key=value ...]      # SyntheticConfig fields, e.g. n_train=200 seed=3

Module map: config (knobs), vocab (words and phrases), scene (a video's random plan), sprites and effects (how
objects and verbs look), render (frames and boxes), encode (ffmpeg in/out), narration (ASR captions), truth
(GroundingYouTube files), generate (the corpus on disk).
"""
from shards.synthetic.config import SyntheticConfig
from shards.synthetic.generate import generate, make_video

__all__ = ["SyntheticConfig", "generate", "make_video"]
