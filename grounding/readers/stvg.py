"""VidSTG and HC-STVG annotations, raw or as TubeDETR's preprocessed files.

Query keys follow TubeDETR's preprocessing: VidSTG numbers queries in file order, each item's questions
(interrogative) before its captions (declarative); HC-STVG keys are the video name without ".mp4" (TubeDETR's
*_proc.json files keep their own `video_id`). Boxes become a grounding.tube.Tube ({frame: [x1, y1, x2, y2]}) inside the ground-truth tube.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from grounding.readers.common import InputError, as_box, read_json
from grounding.tube import Tube

HCSTVG_SECONDS = 20  # TubeDETR: HC-STVG clips are 20 s, fps = frame count / 20


@dataclass
class StvgQuery:
    key: str
    video: str
    sentence: str
    qtype: str | None  # VidSTG: "declarative" / "interrogative"; HC-STVG: None
    video_fps: float
    span: tuple[int, int]  # frames [start, end) the evaluator samples from
    tube: tuple[int, int]  # ground-truth tube, half-open
    boxes: Tube | None = field(default=None, repr=False)  # the truth tube's boxes; None: none in the annotation
    frames: int | None = None  # frames in the video, where the annotation says; predictions must lie inside
    video_path: str | None = None  # TubeDETR's video_path (relative to the video folder), where the file has one

    def check(self, where: str) -> "StvgQuery":
        """Refuse what no video can hold: fps <= 0, a span or tube with end <= start or negative, one past the
        video's frames. (VidSTG's temporal_gt.end_fid may be used_segment.end_fid + 1; TubeDETR keeps it.)"""
        (s0, s1), (t0, t1) = self.span, self.tube
        if not (np.isfinite(self.video_fps) and self.video_fps > 0):
            raise InputError(f"{where}: fps must be a positive number, got {self.video_fps!r}")
        if not 0 <= s0 < s1:
            raise InputError(f"{where}: frame span [{s0}, {s1}) must have 0 <= start < end")
        if not 0 <= t0 < t1:
            raise InputError(f"{where}: ground-truth tube [{t0}, {t1}) must have 0 <= start < end")
        if self.frames is not None and max(s1, t1) > self.frames + 1:
            raise InputError(f"{where}: frames [{min(s0, t0)}, {max(s1, t1)}) lie past the video's "
                             f"{self.frames} frames")
        return self


def xywh(entry, where: str) -> list[float]:
    """A trajectory entry as [x, y, w, h]: TubeDETR's `{"bbox": [x, y, w, h], ...}` or a bare `[x, y, w, h]` list
    (accepted for files written by hand or by earlier versions of the synthetic corpus)."""
    b = entry.get("bbox") if isinstance(entry, dict) else entry
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        raise InputError(f"{where}: bbox must be [x, y, w, h] or {{\"bbox\": [x, y, w, h]}}, got {entry!r:.80}")
    return as_box(b, where)


def _xywh_tube(traj, tube: tuple[int, int], where: str) -> Tube:
    """VidOR/TubeDETR trajectory {frame: [x, y, w, h] or {"bbox": [...]}} -> xyxy boxes inside the tube."""
    if not isinstance(traj, dict):
        raise InputError(f"{where}: trajectory must map frame -> box, got {type(traj).__name__}")
    out = {}
    for k, v in traj.items():
        f = int(k)
        if not tube[0] <= f < tube[1]:
            continue
        x, y, w, h = xywh(v, f"{where} frame {k}")
        if w < 0 or h < 0:
            raise InputError(f"{where} frame {k}: bbox [x, y, w, h] has a negative width or height: {v!r}")
        out[f] = np.array([x, y, x + w, y + h])
    return Tube.from_boxes(out, tube)


def _load_trajectories(url: str) -> dict:
    data = read_json(url, "VidSTG boxes")
    if isinstance(data, dict) and "trajectories" in data:
        data = data["trajectories"]
    if not isinstance(data, dict):
        raise InputError(f"{url}: expected {{video: {{target_id: {{frame: [x, y, w, h]}}}}}} or TubeDETR's test.json")
    return data


def read_vidstg(url: str, boxes_url: str | None = None) -> list[StvgQuery]:
    """Raw VidSTG (Guaranteer/VidSTG-Dataset *_annotations.json, no boxes) or TubeDETR's preprocessed test.json.

    boxes_url: trajectories ({video: {target_id: {frame: [x, y, w, h]}}}, as in TubeDETR's test.json) for raw
    annotations; without them only the temporal metrics can be computed.
    """
    data = read_json(url, "VidSTG annotation")
    trajectories = _load_trajectories(boxes_url) if boxes_url else None
    if isinstance(data, dict) and "videos" in data:  # TubeDETR's preprocessed file carries its own boxes
        trajectories = trajectories or data.get("trajectories")
        out = []
        for i, v in enumerate(data["videos"]):
            try:
                q = StvgQuery(str(v["video_id"]), str(v["original_video_id"]), v.get("caption", ""), v.get("qtype"),
                              float(v["fps"]), (int(v["start_frame"]), int(v["end_frame"])),
                              (int(v["tube_start_frame"]), int(v["tube_end_frame"])),
                              frames=int(v["frame_count"]) if v.get("frame_count") is not None else None,
                              video_path=str(v["video_path"]) if v.get("video_path") else None)
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{url} videos[{i}]: missing or bad field {e}") from None
            q.check(f"{url} videos[{i}]")
            if trajectories is not None:
                q.boxes = _boxes_for(trajectories, q.video, v.get("target_id"), q.tube, f"{url} videos[{i}]")
            out.append(q)
        return out
    if not isinstance(data, list):
        raise InputError(f"{url}: expected VidSTG's list of items or TubeDETR's {{'videos': ...}}")
    out = []
    for i, a in enumerate(data):
        where = f"{url} item {i}"
        try:
            vid = str(a["vid"])
            fps = float(a["fps"])
            span = (int(a["used_segment"]["begin_fid"]), int(a["used_segment"]["end_fid"]))
            tube = (int(a["temporal_gt"]["begin_fid"]), int(a["temporal_gt"]["end_fid"]))
            groups = (("interrogative", a["questions"]), ("declarative", a["captions"]))
            frames = int(a["frame_count"]) if a.get("frame_count") is not None else None
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: missing or bad field {e}") from None
        for qtype, sentences in groups:
            for s in sentences:
                q = StvgQuery(str(len(out)), vid, str(s.get("description", "")), qtype, fps, span, tube,
                              frames=frames).check(f"{where} ({vid})")
                if trajectories is not None:
                    q.boxes = _boxes_for(trajectories, vid, s.get("target_id"), tube, f"{where} ({vid})")
                out.append(q)
    return out


def _boxes_for(trajectories: dict, vid: str, target_id, tube, where: str) -> Tube:
    per_video = trajectories.get(vid)
    if per_video is None or str(target_id) not in per_video:
        raise InputError(f"{where}: the boxes file has no trajectory for video {vid} target {target_id}")
    return _xywh_tube(per_video[str(target_id)], tube, f"{where} target {target_id}")


def read_hcstvg(url: str) -> list[StvgQuery]:
    """HC-STVG v1/v2 ({"vid.mp4": {"bbox": [[x, y, w, h]...], "st_frame", "img_num", "caption"|"English", ...}})
    or TubeDETR's *_proc.json list."""
    data = read_json(url, "HC-STVG annotation")
    out = []
    if isinstance(data, list):
        for i, v in enumerate(data):
            try:
                key, video, caption = str(v["video_id"]), str(v["original_video_id"]), v.get("caption", "")
                count, st, traj = int(v["frame_count"]), int(v["tube_start_frame"]), v["trajectory"]
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{url}[{i}]: missing or bad field {e}") from None
            q = _hcstvg_query(key, video, caption, count, st, traj, f"{url}[{i}]")
            q.video_path = str(v["video_path"]) if v.get("video_path") else None
            out.append(q)
        return out
    if not isinstance(data, dict):
        raise InputError(f"{url}: expected HC-STVG's {{video: annotation}} mapping or a TubeDETR *_proc.json list")
    for name, a in data.items():
        where = f"{url} [{name!r}]"
        try:
            count, st, traj = int(a["img_num"]), int(a["st_frame"]), a["bbox"]
            caption = a.get("caption", a.get("English", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: missing or bad field {e}") from None
        video = name[:-4] if name.endswith(".mp4") else name
        out.append(_hcstvg_query(video, video, caption, count, st, traj, where))
    return out


def _hcstvg_query(key, video, caption, count, st, traj, where) -> StvgQuery:
    if not isinstance(traj, list) or not traj:
        raise InputError(f"{where}: 'bbox' must be a non-empty list of [x, y, w, h]")
    if count < 2 or st < 0:
        raise InputError(f"{where}: need img_num >= 2 and st_frame >= 0, got {count} and {st}")
    tube = (st, st + len(traj))  # st_frame is 1-based in the files; TubeDETR keeps it as is
    boxes = _xywh_tube({st + i: b for i, b in enumerate(traj)}, tube, where)
    # TubeDETR samples frames 0 .. img_num - 2 (range(0, img_num - 1)) at fps = img_num / 20
    return StvgQuery(key, video, str(caption), None, count / HCSTVG_SECONDS, (0, count - 1), tube, boxes,
                     frames=count).check(where)
