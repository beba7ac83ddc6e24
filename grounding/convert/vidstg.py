"""VidSTG (Guaranteer/VidSTG-Dataset `*_annotations.json`) + VidOR (per-video annotation JSONs in nested folders,
`<split>/<group>/<video id>.json`, and videos `<group>/<video id>.mp4`) -> TubeDETR's preprocessed `<split>.json`.

Per VidSTG item, every query is kept, questions (interrogative) before captions (declarative), numbered in file
order over the whole file (`video_id`, TubeDETR's key; a query left out with --allow-missing keeps the numbers of
the others as they are in the release). Each query carries the item's `used_segment` (`start_frame`/`end_frame`),
its `temporal_gt` (`tube_start_frame`/`tube_end_frame`, half-open), `qtype`, the object `type`, `target_id`, and
VidOR's `video_path` (relative to the video folder). `trajectories[vid][target_id][frame] = {"bbox": [x, y, w, h],
"generated", "tracker"}` for every target, from VidOR's per-frame `{xmin, ymin, xmax, ymax}` boxes.
"""
from __future__ import annotations

import math

from common import fsio
from grounding.convert.common import VIDEO_SUFFIXES, Missing, index_files
from grounding.readers.common import InputError, read_json


def split_name(url: str) -> str:
    """`test_annotations.json` -> `test` (TubeDETR names its files by split)."""
    stem = url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem[:-len("_annotations")] if stem.endswith("_annotations") else stem


def _vidor_trajectories(ann: dict, tids: set, where: str) -> dict[str, dict[str, dict]]:
    """{str(tid): {str(frame): {"bbox": [x, y, w, h], "generated", "tracker"}}} for the wanted tids."""
    traj = ann.get("trajectories")
    if not isinstance(traj, list):
        raise InputError(f"{where}: 'trajectories' must be VidOR's list of per-frame box lists")
    out: dict[str, dict[str, dict]] = {str(t): {} for t in tids}
    for f, boxes in enumerate(traj):
        for b in boxes or ():
            try:
                tid, bb = b["tid"], b["bbox"]
                x1, y1, x2, y2 = (float(bb[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{where} frame {f}: bad box entry {str(b)[:80]} ({e})") from None
            if tid not in tids:
                continue
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
                raise InputError(f"{where} frame {f} tid {tid}: box {bb} is not finite or has xmax < xmin or ymax < ymin")
            out[str(tid)][str(f)] = {"bbox": [x1, y1, x2 - x1, y2 - y1], "generated": b.get("generated", 0),
                                     "tracker": b.get("tracker", "")}
    return out


def _check_same(item: dict, ann: dict, vid: str, where: str) -> None:
    """VidSTG repeats VidOR's frame count, fps and size; a disagreement means the wrong VidOR release."""
    for key in ("frame_count", "width", "height"):
        if key in item and key in ann and int(item[key]) != int(ann[key]):
            raise InputError(f"{where}: {key} {item[key]} in VidSTG but {ann[key]} in VidOR's annotation of {vid}")
    if "fps" in item and "fps" in ann and not math.isclose(float(item["fps"]), float(ann["fps"]), rel_tol=1e-6):
        raise InputError(f"{where}: fps {item['fps']} in VidSTG but {ann['fps']} in VidOR's annotation of {vid}")


def convert_vidstg(annotations: str, vidor_index: dict[str, str], vidor_root: str, video_index: dict[str, str],
                   missing: Missing) -> dict:
    """One VidSTG annotation file -> TubeDETR's {"videos": [...], "trajectories": {...}}."""
    items = read_json(annotations, "VidSTG annotation")
    if not isinstance(items, list):
        raise InputError(f"{annotations}: expected VidSTG's list of items (Guaranteer/VidSTG-Dataset)")
    videos, trajectories, n = [], {}, 0
    for i, item in enumerate(items):
        where = f"{annotations} item {i}"
        try:
            vid = str(item["vid"])
            groups = (("interrogative", list(item["questions"])), ("declarative", list(item["captions"])))
            base = {"original_video_id": vid, "frame_count": int(item["frame_count"]), "fps": float(item["fps"]),
                    "width": int(item["width"]), "height": int(item["height"]),
                    "start_frame": int(item["used_segment"]["begin_fid"]),
                    "end_frame": int(item["used_segment"]["end_fid"]),
                    "tube_start_frame": int(item["temporal_gt"]["begin_fid"]),
                    "tube_end_frame": int(item["temporal_gt"]["end_fid"])}
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: missing or bad field {e}") from None
        where = f"{where} ({vid})"
        count = sum(len(q) for _, q in groups)
        first, n = n, n + count
        if vid not in vidor_index:
            missing.annotation(vid, where, count)
            continue
        ann = read_json(fsio.join(vidor_root, vidor_index[vid]), "VidOR annotation")
        video_path = str(ann.get("video_path") or "")
        if not video_path:
            raise InputError(f"{where}: VidOR's annotation of {vid} has no video_path")
        if vid not in video_index:
            missing.video(vid, f"{where} (VidOR video_path {video_path})", count)
            continue
        _check_same(item, ann, vid, where)
        base["video_path"] = video_index[vid]
        tids, k = set(), first
        for qtype, queries in groups:
            for q in queries:
                try:
                    tid = int(q["target_id"])
                    videos.append({**base, "caption": str(q["description"]), "type": str(q.get("type", "")),
                                   "target_id": tid, "video_id": k, "qtype": qtype})
                except (KeyError, TypeError, ValueError) as e:
                    raise InputError(f"{where} {qtype} query: missing or bad field {e}") from None
                tids.add(tid)
                k += 1
        per_video = _vidor_trajectories(ann, tids, f"{vidor_index[vid]}")
        for tid, boxes in per_video.items():
            frames = sorted(int(f) for f in boxes)
            t0, t1 = base["tube_start_frame"], base["tube_end_frame"]
            # the target is boxed over the whole ground-truth tube (VidSTG's temporal_gt lies inside its trajectory)
            if not frames or t0 < frames[0] or t1 - 1 > frames[-1]:
                raise InputError(f"{where}: target {tid}'s VidOR trajectory "
                                 f"{'is empty' if not frames else f'covers frames {frames[0]}..{frames[-1]}'}, "
                                 f"not the ground-truth tube [{t0}, {t1})")
        trajectories.setdefault(vid, {}).update(per_video)
    return {"videos": videos, "trajectories": trajectories}


def run(annotations: list[str], vidor: str, videos: str, missing: Missing) -> dict[str, dict]:
    """{split: TubeDETR's file} for each VidSTG annotation file."""
    for a in annotations:  # before walking the (large) VidOR folders
        if not fsio.exists(a):
            raise InputError(f"VidSTG annotation file not found: {a}")
    vidor_index = index_files(vidor, (".json",), "VidOR annotation")
    video_index = index_files(videos, VIDEO_SUFFIXES, "VidOR video")
    return {split_name(a): convert_vidstg(a, vidor_index, vidor, video_index, missing) for a in annotations}
