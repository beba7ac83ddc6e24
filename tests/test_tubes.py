"""tubes/: linking on hand-made cases, RoI-Align features against a direct crop-and-pool, and detections files:
read in both formats, bad ones refused with the file, video and frame named (as a user runs `python -m tubes`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from grounding.inference import CropGeometry
from tubes.linking import link_tubes, pairwise_iou
from tubes.proposals import read_detections
from tubes.regions import roi_pool, to_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _crossing(frames=9):
    """Object A moves right, B moves left along the same row: they overlap fully in the middle frame. Their
    features differ (A ~ e0, B ~ e1), boxes listed in a shuffled order each frame."""
    rng = np.random.default_rng(0)
    boxes = np.zeros((frames, 2, 4), np.float32)
    feats = np.zeros((frames, 2, 3), np.float32)
    who = np.zeros((frames, 2), int)
    for t in range(frames):
        xa, xb = 10 + 10 * t, 90 - 10 * t
        rows = [([xa, 20, xa + 30, 50], [1, 0.1 * rng.normal(), 0], 0), ([xb, 20, xb + 30, 50], [0, 1, 0.1], 1)]
        if t % 2:
            rows = rows[::-1]
        for i, (b, f, w) in enumerate(rows):
            boxes[t, i], feats[t, i], who[t, i] = b, f, w
    return boxes, feats, who


def test_crossing_objects_keep_their_identity():
    boxes, feats, who = _crossing()
    valid = np.ones(who.shape, bool)
    tubes = link_tubes(np.arange(len(boxes)), feats, boxes, valid, m=2, alpha=0.5)
    assert len(tubes) == 2
    ids = [{int(who[t, i]) for t, i in enumerate(tb.index)} for tb in tubes]
    assert sorted(map(sorted, ids)) == [[0], [1]]
    # without features IoU alone links them, and at the crossing the overlap cannot tell which is which
    blind = link_tubes(np.arange(len(boxes)), np.zeros_like(feats), boxes, valid, m=2, alpha=0.5)
    assert any(len({int(who[t, i]) for t, i in enumerate(tb.index)}) == 2 for tb in blind)


def test_missed_detection_is_bridged_not_swapped():
    frames = 7
    boxes = np.zeros((frames, 2, 4), np.float32)
    feats = np.zeros((frames, 2, 2), np.float32)
    valid = np.ones((frames, 2), bool)
    for t in range(frames):
        boxes[t, 0] = [10 + 2 * t, 10, 40 + 2 * t, 40]
        feats[t, 0] = [1, 0]
        boxes[t, 1] = [70, 50, 100, 80]
        feats[t, 1] = [0, 1]
    valid[3, 0] = False  # A is missed in frame 3
    tubes = link_tubes(np.arange(frames), feats, boxes, valid, m=2, alpha=0.5, max_gap=2, gap_discount=0.8)
    a = next(tb for tb in tubes if tb.index[0] == 0)
    assert a.index.tolist() == [0, 0, 0, -1, 0, 0, 0]
    np.testing.assert_allclose(a.boxes[3], [16, 10, 46, 40])  # interpolated between frames 2 and 4
    b = next(tb for tb in tubes if tb.index[0] == 1)
    assert b.index.tolist() == [1] * frames and a.extent == (0, frames - 1)
    # with no bridge allowed, A's path cannot skip frame 3: it is cut in two or takes B's box
    short = link_tubes(np.arange(frames), feats, boxes, valid, m=3, alpha=0.5, max_gap=0)
    assert all(-1 not in tb.index[tb.extent[0]:tb.extent[1] + 1] for tb in short)


def test_tubes_are_disjoint_and_best_first():
    boxes, feats, who = _crossing()
    boxes = np.concatenate([boxes, boxes[:, :1] + 200], 1)
    feats = np.concatenate([feats, feats[:, :1] * 0 + [[0, 0, 1]]], 1)
    valid = np.ones(boxes.shape[:2], bool)
    valid[4, 2] = False
    tubes = link_tubes(np.arange(len(boxes)), feats, boxes, valid, m=10)
    used = [(t, int(i)) for tb in tubes for t, i in enumerate(tb.index) if i >= 0]
    assert len(used) == len(set(used)) == valid.sum()
    assert [tb.score for tb in tubes] == sorted((tb.score for tb in tubes), reverse=True)


def test_pairwise_iou_matches_hand_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]], np.float32)
    b = np.array([[5, 0, 15, 10]], np.float32)
    np.testing.assert_allclose(pairwise_iou(a, b), [[50 / 150], [0.0]], rtol=1e-6)


def test_roi_align_equals_crop_and_pool():
    torch.manual_seed(0)
    grid = torch.randn(3, 5, 4, 6)  # (frames, D, gh, gw)
    rois = torch.tensor([[0, 1, 0, 3, 2], [2, 2, 1, 6, 3], [1, 0, 0, 2, 2]], dtype=torch.float32)
    got = roi_pool(grid, rois, output=2)
    for k, (f, x1, y1, x2, y2) in enumerate(rois.long().tolist()):
        want = _bilinear_mean(grid[f], x1, y1, x2, y2, 2)
        torch.testing.assert_close(got[k], want)
    # samples that stay between the centres of the cropped cells pool to the crop's mean
    flat = torch.zeros(1, 2, 4, 4)
    flat[0, :, 1:3, 1:3] = torch.tensor([3.0, -1.0])[:, None, None]
    torch.testing.assert_close(roi_pool(flat, torch.tensor([[0, 1.5, 1.5, 2.5, 2.5]]), 2)[0],
                               flat[0, :, 1:3, 1:3].mean((1, 2)))


def _bilinear_mean(fmap, x1, y1, x2, y2, out):
    """Direct RoI-Align: out x out bins, 2 x 2 samples per bin, bilinear at (x - 0.5) pixel-centred coordinates."""
    D, H, W = fmap.shape
    vals = []
    bw, bh = (x2 - x1) / out, (y2 - y1) / out
    for by in range(out):
        for bx in range(out):
            for sy in range(2):
                for sx in range(2):
                    x = x1 + bx * bw + (sx + 0.5) * bw / 2 - 0.5
                    y = y1 + by * bh + (sy + 0.5) * bh / 2 - 0.5
                    x, y = min(max(x, 0.0), W - 1.0), min(max(y, 0.0), H - 1.0)
                    x0, y0 = int(np.floor(x)), int(np.floor(y))
                    xa, ya = min(x0 + 1, W - 1), min(y0 + 1, H - 1)
                    lx, ly = x - x0, y - y0
                    vals.append((1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, xa]
                                + ly * (1 - lx) * fmap[:, ya, x0] + ly * lx * fmap[:, ya, xa])
    return torch.stack(vals).mean(0)


def test_to_grid_maps_source_boxes_through_the_crop():
    geo = CropGeometry(width=128, height=96, size=32)  # short side 96 -> 32, crop x offset 16 source px
    cells = to_grid(np.array([[16.0, 0.0, 112.0, 96.0], [40.0, 24.0, 64.0, 48.0]]), geo, (4, 4))
    np.testing.assert_allclose(cells, [[0, 0, 4, 4], [1, 1, 2, 2]], atol=1e-6)


def _write(tmp_path, name, data) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def test_detections_json_and_npz_agree(tmp_path):
    js = _write(tmp_path, "d.json", {"format": "stground-detections/1", "box_format": "xywh", "videos": {
        "v1": {"fps": 5, "frames": {"0": {"boxes": [[0, 0, 10, 10], [5, 5, 2, 2]], "scores": [0.2, 0.9],
                                          "features": [[1, 0], [0, 1]]},
                                    "2": {"boxes": [], "scores": [], "features": []}}}}})
    npz = str(tmp_path / "d.npz")
    np.savez(npz, video=np.array(["v1", "v1"]), frame=np.array([0, 0]), boxes=np.array([[0, 0, 10, 10], [5, 5, 7, 7]]),
             scores=np.array([0.2, 0.9]), features=np.array([[1, 0], [0, 1]]), fps=np.float64(5))
    a, b = read_detections(js)["v1"], read_detections(npz)["v1"]
    assert a.frames.tolist() == [0, 2] and a.valid.tolist() == [[True, True], [False, False]]
    np.testing.assert_allclose(a.boxes[0], [[5, 5, 7, 7], [0, 0, 10, 10]])  # best score first, xywh -> xyxy
    np.testing.assert_allclose(b.boxes[0], a.boxes[0])
    np.testing.assert_allclose(b.features[0], a.features[0])
    assert a.fps == b.fps == 5.0


BAD = [
    ({"videos": {"v7": {"frames": {"3": {"boxes": [[10, 10, 5, 20]], "scores": [0.5]}}}}}, "v7", "3", "inverted"),
    ({"videos": {"v7": {"frames": {"0": {"boxes": [], "scores": []},
                                   "12": {"boxes": [[1, 2, 3]], "scores": [0.5]}}}}}, "v7", "12", "4 numbers"),
    ({"videos": {"cam2": {"frames": {"4": {"boxes": [[1, 2, 3, 4]], "scores": [0.5, 0.1]}}}}}, "cam2", "4", "scores"),
    ({"videos": {"cam2": {"frames": {"x": {"boxes": [], "scores": []}}}}}, "cam2", "x", "integer"),
    ({"videos": {"v1": {"frames": {"5": {"boxes": [[1, 2, 3, "a"]], "scores": [1]}}}}}, "v1", "5", "numbers"),
    ({"videos": {"v1": {"frames": {"0": {"boxes": [[1, 2, 3, 4]], "scores": [1], "features": [[1, 2]]},
                                   "1": {"boxes": [[1, 2, 3, 4]], "scores": [1], "features": [[1, 2, 3]]}}}}},
     "v1", "1", "dimensions"),
]


@pytest.mark.parametrize("data,vid,frame,problem", BAD)
def test_bad_detections_file_is_one_error_line(tmp_path, data, vid, frame, problem):
    path = _write(tmp_path, "bad.json", data)
    res = subprocess.run([sys.executable, "-m", "tubes", "--detections", path], capture_output=True, text=True,
                         env=ENV, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert path in lines[0] and f"video {vid}" in lines[0] and f"frame {frame}" in lines[0] and problem in lines[0]


def test_bad_npz_names_video_and_frame(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, video=np.array(["a", "b"]), frame=np.array([0, 9]),
             boxes=np.array([[0, 0, 5, 5], [3, 3, 3, 8]]), scores=np.array([0.5, np.nan]))
    res = subprocess.run([sys.executable, "-m", "tubes", "--detections", path], capture_output=True, text=True,
                         env=ENV, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip()
    assert line.startswith("error:") and path in line and "video b" in line and "frame 9" in line


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    """A one-video STVG corpus and a randomly initialised micro export (no weights are downloaded)."""
    from pretrain.model import ModelConfig, build_model, save_export
    from shards.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("tubes")
    cfg = SyntheticConfig(out=str(root / "corpus"), mode="stvg", seed=2, n_train=0, n_test=1, min_seconds=12,
                          max_seconds=12, min_actions=1, max_actions=2)
    generate(cfg)
    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=32, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12, pretrained=None)), str(root / "export"))
    return cfg, str(root / "export"), root


def test_region_features_batched_equal_per_frame_and_cache(one_video):
    from finetune.features import decode
    from pretrain.model import load_model
    from tubes.config import TubeConfig
    from tubes.pipeline import video_tubes
    from tubes.proposals import synthetic
    from tubes.regions import RegionCache, frames_for, region_features

    cfg, export, root = one_video
    model = load_model(export)
    source = synthetic(cfg.out, "test")
    vid, props = next(iter(source.videos().items()))
    path = os.path.join(cfg.out, "test", "videos", f"{vid}.mp4")
    decoded, times, _ = decode(path, props.fps, model.image_size)
    frames = frames_for(decoded, times, props.fps, props.frames)
    assert len(frames) == len(props.frames) == 12 * cfg.fps
    geo = CropGeometry(cfg.width, cfg.height, model.image_size)
    regions, glob = region_features(model, frames, props, geo, batch=7)
    assert regions.shape[:2] == props.valid.shape and glob.shape == (len(frames), 32)
    np.testing.assert_allclose(np.linalg.norm(regions[props.valid], axis=1), 1.0, atol=1e-5)
    assert not regions[~props.valid].any()
    for t in (0, 17, len(frames) - 1):  # one frame alone gives what the batched call gave for it
        one = type(props)(vid, props.frames[t:t + 1], props.boxes[t:t + 1], props.scores[t:t + 1],
                          props.valid[t:t + 1], props.fps)
        r1, g1 = region_features(model, frames[t:t + 1], one, geo)
        np.testing.assert_allclose(r1[0], regions[t], atol=1e-5)
        np.testing.assert_allclose(g1[0], glob[t], atol=1e-5)
    cache = RegionCache(str(root / "cache"), export, source.name)
    first = video_tubes(model, vid, path, props, cfg.width, cfg.height, TubeConfig(tubes=4), cache)
    assert os.path.exists(cache.url(vid, path)) and len(first.tubes) == 4
    again = video_tubes(model, vid, path, props, cfg.width, cfg.height, TubeConfig(tubes=4), cache)
    np.testing.assert_array_equal(again.regions, first.regions)  # float16 in the cache and in a fresh run alike
    np.testing.assert_array_equal(again.frames, first.frames)
    assert [t.index.tolist() for t in again.tubes] == [t.index.tolist() for t in first.tubes]
    other = RegionCache(str(root / "cache"), export, "file-other.json")
    assert other.url(vid, path) != cache.url(vid, path) and other.get(vid, os.path.getsize(path), path) is None


def test_model_proposals_are_boxes_in_the_frame(one_video):
    from finetune.features import decode
    from pretrain.model import load_model
    from tubes.regions import model_proposals

    cfg, export, _ = one_video
    model = load_model(export)
    path = next(iter(os.scandir(os.path.join(cfg.out, "test", "videos")))).path
    decoded, _, _ = decode(path, cfg.fps, model.image_size)
    props = model_proposals(model, decoded[:6], np.arange(6), CropGeometry(cfg.width, cfg.height, model.image_size),
                            "v", top_k=5, fps=cfg.fps)
    assert props.frames.tolist() == list(range(6)) and props.valid.any(1).all() and props.valid.sum(1).max() <= 5
    b = props.boxes[props.valid]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # inside the centred square the crop sees (x 16..112 of 128), full height
    assert b[:, 0].min() >= 16 - 1e-3 and b[:, 2].max() <= 112 + 1e-3 and b[:, 3].max() <= 96 + 1e-3
    s = props.scores[props.valid]
    assert (s >= 0).all() and all((np.diff(props.scores[t][props.valid[t]]) <= 0).all() for t in range(6))


def test_synthetic_proposals_link_into_pure_tubes(one_video):
    """IoU alone (no features) on the corpus's jittered proposals with misses and false positives: each of the first
    n_objects tubes follows one object over the video."""
    from tubes.proposals import synthetic
    from tubes.purity import purity

    cfg, _, _ = one_video
    truth = json.load(open(os.path.join(cfg.out, "test", "truth", "vidstg.json")))
    vid, props = next(iter(synthetic(cfg.out, "test").videos().items()))
    tubes = link_tubes(props.frames, np.zeros((*props.valid.shape, 1), np.float32), props.boxes, props.valid, m=10)
    objects = len(truth["trajectories"][vid])
    _, first = purity(tubes, props.frames, truth["trajectories"][vid])
    assert first >= 0.95
    assert all(t.extent[1] - t.extent[0] + 1 >= 0.9 * len(props.frames) for t in tubes[:objects])
    # a tube made of one object's true boxes scores purity 1
    traj = truth["trajectories"][vid]["0"]
    assert all(set(e) == {"bbox"} for e in traj.values())  # TubeDETR's layout exactly
    own = np.array([[x, y, x + w, y + h] for x, y, w, h in (traj[str(int(f))]["bbox"] for f in props.frames)],
                   np.float32)
    ideal = link_tubes(props.frames, np.ones((len(own), 1, 1), np.float32), own[:, None], np.ones((len(own), 1), bool))
    assert purity(ideal, props.frames, {"0": traj})[0] == 1.0


def test_bad_link_setting_is_one_error_line(tmp_path):
    path = _write(tmp_path, "ok.json", {"videos": {"v": {"frames": {"0": {"boxes": [[0, 0, 4, 4]], "scores": [1]}}}}})
    res = subprocess.run([sys.executable, "-m", "tubes", "--detections", path, "link.gap_discount=2"],
                         capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "gap_discount" in lines[0]



def _video_of(one_video) -> tuple[str, str]:
    cfg = one_video[0]
    folder = os.path.join(cfg.out, "test", "videos")
    (name,) = os.listdir(folder)
    return folder, os.path.splitext(name)[0]


def test_tubes_links_a_file_checked_against_its_video(one_video, tmp_path):
    folder, vid = _video_of(one_video)
    path = _write(tmp_path, "ok.json", {"format": "stground-detections/1", "videos": {
        vid: {"fps": 5, "frames": {"0": {"boxes": [[0, 0, 4, 4]], "scores": [1]}}}}})
    ok = subprocess.run([sys.executable, "-m", "tubes", "--detections", path, "--videos", folder,
                         "--out", str(tmp_path / "t.json")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert ok.returncode == 0 and json.loads(ok.stdout.strip().splitlines()[-1]) == {"videos": 1, "tubes": 1,
                                                                                      "proposals": 1}, ok.stderr
    assert json.load(open(tmp_path / "t.json"))[vid][0]["boxes"] == {"0": [0.0, 0.0, 4.0, 4.0]}


def _frames(vid, fps="5", frame="0", box=(0, 0, 4, 4), **top):
    video = {"frames": {frame: {"boxes": [list(box)], "scores": [1]}}}
    if fps is not None:
        video["fps"] = float(fps)
    return {"videos": {vid: video}, **top}


# impossible input that python -m tubes accepted with exit 0 (issue 29): one error line, exit 2, nothing written
IMPOSSIBLE = [
    ("npz-fps-negative", None, "fps must be a positive number"),
    ("box-outside-the-frame", lambda v: _frames(v, box=(500, 500, 600, 600)), "outside the 128x96 frame"),
    ("frame-past-the-video", lambda v: _frames(v, frame="99999999"), "frame 99999999]: past the video's last frame"),
    ("fps-1e9", lambda v: _frames(v, fps="1e9"), "is not the video's native rate"),
    ("no-fps", lambda v: _frames(v, fps=None), "no fps"),
    ("unknown-format", lambda v: _frames(v, format="yolo/7"), "format must be 'stground-detections/1'"),
    ("no-videos-given", lambda v: _frames(v), "--videos is required"),
    ("no-videos-in-the-file", lambda v: {"videos": {}}, "holds no videos"),
    ("out-is-a-folder", lambda v: _frames(v), "is a folder"),
]


@pytest.mark.parametrize("case,data,message", IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_impossible_detections_are_one_error_line(one_video, tmp_path, case, data, message):
    folder, vid = _video_of(one_video)
    if data is None:
        path = str(tmp_path / "bad.npz")
        np.savez(path, video=np.array([vid]), frame=np.array([0]), boxes=np.array([[0, 0, 4, 4]]),
                 scores=np.array([0.5]), fps=np.array(-1.0))
    else:
        path = _write(tmp_path, "bad.json", data(vid))
    out = tmp_path / "out"
    out.mkdir()
    target = str(out) if case == "out-is-a-folder" else str(out / "t.json")
    args = [] if case == "no-videos-given" else ["--videos", folder]
    res = subprocess.run([sys.executable, "-m", "tubes", "--detections", path, *args, "--out", target],
                         capture_output=True, text=True, env=ENV, cwd=ROOT)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert os.listdir(out) == []   # no tubes file, no .tmp-* left behind
