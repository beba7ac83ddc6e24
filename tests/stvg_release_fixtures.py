"""STVG datasets in their released layouts, made small: VidSTG items for real video ids of
../shared/benchmarks/vidstg/test_annotations.json with VidOR-layout annotation files and videos rendered at those
videos' frame counts, fps and sizes; HC-STVG v1/v2 annotation files with their videos (v1 in sub-folders, v2 flat)."""
from __future__ import annotations

import json
import os
import subprocess
from fractions import Fraction

from shards.decode import ffmpeg_exe


def render(path: str, frames: int, fps: float, width: int, height: int) -> str:
    """An mp4 of exactly `frames` frames at `fps` (a rational rate, 29.97 = 30000/1001, as camera files have)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={width}x{height}:rate={rate.numerator}/{rate.denominator}", "-frames:v",
                    str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", path], check=True)
    return path


def group_of(vid: str) -> str:
    return f"{int(vid) % 7:04d}"  # VidOR's four-digit folders


def object_box(tid: int, frame: int, width: int, height: int) -> list[float]:
    """[xmin, ymin, xmax, ymax] of object tid at a frame: boxes drift so trajectories differ per frame."""
    w, h = width / 4, height / 4
    x = (tid * width / 5 + frame * 0.5) % (width - w)
    y = (tid * height / 7) % (height - h)
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]


def vidstg_release(root: str, real_annotations: str, items: int = 15) -> dict:
    """`root/vidstg/test_annotations.json` (the `items` shortest real items, unchanged), VidOR's
    `root/vidor/annotation/validation/<group>/<vid>.json` (every object boxed in every frame) and videos
    `root/vidor/video/<group>/<vid>.mp4`. Returns the paths and the items."""
    data = json.load(open(real_annotations))
    chosen = sorted(data, key=lambda a: (a["frame_count"], a["vid"]))[:items]
    os.makedirs(os.path.join(root, "vidstg"), exist_ok=True)
    ann = os.path.join(root, "vidstg", "test_annotations.json")
    json.dump(chosen, open(ann, "w"))
    vidor, videos = os.path.join(root, "vidor", "annotation"), os.path.join(root, "vidor", "video")
    for a in {a["vid"]: a for a in chosen}.values():
        vid, g = a["vid"], group_of(a["vid"])
        tids = sorted({o["tid"] for o in a["subject/objects"]})
        per_frame = [[{"tid": t, "bbox": dict(zip(("xmin", "ymin", "xmax", "ymax"),
                                                   object_box(t, f, a["width"], a["height"]))),
                       "generated": 0, "tracker": "none"} for t in tids] for f in range(a["frame_count"])]
        doc = {"version": "VERSION 1.0", "video_id": vid, "video_hash": "0", "video_path": f"{g}/{vid}.mp4",
               "frame_count": a["frame_count"], "fps": a["fps"], "width": a["width"], "height": a["height"],
               "subject/objects": a["subject/objects"], "trajectories": per_frame, "relation_instances": []}
        os.makedirs(os.path.join(vidor, "validation", g), exist_ok=True)
        json.dump(doc, open(os.path.join(vidor, "validation", g, f"{vid}.json"), "w"))
        render(os.path.join(videos, g, f"{vid}.mp4"), a["frame_count"], a["fps"], a["width"], a["height"])
    return {"annotations": ann, "vidor": vidor, "videos": videos, "items": chosen}


def hcstvg_release(root: str, version: int, n: int = 3) -> dict:
    """HC-STVG v1 (`caption`, `width`, `height`; videos in sub-folders) or v2 (`English`, `img_size` = [h, w]; flat)
    annotation `root/hcstvg_v{version}/anno.json` for n videos of 20 s (img_num frames, fps = img_num / 20)."""
    base = os.path.join(root, f"hcstvg_v{version}")
    ann, out = {}, {}
    for i in range(n):
        name = f"{i + 1}_clip{version}{i:02d}.mp4"
        img_num, width, height = 40 + 20 * i, 96, 64
        st, length = 5 + i, 12 + 4 * i
        boxes = [[10 + k, 8 + i, 30, 24] for k in range(length)]
        entry = {"bbox": boxes, "st_frame": st, "st_time": st * 20 / img_num, "ed_time": (st + length) * 20 / img_num,
                 "img_num": img_num}
        if version == 1:
            entry.update(caption=f"the man in red {i} walks to the door", width=width, height=height)
            path = os.path.join(base, "video", f"{i % 2}", name)
        else:
            entry.update(English=f"the woman in blue {i} sits down", img_size=[height, width])
            path = os.path.join(base, "video", name)
        ann[name] = entry
        out[name[:-4]] = render(path, img_num, img_num / 20, width, height)
    path = os.path.join(base, "anno.json")
    json.dump(ann, open(path, "w"))
    return {"annotations": path, "videos": os.path.join(base, "video"), "annotation": ann, "paths": out}
