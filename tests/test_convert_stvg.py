"""python -m grounding.convert on files in the released layouts (tests/stvg_release_fixtures.py): VidSTG + VidOR
for real VidSTG test video ids, HC-STVG v1 and v2; missing videos and annotation files refused or counted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared_path
from grounding.readers.stvg import read_hcstvg, read_vidstg
from stvg_release_fixtures import hcstvg_release, object_box, vidstg_release


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grounding.convert", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def vidstg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vidstg_release"))
    return vidstg_release(root, str(shared_path("benchmarks", "vidstg", "test_annotations.json")))


def _vidstg_args(rel, out, *extra):
    return ("vidstg", "--annotations", rel["annotations"], "--vidor", rel["vidor"], "--videos", rel["videos"],
            "--out", out, *extra)


def test_vidstg_keeps_every_query_span_type_and_trajectory(vidstg, tmp_path):
    r = convert(*_vidstg_args(vidstg, str(tmp_path)))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    out = tmp_path / "test.json"
    data = json.loads(out.read_text())
    items = vidstg["items"]
    n = sum(len(a["questions"]) + len(a["captions"]) for a in items)
    assert summary["files"]["test"]["queries"] == len(data["videos"]) == n >= 24
    assert summary["files"]["test"]["interrogative"] > 0 and summary["files"]["test"]["declarative"] > 0
    assert summary["missing_videos"] == [] and summary["dropped_queries"] == 0
    raw, conv = read_vidstg(vidstg["annotations"]), read_vidstg(str(out))
    assert [(q.key, q.video, q.sentence, q.qtype, q.span, q.tube, q.frames) for q in raw] == \
        [(q.key, q.video, q.sentence, q.qtype, q.span, q.tube, q.frames) for q in conv]
    by_key = {v["video_id"]: v for v in data["videos"]}
    for q in conv:
        v = by_key[int(q.key)]
        assert os.path.isfile(os.path.join(vidstg["videos"], v["video_path"]))
        assert q.video_path == v["video_path"]
        traj = data["trajectories"][q.video][str(v["target_id"])]
        width, height = v["width"], v["height"]
        for f in (q.tube[0], q.tube[1] - 1):
            x1, y1, x2, y2 = object_box(v["target_id"], f, width, height)
            assert traj[str(f)]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])  # TubeDETR's {"bbox": xywh}
            assert np.allclose(q.boxes[f], [x1, y1, x2, y2])


def test_vidstg_converted_split_scores_boxes(vidstg, tmp_path):
    """The converted file carries the boxes: the truth's own tubes score m_vIoU 100 through grounding.evaluate."""
    assert convert(*_vidstg_args(vidstg, str(tmp_path))).returncode == 0
    qs = read_vidstg(str(tmp_path / "test.json"))
    pred = {q.key: {"sted": list(q.tube), "boxes": {str(f): q.boxes[f].tolist() for f in range(*q.tube)}}
            for q in qs}
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    r = subprocess.run([sys.executable, "-m", "grounding.evaluate", "vidstg", "--annotations",
                        str(tmp_path / "test.json"), "--predictions", str(tmp_path / "pred.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["m_vIoU"] == pytest.approx(100.0) and m["m_tIoU"] == pytest.approx(100.0)


def test_vidstg_missing_video_refused_or_counted(vidstg, tmp_path):
    rel = dict(vidstg)
    videos = tmp_path / "video"
    subprocess.run(["cp", "-r", vidstg["videos"], str(videos)], check=True)
    gone = vidstg["items"][-1]["vid"]
    next(p for p in videos.rglob(f"{gone}.mp4")).unlink()
    rel["videos"] = str(videos)
    r = convert(*_vidstg_args(rel, str(tmp_path / "out")))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    assert f"video {gone} not found" in r.stderr
    assert not (tmp_path / "out" / "test.json").exists()
    r = convert(*_vidstg_args(rel, str(tmp_path / "out"), "--allow-missing"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    dropped = sum(len(a["questions"]) + len(a["captions"]) for a in vidstg["items"] if a["vid"] == gone)
    assert summary["missing_videos"] == [gone] and summary["dropped_queries"] == dropped
    assert "queries left out" in r.stderr
    kept = read_vidstg(str(tmp_path / "out" / "test.json"))
    full = {q.key: q.sentence for q in read_vidstg(vidstg["annotations"])}
    assert len(kept) == len(full) - dropped and all(full[q.key] == q.sentence for q in kept)  # keys as released
    assert gone not in {q.video for q in kept}


def test_vidstg_missing_vidor_annotation_refused_and_output_kept(vidstg, tmp_path):
    vidor = tmp_path / "annotation"
    subprocess.run(["cp", "-r", vidstg["vidor"], str(vidor)], check=True)
    gone = vidstg["items"][0]["vid"]
    next(p for p in vidor.rglob(f"{gone}.json")).unlink()
    rel = dict(vidstg, vidor=str(vidor))
    r = convert(*_vidstg_args(rel, str(tmp_path / "out")))
    assert r.returncode == 2 and f"no annotation file for video {gone}" in r.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test.json").write_text("kept")
    r = convert(*_vidstg_args(vidstg, str(tmp_path / "out")))
    assert r.returncode == 2 and "exists" in r.stderr and (tmp_path / "out" / "test.json").read_text() == "kept"


@pytest.mark.parametrize("version", [1, 2])
def test_hcstvg_release(tmp_path, version):
    rel = hcstvg_release(str(tmp_path), version)
    r = convert("hcstvg", "--annotations", rel["annotations"], "--videos", rel["videos"], "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "o" / "anno_proc.json").read_text())
    assert [d["original_video_id"] for d in data] == list(rel["paths"])
    for d in data:
        assert os.path.samefile(os.path.join(rel["videos"], d["video_path"]), rel["paths"][d["original_video_id"]])
        assert (d["width"], d["height"]) == (96, 64)
    raw = {q.key: q for q in read_hcstvg(rel["annotations"])}
    for q in read_hcstvg(str(tmp_path / "o" / "anno_proc.json")):
        r0 = raw[q.video]
        assert (q.sentence, q.span, q.tube, q.frames, q.video_fps) == (r0.sentence, r0.span, r0.tube, r0.frames,
                                                                      r0.video_fps)
        assert np.allclose(q.boxes.boxes, r0.boxes.boxes, equal_nan=True) and q.video_path
    gone = next(iter(rel["paths"]))
    os.unlink(rel["paths"][gone])
    r = convert("hcstvg", "--annotations", rel["annotations"], "--videos", rel["videos"], "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and f"video {gone} not found" in r.stderr
    r = convert("hcstvg", "--annotations", rel["annotations"], "--videos", rel["videos"], "--out", str(tmp_path / "p"),
                "--allow-missing")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["missing_videos"] == [gone]
