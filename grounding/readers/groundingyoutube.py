"""GroundingYouTube annotations (brian7685/GroundingYouTube, brian7685/STG), also written by the synthetic corpus
as its hidden truth (docs/contracts.md section 1).

A folder holding ground_seg.json (required), GroundingYouTubeBox.json (or the official repo's id2xy_box.json),
vid2step.json and id2wh.json; a path to one of these files, or a split folder with truth/ inside, works too.
Segments are integer seconds, inclusive at both ends (the official loader walks range(start, end + 1)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from common import fsio
from grounding.readers.common import InputError, as_box, as_int_key, as_pair, is_dir, norm_label, parent, read_json

SEGMENTS = "ground_seg.json"
BOXES = ("GroundingYouTubeBox.json", "GoundingYouTubeBox.json")  # the second: the spelling in brian7685/STG
POINT_BOXES = "id2xy_box.json"  # {vid: {second: box}} without the step, used by the official spatial evaluation


@dataclass
class GytVideo:
    vid: str
    segments: list[tuple[int, int, str]]  # (first second, last second inclusive, normalised step)
    boxes: dict[int, tuple[str, list[float]]] = field(default_factory=dict)  # second -> (step, [x1, y1, x2, y2])
    pool: list[str] = field(default_factory=list)  # vid2step.json's action pool (normalised)
    size: tuple[int, int] | None = None  # (width, height) from id2wh.json


def segment_seconds(start: float, end: float) -> range:
    """Integer seconds inside [start, end], both ends included."""
    return range(math.ceil(start), math.floor(end) + 1)


def find_annotation_dir(url: str) -> str:
    if is_dir(url):
        if fsio.exists(fsio.join(url, SEGMENTS)):
            return url
        if fsio.exists(fsio.join(url, "truth", SEGMENTS)):
            return fsio.join(url, "truth")
        raise InputError(f"{url}: no {SEGMENTS} in it (nor in truth/)")
    if not fsio.exists(url):
        raise InputError(f"annotation path not found: {url}")
    return parent(url)


def read_groundingyoutube(url: str) -> dict[str, GytVideo]:
    root = find_annotation_dir(url)
    seg_url = fsio.join(root, SEGMENTS)
    raw = read_json(seg_url, "GroundingYouTube segments")
    if not isinstance(raw, dict):
        raise InputError(f"{seg_url}: expected {{video: [{{segment, id, sentence}}]}}")
    videos: dict[str, GytVideo] = {}
    for vid, segs in raw.items():
        if not isinstance(segs, list):
            raise InputError(f"{seg_url} [{vid!r}]: expected a list of segments")
        out = []
        for i, s in enumerate(segs):
            where = f"{seg_url} [{vid!r}][{i}]"
            if not isinstance(s, dict) or "segment" not in s or "sentence" not in s:
                raise InputError(f"{where}: needs 'segment' and 'sentence'")
            a, b = as_pair(s["segment"], f"{where}.segment")
            if not 0 <= a <= b:
                raise InputError(f"{where}.segment: need 0 <= start <= end in seconds, got {s['segment']!r}")
            out.append((math.ceil(a), math.floor(b), norm_label(s["sentence"])))
        videos[vid] = GytVideo(vid, out)

    box_url = next((fsio.join(root, n) for n in BOXES if fsio.exists(fsio.join(root, n))), None)
    if box_url:
        for vid, per_sec in _mapping(read_json(box_url, "GroundingYouTube boxes"), box_url).items():
            video = _video(videos, vid, box_url)
            for k, v in _mapping(per_sec, f"{box_url} [{vid!r}]").items():
                where = f"{box_url} [{vid!r}][{k!r}]"
                if not isinstance(v, dict) or "box" not in v:
                    raise InputError(f"{where}: expected {{'box': [x1, y1, x2, y2], 'step': ...}}")
                t = _second(k, where)
                step = norm_label(v["step"]) if v.get("step") is not None else _step_at(video, t)
                video.boxes[t] = (step, as_box(v["box"], f"{where}.box"))
    elif fsio.exists(fsio.join(root, POINT_BOXES)):
        xy_url = fsio.join(root, POINT_BOXES)
        for vid, per_sec in _mapping(read_json(xy_url, "GroundingYouTube boxes"), xy_url).items():
            video = _video(videos, vid, xy_url)
            for k, v in _mapping(per_sec, f"{xy_url} [{vid!r}]").items():
                t = _second(k, f"{xy_url} [{vid!r}]")
                video.boxes[t] = (_step_at(video, t), as_box(v, f"{xy_url} [{vid!r}][{k!r}]"))

    pool_url = fsio.join(root, "vid2step.json")
    if fsio.exists(pool_url):
        for vid, steps in _mapping(read_json(pool_url, "GroundingYouTube action pool"), pool_url).items():
            if vid in videos:
                videos[vid].pool = [norm_label(s) for s in steps]
    wh_url = fsio.join(root, "id2wh.json")
    if fsio.exists(wh_url):
        for vid, wh in _mapping(read_json(wh_url, "GroundingYouTube frame sizes"), wh_url).items():
            if vid in videos:
                w, h = as_pair(wh, f"{wh_url} [{vid!r}]")
                if w < 1 or h < 1:
                    raise InputError(f"{wh_url} [{vid!r}]: frame size {wh!r} is not [width, height] in pixels")
                videos[vid].size = (int(w), int(h))
    return videos


def _second(key, where: str) -> int:
    t = as_int_key(key, where)
    if t < 0:
        raise InputError(f"{where}: negative second {key!r}")
    return t


def _mapping(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _video(videos: dict[str, GytVideo], vid: str, where: str) -> GytVideo:
    if vid not in videos:
        raise InputError(f"{where}: video {vid!r} has boxes but no segments in {SEGMENTS}")
    return videos[vid]


def _step_at(video: GytVideo, t: int) -> str | None:
    for a, b, step in video.segments:
        if a <= t <= b:
            return step
    return None
