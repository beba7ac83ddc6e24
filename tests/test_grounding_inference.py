"""Inference (paper Sec. 3.5) on a tiny randomly initialised export: hand-worked pieces, then the commands
grounding.predict / grounding.query (drawing with grounding.visualize) end to end on real synthetic mp4s."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.inference import CropGeometry, InferenceConfig, ground_video, label_frames, peak_and_box, \
    segments_from_labels
from grounding.baselines import random_segments
from grounding.readers.groundingyoutube import read_groundingyoutube

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_segments_from_labels():
    labels = np.array([-1, 0, 0, -1, 1, 1, 1, 0])
    times = np.arange(8, dtype=float)
    assert segments_from_labels(labels, times, 1.0) == [(0, 1.0, 3.0), (1, 4.0, 7.0), (0, 7.0, 8.0)]
    assert segments_from_labels(labels, times, 1.0, min_len=2) == [(0, 1.0, 3.0), (1, 4.0, 7.0)]
    assert segments_from_labels(np.array([], dtype=int), np.array([]), 1.0) == []


def test_label_frames_threshold_marks_background():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.15]])
    labels, best = label_frames(scores, InferenceConfig(tau=0.5, normalize="none"))
    assert labels.tolist() == [0, 1, -1] and best.tolist() == [0.9, 0.8, 0.15]


def test_label_frames_query_normalisation_removes_a_description_bias():
    # description 0 scores high everywhere (a bias), description 1 peaks in frames 2-3, nothing in frame 5
    scores = np.array([[0.80, 0.10], [0.81, 0.11], [0.79, 0.40], [0.80, 0.42], [0.95, 0.12], [0.78, 0.09]])
    whole, _ = label_frames(scores, InferenceConfig(tau=-10.0, normalize="zscore"))
    assert whole.tolist() == [0, 0, 0, 0, 0, 0]
    labels, best = label_frames(scores, InferenceConfig(tau=0.5, normalize="query"))
    assert labels.tolist() == [-1, -1, 1, 1, 0, -1]
    col = (scores - scores.mean(0)) / scores.std(0)
    np.testing.assert_allclose(best, col.max(1), rtol=1e-6)
    with pytest.raises(ValueError):
        label_frames(scores, InferenceConfig(normalize="minmax"))


def test_peak_and_box_takes_the_connected_region_only():
    heat = np.zeros((6, 6))
    heat[1:3, 1:4] = 0.8
    heat[2, 2] = 1.0
    heat[5, 5] = 0.9          # above threshold but not connected to the peak
    (px, py), box = peak_and_box(heat, 0.5)
    assert (px, py) == (2.5, 2.5)
    assert box == (1.0, 1.0, 4.0, 3.0)


def test_crop_geometry_round_trip():
    g = CropGeometry(width=160, height=120, size=32)
    x, y = g.to_source(16, 16)
    assert (x, y) == pytest.approx((80, 60))          # the crop centre is the frame centre
    assert g.to_crop(*g.to_source(3.0, 29.0)) == pytest.approx((3.0, 29.0))
    assert g.to_source(0, 0) == pytest.approx((20, 0))  # 20 px cut on each side of the 160 px width


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from shards.synthetic import SyntheticConfig, generate

    out = str(tmp_path_factory.mktemp("gcorpus"))
    generate(SyntheticConfig(out=out, n_train=0, n_test=3, min_seconds=14, max_seconds=16, min_actions=1,
                             max_actions=2, seed=5).validate())
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain_fixtures import tiny_export

    return tiny_export(str(tmp_path_factory.mktemp("export")))


def test_ground_video_is_well_formed(corpus, export):
    from grounding.predict import decode
    from pretrain import load_model

    model = load_model(export)
    vid = sorted(os.listdir(os.path.join(corpus, "test", "videos")))[0][:-4]
    clip = decode(vid, os.path.join(corpus, "test", "videos", f"{vid}.mp4"), 1.0, model.image_size)
    pool = ["cut red cube", "stir blue bowl", "background"]
    preds = ground_video(model, clip.frames, clip.times, pool, clip.geometry)
    assert len(preds) == len(clip.frames) and [p.time for p in preds] == clip.times.tolist()
    fg = [p for p in preds if p.step != "background"]
    assert fg and {p.step for p in fg} <= set(pool[:2])
    w, h = clip.geometry.width, clip.geometry.height
    for p in fg:
        x1, y1, x2, y2 = p.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x1 <= p.point[0] <= x2 and y1 <= p.point[1] <= y2
        assert p.heatmap.shape == model.grid and p.heatmap.max() == pytest.approx(1.0, abs=1e-3)
    assert all(p.point is None for p in preds if p.step == "background")


def _run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_predict_then_evaluate(corpus, export, tmp_path):
    test = os.path.join(corpus, "test")
    out = str(tmp_path / "preds.json")
    report = _run("grounding.predict", "--checkpoint", export, "--videos", test, "--out", out)
    assert report["videos"] == 3 and not report["skipped"]
    preds = json.load(open(out))
    truth = read_groundingyoutube(test)
    assert set(preds) == set(truth)
    for vid, secs in preds.items():
        assert all(k.isdigit() for k in secs)
        assert {e["step"] for e in secs.values()} <= set(truth[vid].pool) | {"background"}
    metrics = _run("grounding.evaluate", "groundingyoutube", "--annotations", test, "--predictions", out)
    assert set(metrics) >= {"IoU+Point", "mAP@0.3", "pointing_game"}
    assert all(0 <= v <= 100 for v in metrics.values())
    pout = str(tmp_path / "points.json")
    _run("grounding.predict", "--checkpoint", export, "--videos", test, "--out", pout, "--pointing", test)
    points = json.load(open(pout))
    annotated = sum(len(v.boxes) for v in truth.values())
    assert sum(len(v) for v in points.values()) == annotated
    pg = _run("grounding.evaluate", "groundingyoutube", "--annotations", test, "--predictions", pout)
    assert 0 <= pg["pointing_game"] <= 100


def test_random_segment_baseline_is_well_formed(corpus):
    test = os.path.join(corpus, "test")
    truth = read_groundingyoutube(test)
    preds = random_segments(truth, seed=1)
    assert set(preds) == set(truth)
    for vid, secs in preds.items():
        w, h = truth[vid].size
        assert all(0 <= e["point"][0] <= w and 0 <= e["point"][1] <= h for e in secs.values())
        steps = {e["step"] for e in secs.values()} - {"background"}
        assert steps and steps <= set(truth[vid].pool)


def test_query_writes_pictures_and_a_movie(corpus, export, tmp_path):
    test = os.path.join(corpus, "test")
    truth = read_groundingyoutube(test)
    vid = sorted(truth)[0]
    s, e, step = truth[vid].segments[0]
    video = os.path.join(test, "videos", f"{vid}.mp4")
    png = str(tmp_path / "q.png")
    q = _run("grounding.query", "--checkpoint", export, "--video", video, "--text", step, "--picture", png)
    assert q["query"] == step and isinstance(q["segments"], list)
    for seg in q["segments"]:
        assert 0 <= seg["start"] < seg["end"]
    assert Image.open(png).size[0] > 0
    out = tmp_path / "pics"
    v = _run("grounding.query", "--checkpoint", export, "--video", video, "--text", step, "--out", str(out),
             "--truth", str(s), str(e + 1))
    im = Image.open(v["picture"])
    assert im.size[0] == 8 * 128
    assert os.path.getsize(v["movie"]) > 1000
    from shards.decode import decode_video

    dec = decode_video(v["movie"], fps=1.0, size=64)
    assert len(dec.frames) >= 10   # one picture per decoded second of the ~15 s video


def test_smoothing_changes_labels_only_at_isolated_flips():
    from grounding.inference import InferenceConfig, label_frames, smooth_scores

    # two descriptions over 9 frames: A for frames 0-3, B for 4-8, with a one-frame flip to B at frame 1
    s = np.array([[2, 0], [0, 1], [2, 0], [2, 0], [0, 2], [0, 2], [0, 2], [0, 2], [0, 2]], dtype=float)
    raw, _ = label_frames(s, InferenceConfig(normalize="none", tau=-np.inf))
    smooth, _ = label_frames(s, InferenceConfig(normalize="none", tau=-np.inf, smooth=3))
    assert raw.tolist() == [0, 1, 0, 0, 1, 1, 1, 1, 1]
    assert smooth.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # only the flip changed; the boundary stayed
    np.testing.assert_allclose(smooth_scores(s, 3)[0], [1.0, 0.5])    # the first frame averages frames 0-1
    np.testing.assert_allclose(smooth_scores(s, 3)[2], [4 / 3, 1 / 3])
    assert smooth_scores(s, 1) is s
    with pytest.raises(ValueError):
        smooth_scores(s, 2)


def test_calibrate_tau_picks_the_threshold_that_separates_background():
    from grounding.inference import InferenceConfig, calibrate_tau

    # one description; frames 0-2 are its action (high scores), 3-5 background (low), z-scored per description
    s = np.array([[3.0], [2.5], [2.8], [0.1], [0.3], [0.2]])
    truth = np.array([0, 0, 0, -1, -1, -1])
    tau, acc = calibrate_tau([s], [truth], InferenceConfig(normalize="query"))
    assert acc == 1.0
    z = (s - s.mean()) / s.std()
    assert z[3:].max() < tau <= z[:3].min()
    tau0, acc0 = calibrate_tau([s], [np.zeros(6, int)], InferenceConfig(normalize="query"))
    assert acc0 == 1.0 and tau0 <= z.min() + 1e-6  # no background at all: tau at or below every frame
