"""Pictures of a grounding: heatmap and box overlays on sampled frames (PNG grid + MP4) with the query and a
timeline strip of the predicted segment(s) against the true one(s).

Drawing only: `render` takes frames and predictions already made. `python -m grounding.query ... --out DIR
[--truth 4 9]` grounds one query on one video and draws it; cluster/demo.py draws a few test videos.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
from PIL import Image, ImageDraw

from grounding.inference import FramePrediction, segments_of, upsample_heatmap

PRED_COLOUR = (255, 60, 60)
TRUE_COLOUR = (60, 220, 60)
STRIP_H = 14


def _colormap(h: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB (a blue-to-red ramp: no matplotlib needed)."""
    h = np.clip(h, 0, 1)[..., None]
    low, mid, high = np.array([0, 0, 160.0]), np.array([255, 220, 0.0]), np.array([230, 20, 20.0])
    out = np.where(h < 0.5, low + (mid - low) * (h / 0.5), mid + (high - mid) * ((h - 0.5) / 0.5))
    return out.astype(np.uint8)


def overlay(frame: np.ndarray, pred: FramePrediction | None, geometry=None, alpha: float = 0.45) -> Image.Image:
    """One frame (S, S, 3) with the heatmap blended in and the predicted box and point (crop coordinates)."""
    img = frame.astype(np.float32)
    size = frame.shape[0]
    if pred is not None and pred.heatmap is not None:
        heat = upsample_heatmap(pred.heatmap, size)
        img = (1 - alpha) * img + alpha * _colormap(heat).astype(np.float32)
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    if pred is not None and pred.box is not None and geometry is not None:
        d = ImageDraw.Draw(im)
        x1, y1 = geometry.to_crop(*pred.box[:2])
        x2, y2 = geometry.to_crop(*pred.box[2:])
        d.rectangle([x1, y1, x2, y2], outline=PRED_COLOUR, width=max(1, size // 64))
        px, py = geometry.to_crop(*pred.point)
        r = max(2, size // 40)
        d.ellipse([px - r, py - r, px + r, py + r], fill=PRED_COLOUR)
    return im


def timeline(width: int, duration: float, predicted: list[tuple[float, float]], truth: list[tuple[float, float]],
             cursor: float | None = None) -> Image.Image:
    """Two bars: truth (green, top) and prediction (red, bottom); a white tick at `cursor`."""
    im = Image.new("RGB", (width, 2 * STRIP_H), (30, 30, 30))
    d = ImageDraw.Draw(im)
    scale = width / max(duration, 1e-6)
    for row, segs, colour in ((0, truth, TRUE_COLOUR), (1, predicted, PRED_COLOUR)):
        for s, e in segs:
            d.rectangle([s * scale, row * STRIP_H + 2, max(s * scale + 1, e * scale), row * STRIP_H + STRIP_H - 2],
                        fill=colour)
    if cursor is not None:
        d.line([cursor * scale, 0, cursor * scale, 2 * STRIP_H], fill=(255, 255, 255), width=1)
    return im


def _caption(width: int, text: str) -> Image.Image:
    im = Image.new("RGB", (width, 16), (0, 0, 0))
    ImageDraw.Draw(im).text((3, 2), text, fill=(255, 255, 255))
    return im


def render(frames: np.ndarray, times: np.ndarray, preds: list[FramePrediction], query: str, geometry,
           truth: list[tuple[float, float]], out_png: str, out_mp4: str | None = None, columns: int = 8,
           tile: int = 128) -> dict:
    """PNG grid of up to 2*columns frames sampled over the video (those inside predicted/true segments first), and
    an MP4 of every frame with the same overlays; returns the written paths."""
    period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    duration = float(times[-1] + period) if len(times) else 0.0
    predicted = segments_of(preds, query, period)
    by_time = {round(p.time, 3): p for p in preds}

    def tile_of(i: int, width: int) -> Image.Image:
        p = by_time.get(round(float(times[i]), 3))
        im = overlay(frames[i], p if p is not None and p.step == query else None, geometry)
        im = im.resize((width, width), Image.BILINEAR)
        canvas = Image.new("RGB", (width, width + 2 * STRIP_H))
        canvas.paste(im, (0, 0))
        canvas.paste(timeline(width, duration, predicted, truth, float(times[i])), (0, width))
        ImageDraw.Draw(canvas).text((2, 1), f"{times[i]:.0f}s", fill=(255, 255, 255))
        return canvas

    n = len(frames)
    inside = [i for i in range(n) if any(s <= times[i] < e for s, e in predicted + truth)]
    picks = sorted(set(np.linspace(0, n - 1, min(n, columns), dtype=int).tolist())
                   | set(inside[:: max(1, len(inside) // columns)][:columns]))
    tiles = [tile_of(i, tile) for i in picks]
    rows = (len(tiles) + columns - 1) // columns
    th = tile + 2 * STRIP_H
    grid = Image.new("RGB", (columns * tile, 16 + rows * th), (0, 0, 0))
    grid.paste(_caption(columns * tile, f'query: "{query}"   red: predicted   green: true'), (0, 0))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % columns) * tile, 16 + (k // columns) * th))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    grid.save(out_png)
    written = {"png": out_png}
    if out_mp4:
        write_mp4([np.asarray(tile_of(i, 2 * (tile // 2))) for i in range(n)], out_mp4, fps=max(1.0, 1.0 / period))
        written["mp4"] = out_mp4
    return written


def write_mp4(frames: list[np.ndarray], path: str, fps: float = 1.0) -> None:
    """H.264 through the ffmpeg binary (frames of even size)."""
    from shards.decode import ffmpeg_exe

    h, w = frames[0].shape[:2]
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", path]
    proc = subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames),
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace')[-300:]}")
