"""Object sprites: a silhouette per noun, filled with a colour and a texture, as float32 RGBA (alpha 0 or 1).

Silhouettes are drawn with numpy masks on pixel centres, without anti-aliasing: hard edges keep every render
bit-exact and make "which pixels belong to the object" a plain alpha test (render.py derives boxes from it).
"""
from __future__ import annotations

import numpy as np

from shards.synthetic import vocab


def footprint(noun: str, s: int) -> tuple[int, int]:
    """(height, width) of the sprite of `noun` at scale s pixels."""
    if noun == "bowl":
        return max(3, round(0.6 * s)), max(4, round(1.25 * s))
    if noun == "bottle":
        return max(4, round(1.3 * s)), max(3, round(0.6 * s))
    if noun == "cup":
        return max(3, round(0.95 * s)), s
    if noun == "carrot":
        return max(4, round(1.25 * s)), max(3, round(0.7 * s))
    if noun in ("cube", "ball"):
        return s, s
    raise ValueError(f"unknown noun {noun!r}; known: {list(vocab.NOUNS)}")


def silhouette(noun: str, s: int) -> np.ndarray:
    """Boolean (h, w) mask of the object's outline shape."""
    h, w = footprint(noun, s)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    u = (x - w / 2) / (w / 2)          # -1..1 across
    v = y / h                          # 0 at the top, 1 at the bottom
    if noun == "cube":
        return np.ones((h, w), bool)
    if noun == "ball":
        return u ** 2 + ((y - h / 2) / (h / 2)) ** 2 <= 1.0
    if noun == "bowl":                 # lower half of an ellipse: flat rim on top
        return u ** 2 + v ** 2 <= 1.0
    if noun == "bottle":               # wide body, narrow neck in the top third
        return np.where(v < 0.32, np.abs(u) <= 0.42, np.abs(u) <= 1.0)
    if noun == "cup":                  # wider at the rim than at the foot
        return np.abs(u) <= 1.0 - 0.4 * v
    if noun == "carrot":               # triangle pointing down
        return np.abs(u) <= 1.0 - v
    raise ValueError(f"unknown noun {noun!r}")


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return mask & ~inner


def sprite(noun: str, colour: str, texture: str, s: int) -> np.ndarray:
    """float32 (h, w, 4): RGB in 0..255 and alpha in {0, 1}."""
    mask = silhouette(noun, s)
    h, w = mask.shape
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:] = np.asarray(vocab.COLOURS[colour], np.float32)
    y, x = np.mgrid[0:h, 0:w]
    period = max(4, s // 5)
    if texture == "striped":           # diagonal bands in a darker shade of the same colour
        dark = ((x + y) // (period // 2)) % 2 == 1
        rgb[dark] *= 0.6
    elif texture == "dotted":          # a grid of pale dots
        r = max(1.0, period / 4)
        d = ((x % period) + 0.5 - period / 2) ** 2 + ((y % period) + 0.5 - period / 2) ** 2 <= r * r
        rgb[d] = 0.45 * rgb[d] + 0.55 * 255.0
    elif texture != "solid":
        raise ValueError(f"unknown texture {texture!r}")
    rgb[_outline(mask)] *= 0.35        # a dark rim separates the object from any background
    out = np.zeros((h, w, 4), np.float32)
    out[..., :3] = rgb
    out[..., 3] = mask
    return out
