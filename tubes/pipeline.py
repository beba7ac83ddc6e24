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


def video_tubes(model, vid: str, path: str, props: Proposals, width: int, height: int, cfg: TubeConfig,
                cache: RegionCache | None = None) -> VideoTubes:
    from finetune.features import decode

    fps = props.fps
    if fps is None:
        raise ValueError(f"proposals of video {vid} carry no fps: frame indices cannot be matched to decoded frames")
    size = model.image_size
    size_bytes = os.path.getsize(path) if os.path.exists(path) else 0
    data = cache.get(vid, size_bytes) if cache is not None else None
    if data is None or data["regions"].shape[:2] != props.valid.shape:
        decoded, times, _ = decode(path, fps, size)
        frames = frames_for(decoded, times, fps, props.frames)
        regions, glob = region_features(model, frames, props, CropGeometry(width, height, size), cfg.roi_output,
                                        cfg.batch_frames)
        # the cache keeps float16: round fresh features the same way, so a cached run gives the same results
        regions, glob = regions.astype(np.float16).astype(np.float32), glob.astype(np.float16).astype(np.float32)
        if cache is not None:
            cache.put(vid, size_bytes, regions=regions.astype(np.float16), frames=glob.astype(np.float16),
                      frame_ids=props.frames)
    else:
        regions, glob = data["regions"].astype(np.float32), data["frames"].astype(np.float32)
    tubes = link_tubes(props.frames, regions, props.boxes, props.valid, cfg.tubes, cfg.alpha, cfg.max_gap,
                       cfg.gap_discount, cfg.min_iou)
    return VideoTubes(vid, props, regions, glob, tubes)


def filled(tube: Tube) -> np.ndarray:
    """(F, 4) boxes of a tube on every frame: before its start its first box, after its end its last."""
    return tube.filled().boxes
