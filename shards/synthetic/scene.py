"""A video's plan: what is on the table, which actions happen when, and how camera and light drift.

Everything random about a video is drawn here, from a seed derived from (config seed, split, index), so a video
does not change when more videos are added to the corpus, and rendering (render.py) is a pure function of the plan.
The nuisance draws (camera, light, jitter) come from their own stream, so a plan with its actions switched off
renders the very same scene: tests use that to check that the truth box holds every pixel an action changes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from shards.synthetic import sprites, vocab
from shards.synthetic.config import SyntheticConfig

SPLITS = {"train": 0, "test": 1}
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class SceneObject:
    noun: str
    colour: str
    texture: str
    size: int            # scale s in pixels (sprites.footprint gives the sprite's height and width)
    x: int               # top-left corner of the resting sprite, frame pixels at camera offset (0, 0)
    y: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.noun}"


@dataclass
class Action:
    verb: str
    target: int          # index into VideoPlan.objects
    start: int           # whole seconds; the action covers [start, start + seconds)
    seconds: int
    sentence: str        # canonical "verb colour noun"

    @property
    def end(self) -> int:
        return self.start + self.seconds


@dataclass
class VideoPlan:
    vid: str
    split: str
    index: int
    seed_key: tuple[int, ...]
    width: int
    height: int
    fps: int
    seconds: int
    margin: int                      # background is larger than the frame by this much on each side (camera pan)
    background: np.ndarray           # float32 (height + 2 margin, width + 2 margin, 3)
    objects: list[SceneObject]
    actions: list[Action]
    camera: np.ndarray               # int (frames, 2): camera offset (dx, dy) per frame
    light: np.ndarray                # float32 (frames,): brightness factor per frame
    jitter: np.ndarray               # int (frames, objects, 2): idle wobble of every object
    kind: str = "plain"              # background kind
    # STVG mode only (stvg.concurrent): distractor actions inside a main action's span, on another object; not
    # narrated and not in the instructional truth, which keep one action at a time
    concurrent: list[Action] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.seconds * self.fps

    def action_at(self, t: float) -> tuple[int, Action] | None:
        for i, a in enumerate(self.actions):
            if a.start <= t < a.end:
                return i, a
        return None

    @property
    def all_actions(self) -> list[Action]:
        """Main actions, then the concurrent ones: the list STVG queries index."""
        return self.actions + self.concurrent

    def acting_at(self, t: float) -> dict[int, tuple[tuple[int, int], Action]]:
        """{object: (render seed tag, action)} for every object acted on at time t. A main action's tag is
        (7, its index), as it always was, so a plan without concurrent actions renders as before."""
        out = {}
        active = self.action_at(t)
        if active is not None:
            out[active[1].target] = ((7, active[0]), active[1])
        for c, a in enumerate(self.concurrent):
            if a.start <= t < a.end:
                out[a.target] = ((11, c), a)
        return out


def video_id(seed: int, split: str, index: int) -> str:
    """An 11-character YouTube-like id, stable for (seed, split, index); letters and digits only, so it is a
    valid shard key as is."""
    digest = hashlib.sha256(f"stground-synthetic/{seed}/{split}/{index}".encode()).digest()
    n = int.from_bytes(digest[:16], "big")
    chars = []
    for _ in range(11):
        n, r = divmod(n, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[r])
    return "".join(chars)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[str, np.ndarray]:
    """A muted table top (plain, wood grain or tiles) with fixed noise; low saturation keeps objects salient."""
    base = np.asarray([(196, 188, 172), (160, 152, 140), (120, 116, 110), (178, 170, 160), (140, 128, 112)][
        rng.integers(5)], np.float32) * rng.uniform(0.85, 1.1)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = ("plain", "wood", "tiles")[rng.integers(3)]
    shade = np.zeros((h, w), np.float32)
    if kind == "wood":
        f = rng.uniform(0.25, 0.45)
        shade = 9.0 * np.sin(f * y + 2.0 * np.sin(0.06 * x + rng.uniform(0, 6.3)))
    elif kind == "tiles":
        step = int(rng.integers(14, 24))
        grout = ((x.astype(int) % step) < 1) | ((y.astype(int) % step) < 1)
        shade = np.where(grout, -35.0, 0.0).astype(np.float32)
    noise = rng.normal(0.0, 4.0, (h, w)).astype(np.float32)
    bg = base[None, None, :] + (shade + noise)[..., None]
    return kind, np.clip(bg, 0, 255).astype(np.float32)


def _layout(rng: np.random.Generator, cfg: SyntheticConfig, margin: int, count: int) -> list[SceneObject]:
    """Objects with distinct colours and nouns at non-overlapping places. Room around each object is kept free
    when possible (pour streams and flames go below it, the press and a lifted object above)."""
    words = vocab.vocabulary(cfg.verbs, cfg.nouns, cfg.colours)
    nouns = list(rng.permutation(words["objects"]))[:count]
    colours = list(rng.permutation(words["colours"]))[:count]
    return place(rng, cfg, margin, [str(n) for n in nouns], [str(c) for c in colours])


def place(rng: np.random.Generator, cfg: SyntheticConfig, margin: int, nouns: list[str], colours: list[str]
          ) -> list[SceneObject]:
    """The objects (noun, colour) at sizes and places drawn from rng (the STVG mode picks its own words)."""
    short = min(cfg.width, cfg.height)
    # the sharder keeps a centred square (short-side resize + centre crop): objects placed there are always seen
    if cfg.centre_objects:
        x0, y0 = (cfg.width - short) // 2, (cfg.height - short) // 2
        area = (x0, y0, x0 + short, y0 + short)
    else:
        area = (0, 0, cfg.width, cfg.height)
    objects: list[SceneObject] = []
    boxes: list[tuple[float, float, float, float]] = []
    for noun, colour in zip(nouns, colours):
        s = int(round(rng.uniform(cfg.min_object_size, cfg.max_object_size) * short))
        h, w = sprites.footprint(str(noun), s)
        lo_x, hi_x = area[0] + margin + 1, area[2] - w - margin - 1
        lo_y, hi_y = area[1] + margin + 1, area[3] - h - margin - 1
        if hi_x < lo_x or hi_y < lo_y:
            raise ValueError(f"an object of {w}x{h} px does not fit the {area[2] - area[0]}x{area[3] - area[1]} "
                             "px placement area; lower max_object_size or camera_drift")
        placed = None
        # generous spacing first, then tighter, then anywhere: the layout never fails, it only gets busier
        for pad in (0.35 * s, 0.15 * s, 2.0, -1e9):
            for _ in range(60):
                x = int(rng.integers(lo_x, hi_x + 1))
                y = int(rng.integers(lo_y, hi_y + 1))
                box = (x - pad, y - pad, x + w + pad, y + h + pad)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    placed = (x, y)
                    break
            if placed:
                boxes.append((placed[0], placed[1], placed[0] + w, placed[1] + h))
                break
        assert placed is not None
        objects.append(SceneObject(str(noun), str(colour), str(rng.choice(vocab.TEXTURES)), s, *placed))
    return objects


def _timeline(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[int, list[int], list[int]]:
    """(duration, action lengths, gap lengths): gaps[0] before the first action, gaps[-1] after the last."""
    duration = int(rng.integers(cfg.min_seconds, cfg.max_seconds + 1))
    k = int(rng.integers(cfg.min_actions, cfg.max_actions + 1))
    lengths = [int(v) for v in rng.integers(cfg.min_action_seconds, cfg.max_action_seconds + 1, size=k)]
    # shrink the longest actions, then drop actions, until everything fits with a background stretch around each
    while sum(lengths) + (len(lengths) + 1) * cfg.min_gap_seconds > duration:
        i = int(np.argmax(lengths))
        if lengths[i] > cfg.min_action_seconds:
            lengths[i] -= 1
        else:
            lengths.pop()
    slack = duration - sum(lengths) - (len(lengths) + 1) * cfg.min_gap_seconds
    shares = rng.multinomial(slack, np.full(len(lengths) + 1, 1.0 / (len(lengths) + 1)))
    gaps = [cfg.min_gap_seconds + int(v) for v in shares]
    return duration, lengths, gaps


def _actions(rng: np.random.Generator, cfg: SyntheticConfig, objects: list[SceneObject], lengths: list[int],
             gaps: list[int]) -> list[Action]:
    verbs = vocab.vocabulary(cfg.verbs, cfg.nouns, cfg.colours)["verbs"]
    out: list[Action] = []
    used: set[str] = set()
    t = gaps[0]
    for length, gap in zip(lengths, gaps[1:]):
        # a video's steps are distinct sentences (vid2step.json is a pool, and the evaluator keys tubes by step)
        for _ in range(100):
            verb = str(rng.choice(verbs))
            target = int(rng.integers(len(objects)))
            sent = vocab.sentence(verb, objects[target].colour, objects[target].noun)
            if sent not in used:
                break
        used.add(sent)
        out.append(Action(verb, target, t, length, sent))
        t += length + gap
    return out


def _drift(rng: np.random.Generator, cfg: SyntheticConfig, duration: int, actions: list[Action]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Camera offset and brightness per frame: constant during actions; in each background stretch the camera
    may pan and/or the light may change (so "something moves" alone does not mean "an action happens")."""
    m = cfg.camera_drift
    cam = [int(rng.integers(-m, m + 1)), int(rng.integers(-m, m + 1))]
    light = 1.0 + float(rng.uniform(-0.5, 0.5)) * cfg.light_drift
    keys_t, keys_v = [0.0], [(cam[0], cam[1], light)]
    bounds = [0] + [b for a in actions for b in (a.start, a.end)] + [duration]
    for g0, g1 in zip(bounds[0::2], bounds[1::2]):          # the background stretches
        mode = ("still", "pan", "light", "both")[rng.integers(4)]
        if mode in ("pan", "both"):
            cam = [int(rng.integers(-m, m + 1)), int(rng.integers(-m, m + 1))]
        if mode in ("light", "both"):
            light = 1.0 + float(rng.uniform(-1.0, 1.0)) * cfg.light_drift
        keys_t += [float(g0), float(g1)]
        keys_v += [keys_v[-1], (cam[0], cam[1], light)]
    keys_t.append(float(duration))
    keys_v.append(keys_v[-1])
    times = np.arange(duration * cfg.fps) / cfg.fps
    kv = np.asarray(keys_v, np.float64)
    camera = np.stack([np.rint(np.interp(times, keys_t, kv[:, j])) for j in (0, 1)], 1).astype(np.int64)
    bright = np.interp(times, keys_t, kv[:, 2]).astype(np.float32)
    return camera, bright


def plan_video(cfg: SyntheticConfig, split: str, index: int, layout=None) -> VideoPlan:
    """layout(rng, cfg, margin, count) -> objects; default: distinct nouns and colours (the STVG mode shares them)."""
    key = (int(cfg.seed), SPLITS[split], int(index))
    scene_ss, time_ss, nuisance_ss, bg_ss = np.random.SeedSequence(list(key)).spawn(4)
    margin = cfg.camera_drift
    rng = np.random.default_rng(scene_ss)
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects = (layout or _layout)(rng, cfg, margin, count)
    trng = np.random.default_rng(time_ss)
    duration, lengths, gaps = _timeline(trng, cfg)
    actions = _actions(trng, cfg, objects, lengths, gaps)
    nrng = np.random.default_rng(nuisance_ss)
    camera, light = _drift(nrng, cfg, duration, actions)
    frames = duration * cfg.fps
    if cfg.jitter > 0:
        jitter = np.rint(nrng.normal(0.0, cfg.jitter, (frames, len(objects), 2))).astype(np.int64)
    else:
        jitter = np.zeros((frames, len(objects), 2), np.int64)
    kind, bg = _background(np.random.default_rng(bg_ss), cfg.height + 2 * margin, cfg.width + 2 * margin)
    return VideoPlan(video_id(cfg.seed, split, index), split, index, key, cfg.width, cfg.height, cfg.fps, duration,
                     margin, bg, objects, actions, camera, light, jitter, kind)
