"""HC-STVG v1 (`{"vid.mp4": {"bbox", "st_frame", "st_time", "ed_time", "img_num", "caption", "width", "height"}}`)
and v2 (`English` for `caption`, `img_size` = [height, width] for the size) -> TubeDETR's `<name>_proc.json`.

One query per video, numbered in file order (`video_id`; a video left out with --allow-missing keeps the numbers
of the others). `tube_start_frame` = `st_frame` (1-based in the release, kept as is, as TubeDETR does),
`tube_end_frame` = `st_frame + len(bbox)` (excluded), `trajectory` = the release's `[x, y, w, h]` boxes,
`video_path` relative to the video folder (v1 ships videos in sub-folders, v2 flat: both are found).
"""
from __future__ import annotations

from common import fsio
from grounding.convert.common import VIDEO_SUFFIXES, Missing, index_files
from grounding.readers.common import InputError, read_json


def _size(a: dict, where: str) -> tuple[int, int]:
    """(width, height): v1 `width`/`height`, v2 `img_size` [height, width]."""
    try:
        if "img_size" in a:
            h, w = a["img_size"]
            return int(w), int(h)
        return int(a["width"]), int(a["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: need width/height (v1) or img_size [height, width] (v2): {e}") from None


def convert_hcstvg(annotations: str, video_index: dict[str, str], missing: Missing) -> list[dict]:
    data = read_json(annotations, "HC-STVG annotation")
    if not isinstance(data, dict):
        raise InputError(f"{annotations}: expected HC-STVG's {{\"<video>.mp4\": {{...}}}} mapping")
    out = []
    for i, (name, a) in enumerate(data.items()):
        where = f"{annotations} [{name!r}]"
        vid = name.rsplit(".", 1)[0] if name.lower().endswith(VIDEO_SUFFIXES) else name
        if not isinstance(a, dict):
            raise InputError(f"{where}: expected an object")
        try:
            caption = a["caption"] if "caption" in a else a["English"]
            traj, st, count = a["bbox"], int(a["st_frame"]), int(a["img_num"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: missing or bad field {e} (v1: caption, v2: English)") from None
        if not isinstance(traj, list) or not traj or not all(isinstance(b, list) and len(b) == 4 for b in traj):
            raise InputError(f"{where}: 'bbox' must be a non-empty list of [x, y, w, h]")
        width, height = _size(a, where)
        if st + len(traj) > count + 1:
            raise InputError(f"{where}: st_frame {st} + {len(traj)} boxes runs past img_num {count}")
        if vid not in video_index:
            missing.video(vid, where, 1)
            continue
        out.append({"original_video_id": vid, "frame_count": count, "width": width, "height": height,
                    "tube_start_frame": st, "tube_end_frame": st + len(traj),
                    "tube_start_time": a.get("st_time"), "tube_end_time": a.get("ed_time"),
                    "video_path": video_index[vid], "caption": str(caption), "video_id": i, "trajectory": traj})
    return out


def proc_name(url: str) -> str:
    """`test.json` -> `test_proc` (TubeDETR's name)."""
    return url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] + "_proc"


def run(annotations: list[str], videos: str, missing: Missing) -> dict[str, list]:
    for a in annotations:
        if not fsio.exists(a):
            raise InputError(f"HC-STVG annotation file not found: {a}")
    video_index = index_files(videos, VIDEO_SUFFIXES, "HC-STVG video")
    return {proc_name(a): convert_hcstvg(a, video_index, missing) for a in annotations}
