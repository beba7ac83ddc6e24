"""A video's tubes end to end: decode at the proposals' frame rate, region features (cached), link.

Used by benchmarks/stvg.py and meant for the STVG heads: everything a tube-selection head needs per video.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from grounding.inference import CropGeometry
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


def video_tubes(model, vid: str, path: str, props: Proposals, width: int | None, height: int | None,
                cfg: TubeConfig, cache: RegionCache | None = None) -> VideoTubes:
    """Region features (from the cache when it holds this video's, else computed and cached) and the linked tubes.
    width/height: the source video's frame size (None: the decoder's)."""
    fps = props.fps
    if fps is None:
        raise ValueError(f"proposals of video {vid} carry no fps: frame indices cannot be matched to decoded frames")
    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    found = cached_tubes(vid, path, props, cfg, cache) if cache is not None else None
    if found is not None:
        return found
    from shards.decode import decode_video

    dec = decode_video(path, fps=fps, size=model.image_size)
    width, height = width or dec.width, height or dec.height
    frames = frames_for(np.stack(dec.frames), np.asarray(dec.times), fps, props.frames)
    regions, glob = region_features(model, frames, props, CropGeometry(width, height, model.image_size),
                                    cfg.roi_output, cfg.batch_frames)
    # the cache keeps float16: round fresh features the same way, so a cached run gives the same results
    regions, glob = regions.astype(np.float16).astype(np.float32), glob.astype(np.float16).astype(np.float32)
    if cache is not None:
        cache.put(vid, size_bytes, regions=regions.astype(np.float16), frames=glob.astype(np.float16),
                  frame_ids=props.frames, size=np.asarray([width, height], np.float64),
                  roi_output=np.int64(cfg.roi_output))
    return _linked(vid, props, regions, glob, (width, height), cfg)


def cached_tubes(vid: str, path: str, props: Proposals, cfg: TubeConfig, cache: RegionCache) -> VideoTubes | None:
    """The video's tubes from cached region features alone (no model), or None when the cache lacks them (or holds
    them for other proposals or another RoI-Align output size)."""
    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    data = cache.get(vid, size_bytes)
    if (data is None or data["regions"].shape[:2] != props.valid.shape or "size" not in data
            or int(data.get("roi_output", -1)) != cfg.roi_output):
        return None
    size = (float(data["size"][0]), float(data["size"][1]))
    return _linked(vid, props, data["regions"].astype(np.float32), data["frames"].astype(np.float32), size, cfg)


def _linked(vid, props, regions, glob, size, cfg: TubeConfig) -> VideoTubes:
    tubes = link_tubes(props.frames, regions, props.boxes, props.valid, cfg.tubes, cfg.alpha, cfg.max_gap,
                       cfg.gap_discount, cfg.min_iou)
    return VideoTubes(vid, props, regions, glob, tubes, size)

