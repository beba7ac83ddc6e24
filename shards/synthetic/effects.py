"""What each verb does to its target, frame by frame: a list of RGBA layers that replaces the resting sprite.

Every verb changes both appearance and motion, and each is recognisable in a single frame at 32-64 px (a tiny ViT
has to pick it up within minutes of training): a dark cut line with the halves apart, white spokes turning,
a tilted object with a stream of its colour, ghost copies and speed lines, a press on a flattened object, blue
droplets, flames below a darkened object, a raised object over its shadow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from shards.synthetic import vocab

WHITE = (255.0, 255.0, 255.0)


@dataclass
class Layer:
    rgba: np.ndarray       # float32 (h, w, 4), RGB 0..255, alpha 0..1
    x: int                 # top-left corner, frame pixels
    y: int


def solid(h: int, w: int, rgb, alpha: float = 1.0) -> np.ndarray:
    out = np.zeros((max(1, h), max(1, w), 4), np.float32)
    out[..., :3] = np.asarray(rgb, np.float32)
    out[..., 3] = alpha
    return out


def _draw(h: int, w: int, paint) -> np.ndarray:
    """Rasterise PIL drawing commands (no anti-aliasing) into a float32 RGBA array."""
    img = Image.new("RGBA", (max(1, w), max(1, h)), (0, 0, 0, 0))
    paint(ImageDraw.Draw(img))
    arr = np.asarray(img, np.float32).copy()
    arr[..., 3] /= 255.0
    return arr


def _resize(rgba: np.ndarray, h: int, w: int) -> np.ndarray:
    idx_y = np.minimum((np.arange(h) + 0.5) * rgba.shape[0] / h, rgba.shape[0] - 1).astype(int)
    idx_x = np.minimum((np.arange(w) + 0.5) * rgba.shape[1] / w, rgba.shape[1] - 1).astype(int)
    return rgba[idx_y][:, idx_x]


def _rotate(rgba: np.ndarray, degrees: float) -> np.ndarray:
    """Nearest-neighbour rotation (counter-clockwise for positive degrees), canvas grown to hold the result."""
    h, w = rgba.shape[:2]
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    nw = int(math.ceil(abs(w * c) + abs(h * s)))
    nh = int(math.ceil(abs(w * s) + abs(h * c)))
    y, x = np.mgrid[0:nh, 0:nw].astype(np.float32) + 0.5
    xr, yr = x - nw / 2, y - nh / 2
    # inverse mapping: where in the source each output pixel comes from
    sx = c * xr - s * yr + w / 2
    sy = s * xr + c * yr + h / 2
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros((nh, nw, 4), np.float32)
    out[inside] = rgba[sy[inside].astype(int), sx[inside].astype(int)]
    return out


def layers(verb: str, spr: np.ndarray, colour: str, x: int, y: int, s: int, progress: float, t: float,
           rng: np.random.Generator) -> list[Layer]:
    """Layers of the target at time t (s), `progress` in [0, 1) through the action; (x, y) is where the resting
    sprite would be drawn. rng is seeded per (video, action, frame), so frames are reproducible one by one."""
    h, w = spr.shape[:2]
    rgb = vocab.COLOURS[colour]
    if verb == "cut":
        # the halves move apart as the knife goes through; the dark blade fills the gap
        half = w // 2
        gap = 1 + int(round(progress * 0.25 * s))
        blade = solid(h + 6, 2, (15, 15, 15))
        return [Layer(spr[:, :half], x - gap, y), Layer(spr[:, half:], x + half + gap, y),
                Layer(blade, x + half - 1, y - 4)]
    if verb == "stir":
        # three white spokes and a ring turning at 0.6 turns per second
        cx, cy = w / 2, h / 2
        r = 0.45 * min(w, h) + 1
        turn = 2 * math.pi * 0.6 * t

        def paint(d: ImageDraw.ImageDraw) -> None:
            for k in range(3):
                a = turn + k * 2 * math.pi / 3
                d.line([(cx, cy), (cx + r * math.cos(a), cy + r * math.sin(a))], fill=(255, 255, 255, 255), width=2)
            d.ellipse([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], outline=(255, 255, 255, 255))

        return [Layer(spr, x, y), Layer(_draw(h, w, paint), x, y)]
    if verb == "pour":
        # tilted towards the right, a stream of its colour falls from the lowest point of the rim
        rot = _rotate(spr, -(30.0 + 30.0 * progress))
        rh, rw = rot.shape[:2]
        rx, ry = x + w // 2 - rw // 2, y + h // 2 - rh // 2
        cols = np.nonzero(rot[..., 3].max(0) > 0)[0]
        lip = int(cols[-1]) if len(cols) else rw - 1
        rows = np.nonzero(rot[:, lip, 3] > 0)[0]
        top = int(rows[-1]) if len(rows) else rh // 2
        width = max(3, s // 6)
        length = s + int(rng.integers(0, 3))
        stream_rgb = tuple(min(255.0, 0.75 * c + 64) for c in rgb)
        return [Layer(rot, rx, ry), Layer(solid(length, width, stream_rgb), rx + lip - width // 2 + 1, ry + top)]
    if verb == "shake":
        # fast left-right jolts; fading copies on both sides and white speed lines read as motion blur
        amp = max(2, int(round(0.12 * s)))
        dx = int(rng.choice([-amp, amp]))
        ghost_off = max(3, int(round(0.3 * s)))
        ghost = spr.copy()
        ghost[..., 3] *= 0.4
        out = [Layer(ghost, x + dx - ghost_off, y), Layer(ghost, x + dx + ghost_off, y), Layer(spr, x + dx, y)]
        line = solid(2, max(3, int(0.35 * s)), WHITE)
        for frac in (0.25, 0.5, 0.75):
            ly = y + int(frac * h)
            out.append(Layer(line, x + dx - ghost_off - line.shape[1] - 1, ly))
            out.append(Layer(line, x + dx + w + ghost_off + 1, ly))
        return out
    if verb == "crush":
        # flattened from 70% to 40% of its height and widened, under a grey press with its rod
        nh = max(2, int(round(h * (0.7 - 0.3 * progress))))
        nw = int(round(w * (1.2 + 0.2 * progress)))
        flat = _resize(spr, nh, nw)
        fx, fy = x + w // 2 - nw // 2, y + h - nh
        plate_h = max(3, s // 6)
        plate_w = nw + 4
        rod_h = max(4, int(0.4 * s))
        return [Layer(flat, fx, fy), Layer(solid(plate_h, plate_w, (70, 70, 75)), fx - 2, fy - plate_h),
                Layer(solid(rod_h, 3, (70, 70, 75)), fx + nw // 2 - 1, fy - plate_h - rod_h)]
    if verb == "wash":
        # light-blue drops fall through a band around the object
        pad = max(4, int(0.35 * s))
        bw, bh = w + 2 * pad, h + 2 * pad
        seeds = np.random.default_rng([int(s), int(w), int(h)]).uniform(0, 1, (12, 2))
        fall = (seeds[:, 1] * bh + t * 0.9 * bh) % bh
        r = max(1.5, s / 14)

        def paint(d: ImageDraw.ImageDraw) -> None:
            for (u, _), fy in zip(seeds, fall):
                cx = u * (bw - 2 * r) + r
                d.ellipse([cx - r, fy - r, cx + r, fy + r], fill=(110, 195, 255, 255))

        return [Layer(spr, x, y), Layer(_draw(bh, bw, paint), x - pad, y - pad)]
    if verb == "fry":
        # the object browns and flickering flames rise below it
        dark = spr.copy()
        dark[..., :3] *= 0.85  # browned, but still its own colour (the sentence names it)
        fh = max(4, int(0.6 * s))
        heights = rng.uniform(0.6, 1.0, 4) * fh
        n = 4
        step = w / n

        def paint(d: ImageDraw.ImageDraw) -> None:
            for k in range(n):
                x0, x1 = k * step, (k + 1) * step
                top = fh - heights[k]
                d.polygon([(x0, fh), (x1, fh), ((x0 + x1) / 2, top)],
                          fill=(255, 120, 0, 255) if k % 2 == 0 else (235, 40, 0, 255))
                d.polygon([(x0 + step * 0.3, fh), (x1 - step * 0.3, fh), ((x0 + x1) / 2, top + 0.45 * heights[k])],
                          fill=(255, 230, 60, 255))

        return [Layer(dark, x, y), Layer(_draw(fh, w, paint), x, y + h)]
    if verb == "lift":
        # raised above its place, with a dark shadow where it stood
        dy = int(round((0.4 + 0.2 * progress) * s))
        sw, sh = max(3, int(0.9 * w)), max(2, int(0.25 * s))
        shadow = _draw(sh, sw, lambda d: d.ellipse([0, 0, sw - 1, sh - 1], fill=(0, 0, 0, 255)))
        shadow[..., 3] *= 0.55
        return [Layer(shadow, x + (w - sw) // 2, y + h - sh // 2), Layer(spr, x, y - dy)]
    raise ValueError(f"unknown verb {verb!r}; known: {list(vocab.VERBS)}")
