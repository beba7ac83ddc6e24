"""SyntheticConfig: every knob of the generator, echoed into DIR/corpus.json and DIR/config.yaml."""
from __future__ import annotations

from dataclasses import dataclass

import os

from common import fsio
from common.config import ConfigError
from shards.synthetic import sprites, vocab

# a synthetic video is rendered in memory frame by frame: past these no run finishes in a sitting
MAX_SIDE = 1920
MAX_FPS = 60
MAX_SECONDS = 3600


@dataclass
class SyntheticConfig:
    out: str = ""                      # output folder (local path or fsspec URL); `--out DIR` on the CLI
    seed: int = 0
    n_train: int = 120
    n_test: int = 40
    # video format
    width: int = 128                   # even: yuv420p needs it
    height: int = 96
    fps: int = 5
    min_seconds: int = 24              # video length, whole seconds, uniform in [min, max]
    max_seconds: int = 40
    crf: int = 20                      # x264 quality; low enough that the action cues survive compression
    # scene
    min_objects: int = 3
    max_objects: int = 4
    min_object_size: float = 0.22      # object scale as a fraction of the short side, uniform in [min, max]
    max_object_size: float = 0.30
    centre_objects: bool = True        # objects inside the centred square that short-side resize + crop keeps
    verbs: int = 6                     # vocabulary sizes: prefixes of vocab.VERBS / NOUNS / COLOURS
    nouns: int = 5
    colours: int = 6
    # timeline
    min_actions: int = 3
    max_actions: int = 5
    min_action_seconds: int = 3
    max_action_seconds: int = 8
    min_gap_seconds: int = 2           # background stretch before, between and after actions (slack is added)
    # difficulty
    asr_shift: float = 2.0             # narration of an action is shifted by U(-asr_shift, +asr_shift) seconds
    unrelated_fraction: float = 0.2    # fraction of ASR segments that talk about nothing visible
    filler_prob: float = 0.3           # chance that a segment carries a filler word ("um", "so", ...)
    min_asr_seconds: float = 2.0       # ASR segment length range
    max_asr_seconds: float = 5.0
    jitter: float = 0.5                # per-frame position jitter of every object (std, pixels)
    camera_drift: int = 5              # pan amplitude during background stretches (pixels)
    light_drift: float = 0.15          # brightness change during background stretches (fraction)
    proposal_jitter: float = 0.08      # proposal box noise (std, fraction of the box size)
    # STVG mode (docs/stvg.md): nouns and colours shared within a scene, one referring query per action, tubes at
    # the native frame rate, per-frame proposals. The four kind weights are the query mix (normalised).
    mode: str = "instructional"        # instructional | stvg
    stvg_attribute: float = 0.3        # kind "attribute": the colour resolves the shared noun ("the red cube")
    stvg_relation: float = 0.3         # kind "relation": a spatial relation to an object of another noun
    stvg_action: float = 0.2           # kind "action": only what happens to it resolves it ("the cube is cut")
    stvg_same_noun: float = 0.2        # kind "same_noun": relation to an object of the subject's own noun
    stvg_interrogative: float = 0.5    # share of interrogative queries ("what is cut left of the blue bowl?")
    stvg_concurrent: float = 0.6       # share of actions with a distractor action on another object inside their span
    stvg_same_verb: float = 0.5        # share of distractor actions with the target's verb (else another verb)
    stvg_near: float = 0.25            # "next to": box gap at most this fraction of the frame's short side
    stvg_miss: float = 0.05            # proposals: chance that an object is missed in a frame
    stvg_false_positives: float = 1.0  # proposals: mean false positives per frame (Poisson)
    # execution
    workers: int = 1                   # processes rendering videos (each video is independent)
    threads: int = 1                   # x264 threads; 1 keeps the encoding bit-exact

    def validate(self) -> "SyntheticConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"SyntheticConfig: {msg}")

        need(bool(self.out), "out is required (--out DIR)")
        need(not (fsio.is_local(self.out) and os.path.exists(self.out) and not os.path.isdir(self.out)),
             f"out [{self.out}] exists and is not a folder")
        need(self.seed >= 0, "seed must be >= 0")
        need(self.n_train >= 0 and self.n_test >= 0, "n_train and n_test must be >= 0")
        need(self.width % 2 == 0 and self.height % 2 == 0, "width and height must be even (yuv420p)")
        need(48 <= self.width <= MAX_SIDE and 48 <= self.height <= MAX_SIDE,
             f"width and height must be in 48..{MAX_SIDE}")
        need(1 <= self.fps <= MAX_FPS, f"fps must be in 1..{MAX_FPS}")
        need(self.max_seconds <= MAX_SECONDS, f"max_seconds must be <= {MAX_SECONDS} (an hour per video)")
        need(1 <= self.verbs <= len(vocab.VERBS), f"verbs must be in 1..{len(vocab.VERBS)}")
        need(1 <= self.nouns <= len(vocab.NOUNS), f"nouns must be in 1..{len(vocab.NOUNS)}")
        need(1 <= self.colours <= len(vocab.COLOURS), f"colours must be in 1..{len(vocab.COLOURS)}")
        need(1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects")
        need(self.mode in ("instructional", "stvg"), f"mode must be instructional or stvg, got {self.mode!r}")
        if self.mode == "stvg":  # nouns are shared on purpose; (noun, colour) stays unique
            need(self.max_objects >= 2 and self.max_objects <= self.colours,
                 "stvg mode needs 2 <= max_objects <= colours")
            mix = (self.stvg_attribute, self.stvg_relation, self.stvg_action, self.stvg_same_noun)
            need(min(mix) >= 0 and sum(mix) > 0, "stvg kind weights must be >= 0 with a positive sum")
            need(0 <= self.stvg_concurrent <= 1 and 0 <= self.stvg_same_verb <= 1,
                 "stvg_concurrent and stvg_same_verb must be in [0, 1]")
            need(0 <= self.stvg_interrogative <= 1 and 0 <= self.stvg_miss < 1 and self.stvg_false_positives >= 0
                 and self.stvg_near > 0, "stvg_interrogative and stvg_miss in [0, 1), stvg_near > 0, "
                 "stvg_false_positives >= 0")
        else:
            # each object in a scene gets its own colour and noun, so "the red cube" names one object
            need(self.max_objects <= min(self.nouns, self.colours), "max_objects must be <= nouns and <= colours")
        need(0.05 <= self.min_object_size <= self.max_object_size <= 0.4, "object sizes must lie in [0.05, 0.4]")
        short = min(self.width, self.height)
        side = max(max(sprites.footprint(n, round(self.max_object_size * short))) for n in vocab.NOUNS)
        need(side + 2 * (self.camera_drift + 1) <= (short if self.centre_objects else max(self.width, self.height)),
             f"objects up to {side} px plus camera_drift {self.camera_drift} do not fit the frame; "
             "lower max_object_size or camera_drift")
        need(1 <= self.min_actions <= self.max_actions, "need 1 <= min_actions <= max_actions")
        need(1 <= self.min_action_seconds <= self.max_action_seconds, "need 1 <= min_action_seconds <= max")
        need(self.min_gap_seconds >= 1, "min_gap_seconds must be >= 1")
        need(self.min_seconds <= self.max_seconds, "need min_seconds <= max_seconds")
        need(self.min_seconds >= self.min_action_seconds + 2 * self.min_gap_seconds,
             "min_seconds too short for one action with a background stretch on each side")
        need(self.asr_shift >= 0, "asr_shift must be >= 0")
        need(0 <= self.unrelated_fraction < 1, "unrelated_fraction must be in [0, 1)")
        need(0 <= self.filler_prob <= 1, "filler_prob must be in [0, 1]")
        # a span longer than max_asr_seconds must split into pieces that are all >= min_asr_seconds
        need(0.5 <= self.min_asr_seconds and 2 * self.min_asr_seconds <= self.max_asr_seconds,
             "need 0.5 <= min_asr_seconds and 2 * min_asr_seconds <= max_asr_seconds")
        need(self.jitter >= 0 and self.camera_drift >= 0 and self.proposal_jitter >= 0, "noise knobs must be >= 0")
        need(0 <= self.light_drift < 0.5, "light_drift must be in [0, 0.5)")
        need(0 <= self.crf <= 51, "crf must be in 0..51")
        need(self.workers >= 1 and self.threads >= 1, "workers and threads must be >= 1")
        return self
