"""Detections from real detectors: `python -m tubes.frames` (native rate or a stride, named by native frame id),
`python -m tubes.from_coco` (COCO-style results -> the detections file) and the check of a detections file against
its videos (`python -m tubes --videos`): a frame beyond the video, a box outside the frame, the wrong fps."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from shards.decode import ffmpeg_exe
from stvg_release_fixtures import render
from tubes.proposals import read_detections

VIDEOS = {"4012513985": (31, 30000 / 1001, 64, 48), "clip_b": (20, 10.0, 80, 60)}  # frames, fps, width, height


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("detections")
    for i, (vid, (n, fps, w, h)) in enumerate(VIDEOS.items()):
        render(str(root / "video" / f"{i:04d}" / f"{vid}.mp4"), n, fps, w, h)  # nested, as VidOR ships them
    out = {}
    for stride in (1, 3):
        r = cli("tubes.frames", "--videos", str(root / "video"), "--out", str(root / f"frames{stride}"),
                "--stride", str(stride))
        assert r.returncode == 0, r.stderr
        out[stride] = root / f"frames{stride}"
    return root, out


def _raw_frames(path: str, w: int, h: int) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w).astype(np.float32)


def test_frames_named_by_native_index_at_a_stride(extracted):
    root, out = extracted
    index = json.loads((out[3] / "images.json").read_text())
    for vid, (n, fps, w, h) in VIDEOS.items():
        info = index["videos"][vid]
        assert (info["frames"], info["width"], info["height"], info["stride"]) == (n, w, h, 3)
        assert info["fps"] == pytest.approx(fps, abs=0.006)
        names = sorted(os.listdir(out[3] / vid))
        assert names == [f"{f:06d}.jpg" for f in range(0, n, 3)] and len(names) == math.ceil(n / 3)
        assert len(os.listdir(out[1] / vid)) == n
        raw = _raw_frames(info["path"], w, h)
        assert len(raw) == n
        for name in names:  # each file is the native frame its name says: the closest of all decoded frames
            f = int(name[:-4])
            img = np.asarray(Image.open(out[3] / vid / name).convert("L"), np.float32)
            assert (out[3] / vid / name).read_bytes() == (out[1] / vid / name).read_bytes()
            err = np.abs(raw - img).mean((1, 2))
            assert err[f] == err.min() and err[f] < 3
    ids = [img["id"] for img in index["images"]]
    assert ids == list(range(len(ids))) and all(
        img["file_name"] == f"{img['video']}/{img['frame']:06d}.jpg" for img in index["images"])


def _results(index: dict, outside: bool = False) -> list[dict]:
    """Two detections per image (one given by file name), plus one a detector clipped to nothing."""
    out = []
    for img in index["images"]:
        w, h, f = img["width"], img["height"], img["frame"]
        out.append({"image_id": img["id"], "category_id": 1, "bbox": [2 + f % 5, 3, w / 3, h / 3], "score": 0.9})
        out.append({"image_id": img["file_name"], "category_id": 3, "bbox": [w / 2, h / 2, w / 4, h / 5],
                    "score": 0.4})
    out.append({"image_id": 0, "category_id": 1, "bbox": [5, 5, 0, 4], "score": 0.8})
    if outside:
        last = index["images"][-1]
        out.append({"image_id": last["id"], "category_id": 1, "bbox": [10, 10, last["width"], 5], "score": 0.7})
    return out


def test_coco_results_to_detections_at_a_stride(extracted, tmp_path):
    root, out = extracted
    index = json.loads((out[3] / "images.json").read_text())
    (tmp_path / "r.json").write_text(json.dumps(_results(index)))
    r = cli("tubes.from_coco", "--results", str(tmp_path / "r.json"), "--frames", str(out[3]), "--out",
            str(tmp_path / "det.json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["empty_box"] == 1 and summary["kept"] == 2 * len(index["images"])
    dets = read_detections(str(tmp_path / "det.json"))
    for img in index["images"]:
        p = dets[img["video"]]
        i = int(np.flatnonzero(p.frames == img["frame"])[0])
        w, h, f = img["width"], img["height"], img["frame"]
        assert np.allclose(p.boxes[i, 0], [2 + f % 5, 3, 2 + f % 5 + w / 3, 3 + h / 3], atol=0.01)
        assert p.scores[i].tolist() == pytest.approx([0.9, 0.4])
    for vid, (n, fps, _, _) in VIDEOS.items():
        assert dets[vid].frames.tolist() == list(range(0, n, 3)) and dets[vid].fps == pytest.approx(fps, abs=0.006)
    r = cli("tubes", "--detections", str(tmp_path / "det.json"), "--videos", str(root / "video"), "--out",
            str(tmp_path / "tubes.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["videos"] == len(VIDEOS)
    # a box a detector put outside the frame: one error line naming the video and frame
    (tmp_path / "bad.json").write_text(json.dumps(_results(index, outside=True)))
    r = cli("tubes.from_coco", "--results", str(tmp_path / "bad.json"), "--frames", str(out[3]), "--out",
            str(tmp_path / "bad_det.json"))
    last = index["images"][-1]
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"video {last['video']} frame {last['frame']}" in r.stderr and "outside" in r.stderr
    assert not (tmp_path / "bad_det.json").exists()


@pytest.mark.parametrize("fault", ["frame_beyond", "box_outside", "wrong_fps"])
def test_detections_checked_against_the_video(extracted, tmp_path, fault):
    root, _ = extracted
    vid, (n, fps, w, h) = next(iter(VIDEOS.items()))
    frames = {str(f): {"boxes": [[1, 1, 20, 20]], "scores": [0.5]} for f in range(0, n, 2)}
    file_fps = fps
    if fault == "frame_beyond":
        frames[str(n)] = {"boxes": [[1, 1, 20, 20]], "scores": [0.5]}
    elif fault == "box_outside":
        frames["4"] = {"boxes": [[1, 1, w + 9, 20]], "scores": [0.5]}
    else:
        file_fps = 5.0  # ids counted at a 5 fps sampling instead of native frames
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"format": "stground-detections/1", "videos": {vid: {"fps": file_fps,
                                                                                    "frames": frames}}}))
    r = cli("tubes", "--detections", str(path), "--videos", str(root / "video"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    assert f"video {vid}" in r.stderr
    expect = {"frame_beyond": f"frame {n}]: past the video's last frame", "box_outside": "frame 4]: box",
              "wrong_fps": "is not the video's native rate"}[fault]
    assert expect in r.stderr
