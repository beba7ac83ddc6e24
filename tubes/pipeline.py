"""A video's tubes end to end: decode at the proposals' frame rate, region features (cached), link.

Used by benchmarks/experiments/stvg_baselines.py and meant for the STVG heads: everything a tube-selection head
needs per video.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from grounding.inference import CropGeometry
from tubes import activity
from tubes.config import TubeConfig
from grounding.tube import Tube
from tubes.linking import link_tubes
from tubes.proposals import Proposals
from tubes.regions import RegionCache, frames_for, region_features


@dataclass
class VideoTubes:
    vid: str
    proposals: Proposals
    regions: np.ndarray      # (F, N, d) L2-normalised region features
    frames: np.ndarray       # (F, d) global frame features
    tubes: list[Tube]
    size: tuple[float, float] = (0.0, 0.0)   # the source video's width, height in pixels
    regions_mid: np.ndarray | None = None    # (F, N, d) the same proposals over an earlier visual block (multi-scale)
    pixels: np.ndarray | None = None         # (F, S, S, 3) uint8 crops at the proposals' frames (end to end only)

    @functools.cached_property
    def tube_activities(self) -> np.ndarray:
        """(M, F) each linked tube's activity at every frame (tubes/activity.py), computed once per video: training
        batches and predictions read it, never recompute it."""
        frames = self.proposals.frames
        return np.stack([activity.tube_activity(self.regions, t, frames) for t in self.tubes]) if self.tubes else \
            np.zeros((0, len(frames)))

    @functools.cached_property
    def region_activity(self) -> np.ndarray:
        """(F, N) each region's activity on its tube, standardised per video (TubeGeometry.activity)."""
        return activity.region_activity(self.regions, self.tubes, self.proposals.frames, self.tube_activities)


def video_pixels(vid: str, path: str, props: Proposals, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The video decoded once at its proposals' frames: ((F, S, S, 3) uint8 crops, (width, height))."""
    from shards.decode import decode_video

    if props.fps is None:
        raise ValueError(f"proposals of video {vid} carry no fps: frame indices cannot be matched to decoded frames")
    dec = decode_video(path, fps=props.fps, size=image_size)
    return frames_for(np.stack(dec.frames), np.asarray(dec.times), props.fps, props.frames), (dec.width, dec.height)


def video_tubes(model, vid: str, path: str, props: Proposals, width: int | None, height: int | None,
                cfg: TubeConfig, cache: RegionCache | None = None, mid_layer: int = 0) -> VideoTubes:
    """Region features (from the cache when it holds this video's, else computed and cached) and the linked tubes.
    width/height: the source video's frame size (None: the decoder's). mid_layer > 0: also the region features over
    that earlier visual block (multi-scale); a cache entry without them gets them added, its other arrays kept."""
    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    found = cached_tubes(vid, path, props, cfg, cache, mid_layer) if cache is not None else None
    if found is not None:
        return found
    old = cached_tubes(vid, path, props, cfg, cache) if cache is not None and mid_layer else None
    frames, (w, h) = video_pixels(vid, path, props, model.image_size)
    width, height = width or w, height or h
    regions, glob, *mid = region_features(model, frames, props, CropGeometry(width, height, model.image_size),
                                          cfg.roi_output, cfg.batch_frames, mid_layer)
    # the cache keeps float16: round fresh features the same way, so a cached run gives the same results
    f16 = (lambda x: x.astype(np.float16).astype(np.float32))  # noqa: E731
    regions, glob, mid = f16(regions), f16(glob), [f16(m) for m in mid]
    if old is not None:   # what other heads already read from this entry stays as it was
        regions, glob, (width, height) = old.regions, old.frames, old.size
    if cache is not None:
        extra = {"regions_mid": mid[0].astype(np.float16), "mid_layer": np.int64(mid_layer)} if mid else {}
        cache.put(vid, size_bytes, path, regions=regions.astype(np.float16), frames=glob.astype(np.float16),
                  frame_ids=props.frames, size=np.asarray([width, height], np.float64),
                  roi_output=np.int64(cfg.roi_output), **extra)
    return _linked(vid, props, regions, glob, (width, height), cfg, mid[0] if mid else None)


def cached_tubes(vid: str, path: str, props: Proposals, cfg: TubeConfig, cache: RegionCache,
                 mid_layer: int = 0) -> VideoTubes | None:
    """The video's tubes from cached region features alone (no model), or None when the cache lacks them (or holds
    them for other proposals or another RoI-Align output size, or, when mid_layer > 0 asks for multi-scale, lacks
    that block's region features)."""
    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    data = cache.get(vid, size_bytes, path)
    if (data is None or data["regions"].shape[:2] != props.valid.shape or "size" not in data
            or int(data.get("roi_output", -1)) != cfg.roi_output):
        return None
    if mid_layer and ("regions_mid" not in data or int(data.get("mid_layer", -1)) != mid_layer):
        return None
    size = (float(data["size"][0]), float(data["size"][1]))
    mid = data["regions_mid"].astype(np.float32) if mid_layer else None
    return _linked(vid, props, data["regions"].astype(np.float32), data["frames"].astype(np.float32), size, cfg, mid)


def _linked(vid, props, regions, glob, size, cfg: TubeConfig, regions_mid=None) -> VideoTubes:
    tubes = link_tubes(props.frames, regions, props.boxes, props.valid, cfg.tubes, cfg.alpha, cfg.max_gap,
                       cfg.gap_discount, cfg.min_iou)
    return VideoTubes(vid, props, regions, glob, tubes, size, regions_mid)
