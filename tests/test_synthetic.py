"""The synthetic corpus: contract layout, real mp4 files, truth boxes that hold the action, determinism, the
GroundingYouTube reader and evaluator on its truth, and loosely aligned narration."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from common.config import ConfigError
from grounding.evaluate import evaluate
from grounding.readers.groundingyoutube import read_groundingyoutube
from shards.synthetic import SyntheticConfig, generate, sprites, vocab
from shards.synthetic.encode import read_frames
from shards.synthetic.narration import KEY, UNRELATED, narrate
from shards.synthetic.render import Renderer
from shards.synthetic.scene import plan_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUTH = ("ground_seg.json", "GroundingYouTubeBox.json", "vid2step.json", "id2wh.json", "proposals.json")


def small(out, **kw) -> SyntheticConfig:
    base = dict(out=str(out), seed=3, n_train=2, n_test=3, min_seconds=18, max_seconds=22)
    base.update(kw)
    return SyntheticConfig(**base)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("synthetic"))
    return cfg, generate(cfg)


def load(cfg: SyntheticConfig, split: str, name: str):
    with open(os.path.join(cfg.out, split, name)) as f:
        return json.load(f)


def test_files_match_contract(corpus):
    cfg, summary = corpus
    assert summary["videos"] == 5 and summary["seconds_per_video"] > 0
    meta = json.load(open(os.path.join(cfg.out, "corpus.json")))
    assert meta["config"]["seed"] == 3 and meta["config"]["n_test"] == 3
    words = meta["vocabulary"]
    assert words["verbs"] == list(vocab.VERBS)[:cfg.verbs] and len(words["colours"]) == cfg.colours
    pattern = re.compile(rf"^({'|'.join(words['verbs'])}) ({'|'.join(words['colours'])}) "
                         rf"({'|'.join(words['objects'])})$")
    ids = {}
    for split, n in (("train", 2), ("test", 3)):
        rows = list(csv.reader(open(os.path.join(cfg.out, split, "manifest.csv"))))
        assert rows[0] == ["video_id", "path"] and len(rows) == n + 1
        ids[split] = [r[0] for r in rows[1:]]
        for vid, path in rows[1:]:
            assert path == f"videos/{vid}.mp4" and os.path.getsize(os.path.join(cfg.out, split, path)) > 1000
        h100m = list(csv.reader(open(os.path.join(cfg.out, split, "HowTo100M_v1.csv"))))
        assert h100m[0] == ["video_id", "category_1", "category_2", "rank", "task_id"]
        assert [r[0] for r in h100m[1:]] == ids[split]
        caps = load(cfg, split, "caption.json")
        truth = {name: load(cfg, split, os.path.join("truth", name)) for name in TRUTH}
        assert list(caps) == ids[split] and all(list(t) == ids[split] for t in truth.values())
        for vid in ids[split]:
            duration = len(truth["proposals.json"][vid])
            assert cfg.min_seconds <= duration <= cfg.max_seconds
            c = caps[vid]
            assert len(c["start"]) == len(c["end"]) == len(c["text"]) > 0
            assert all(0 <= s < e <= duration for s, e in zip(c["start"], c["end"]))
            assert c["start"] == sorted(c["start"]) and all(isinstance(t, str) and t for t in c["text"])
            assert truth["id2wh.json"][vid] == [cfg.width, cfg.height]
            segs = truth["ground_seg.json"][vid]
            pool = truth["vid2step.json"][vid]
            assert pool[-1] == "background" and [s["sentence"] for s in segs] == pool[:-1]
            assert [s["id"] for s in segs] == list(range(len(segs)))
            boxes = truth["GroundingYouTubeBox.json"][vid]
            expected = {str(t): s["sentence"] for s in segs for t in range(s["segment"][0], s["segment"][1] + 1)}
            assert {k: v["step"] for k, v in boxes.items()} == expected
            for s in segs:
                assert pattern.match(s["sentence"]) and 0 <= s["segment"][0] <= s["segment"][1] < duration
            for v in boxes.values():
                x1, y1, x2, y2 = v["box"]
                assert 0 <= x1 < x2 <= cfg.width and 0 <= y1 < y2 <= cfg.height
            props = truth["proposals.json"][vid]
            assert list(props) == [str(t) for t in range(duration)]
            for t, rows in props.items():
                assert len(rows) >= cfg.min_objects + 1
                assert [r[4] for r in rows] == sorted((r[4] for r in rows), reverse=True)
                assert all(0 <= r[0] < r[2] <= cfg.width and 0 <= r[1] < r[3] <= cfg.height for r in rows)
    assert not set(ids["train"]) & set(ids["test"])


def test_mp4_decodes_to_the_rendered_frames(corpus):
    cfg, _ = corpus
    for i, vid in enumerate(r[0] for r in list(csv.reader(open(os.path.join(cfg.out, "test", "manifest.csv"))))[1:]):
        plan = plan_video(cfg, "test", i)
        assert plan.vid == vid
        frames = read_frames(os.path.join(cfg.out, "test", "videos", f"{vid}.mp4"), cfg.width, cfg.height)
        assert frames.shape == (plan.seconds * cfg.fps, cfg.height, cfg.width, 3)
        r = Renderer(plan)
        for k in (0, plan.frames // 2, plan.frames - 1):
            err = np.abs(frames[k].astype(int) - r.frame(k)[0].astype(int)).mean()
            assert err < 6, (vid, k, err)  # lossy, but the picture is the rendered one


def _changed(plan, renderer, i):
    with_action, boxes = renderer.frame(i)
    without, _ = renderer.frame(i, actions=False)
    return np.abs(with_action.astype(int) - without.astype(int)).max(-1) > 0, boxes


@pytest.mark.parametrize("verb", list(vocab.VERBS))
def test_truth_box_holds_every_changed_pixel(tmp_path, verb):
    """Each verb, set on every action of a plan: the pixels that differ from the same scene without the action
    are all inside the truth box, and there are many of them (a strong signal)."""
    cfg = small(tmp_path, verbs=len(vocab.VERBS))
    for index in range(2):
        plan = plan_video(cfg, "test", index)
        for a in plan.actions:
            a.verb = verb
        r = Renderer(plan)
        for a in plan.actions:
            for t in (a.start, a.end - 1):
                changed, boxes = _changed(plan, r, t * cfg.fps)
                x1, y1, x2, y2 = boxes[a.target]
                inside = np.zeros_like(changed)
                inside[y1:y2, x1:x2] = True
                assert changed.sum() >= 20, (verb, t, changed.sum())
                assert not (changed & ~inside).any(), (verb, t)
        # between actions nothing differs
        quiet = [i for i in range(plan.frames) if plan.action_at(i / cfg.fps) is None]
        assert not _changed(plan, r, quiet[len(quiet) // 2])[0].any()


def test_action_survives_encoding_inside_box(corpus):
    """In the decoded mp4, the truth box shows the action: the box is far closer to the rendered frame with the
    action than to the same scene without it."""
    cfg, _ = corpus
    boxes = load(cfg, "test", "truth/GroundingYouTubeBox.json")
    ratios = []
    for index in range(cfg.n_test):
        plan = plan_video(cfg, "test", index)
        frames = read_frames(os.path.join(cfg.out, "test", "videos", f"{plan.vid}.mp4"), cfg.width, cfg.height)
        r = Renderer(plan)
        for key, v in boxes[plan.vid].items():
            i = int(key) * cfg.fps
            x1, y1, x2, y2 = v["box"]
            got = frames[i, y1:y2, x1:x2].astype(float)
            with_action = r.frame(i)[0][y1:y2, x1:x2].astype(float)
            without = r.frame(i, actions=False)[0][y1:y2, x1:x2].astype(float)
            ratios.append(np.abs(got - without).mean() / max(np.abs(got - with_action).mean(), 1e-6))
    assert len(ratios) > 10 and np.median(ratios) > 3 and min(ratios) > 1.5, sorted(ratios)[:5]


def test_deterministic_same_seed_same_files_and_frames(tmp_path):
    kw = dict(n_train=1, n_test=1, min_seconds=12, max_seconds=14, min_actions=2, max_actions=3)
    a = small(tmp_path / "a", **kw)
    generate(a)
    # the second run goes through the CLI and two worker processes: neither may change a byte
    b_out = str(tmp_path / "b")
    overrides = [f"{k}={v}" for k, v in kw.items()] + ["seed=3", "workers=2"]
    res = subprocess.run([sys.executable, "-m", "shards.synthetic", "--out", b_out, *overrides], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["videos"] == 2 and summary["seconds_per_video"] > 0
    assert os.path.exists(os.path.join(b_out, "config.yaml"))
    for split in ("train", "test"):
        for name in ("caption.json", "manifest.csv", "HowTo100M_v1.csv") + tuple(f"truth/{t}" for t in TRUTH):
            pa, pb = os.path.join(a.out, split, name), os.path.join(b_out, split, name)
            assert open(pa, "rb").read() == open(pb, "rb").read(), (split, name)
        vid = list(csv.reader(open(os.path.join(a.out, split, "manifest.csv"))))[1][0]
        fa = read_frames(os.path.join(a.out, split, "videos", f"{vid}.mp4"), a.width, a.height)
        fb = read_frames(os.path.join(b_out, split, "videos", f"{vid}.mp4"), a.width, a.height)
        assert fa.shape == fb.shape and np.array_equal(fa, fb)
    other = small(tmp_path / "c", **{**kw, "seed": 4, "n_train": 0})
    generate(other)
    assert load(other, "test", "caption.json") != load(a, "test", "caption.json")


def _predictions(truth_dir: str, wrong: bool) -> dict:
    segs = json.load(open(os.path.join(truth_dir, "ground_seg.json")))
    boxes = json.load(open(os.path.join(truth_dir, "GroundingYouTubeBox.json")))
    pools = json.load(open(os.path.join(truth_dir, "vid2step.json")))
    wh = json.load(open(os.path.join(truth_dir, "id2wh.json")))
    out = {}
    for vid in segs:
        steps = pools[vid][:-1]
        w, h = wh[vid]
        end = max(s["segment"][1] for s in segs[vid]) + 3
        per = {}
        for t in range(end):
            b = boxes[vid].get(str(t))
            if b is None:
                per[str(t)] = {"step": "background", "score": 0.1}
            elif not wrong:
                x1, y1, x2, y2 = b["box"]
                per[str(t)] = {"step": b["step"], "score": 0.9, "box": b["box"],
                               "point": [(x1 + x2) / 2, (y1 + y2) / 2]}
            else:  # another step of the pool, pointing at the far corner
                other = steps[(steps.index(b["step"]) + 1) % len(steps)] if len(steps) > 1 else "background"
                x1, y1, x2, y2 = b["box"]
                px = 0 if x1 > w - x2 else w - 1
                py = 0 if y1 > h - y2 else h - 1
                per[str(t)] = {"step": other, "score": 0.9, "point": [px, py], "box": [px, py, px + 1, py + 1]}
        out[vid] = per
    return out


def test_groundingyoutube_reader_and_evaluator_accept_the_truth(corpus, tmp_path):
    cfg, _ = corpus
    truth_dir = os.path.join(cfg.out, "test", "truth")
    videos = read_groundingyoutube(os.path.join(cfg.out, "test"))  # the split folder finds truth/ itself
    assert len(videos) == cfg.n_test
    for v in videos.values():
        assert v.size == (cfg.width, cfg.height) and v.pool[-1] == "background"
        assert all(a <= t <= b for t, (step, _) in v.boxes.items() for a, b, s in v.segments if s == step)
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps(_predictions(truth_dir, wrong=False)))
    res = subprocess.run([sys.executable, "-m", "grounding.evaluate", "groundingyoutube", "--annotations",
                          truth_dir, "--predictions", str(perfect)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    assert scores["IoU+Point"] > 99 and scores["pointing_game"] > 99 and scores["mAP@0.1:0.5"] > 99
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_predictions(truth_dir, wrong=True)))
    bad, _ = evaluate("groundingyoutube", truth_dir, str(wrong))
    assert bad["IoU+Point"] < 0.05 and bad["pointing_game"] < 0.05 and bad["mAP@0.1:0.5"] < 0.05


def test_narration_is_shifted_but_overlaps_its_action(tmp_path):
    cfg = small(tmp_path, asr_shift=2.0, unrelated_fraction=0.25, filler_prob=0.3)
    overlaps, shifts, segments, unrelated, fillers = [], [], 0, 0, 0
    for i in range(30):
        plan = plan_video(cfg, "train", i)
        segs = narrate(plan, cfg)
        segments += len(segs)
        unrelated += sum(s.kind == UNRELATED for s in segs)
        fillers += sum(any(w in vocab.FILLERS for w in s.text.split()) for s in segs)
        for k, a in enumerate(plan.actions):
            obj = plan.objects[a.target]
            keys = [s for s in segs if s.kind == KEY and s.action == k]
            assert len(keys) == 1 and a.verb in keys[0].text.split() and f"{obj.colour} {obj.noun}" in keys[0].text
            span = [s for s in segs if s.action == k]
            s0, s1 = min(s.start for s in span), max(s.end for s in span)
            overlaps.append(max(0.0, min(s1, a.end) - max(s0, a.start)) / a.seconds)
            shifts.append(s0 - a.start)
        assert all(b.start >= a.end - 1e-9 for a, b in zip(segs, segs[1:]))  # sequential, like ASR
    assert np.mean(overlaps) > 0.6                    # loosely aligned ...
    assert np.mean(np.abs(shifts)) > 0.4 and np.std(shifts) > 0.4   # ... but not on the action's boundaries
    assert abs(unrelated / segments - 0.25) < 0.08 and 0.15 < fillers / segments < 0.45
    words = set(vocab.VERBS) | set(vocab.NOUNS) | set(vocab.COLOURS)
    assert not any(words & set(p.split()) for p in vocab.UNRELATED_PHRASES)
    exact = dataclasses.replace(cfg, asr_shift=0.0)
    plan = plan_video(exact, "train", 0)
    first = [s for s in narrate(plan, exact) if s.action == 0]
    assert min(s.start for s in first) == plan.actions[0].start


def test_writes_to_s3(s3_bucket):
    """The corpus can go straight to object storage (fsio), and the reader takes it from there."""
    from common import fsio

    cfg = SyntheticConfig(out=f"{s3_bucket}/synthetic", n_train=0, n_test=1, min_seconds=10, max_seconds=10,
                          min_actions=1, max_actions=2)
    summary = generate(cfg)
    assert summary["splits"]["test"]["videos"] == 1
    vid = fsio.read_text(f"{cfg.out}/test/manifest.csv").splitlines()[1].split(",")[0]
    assert len(fsio.read_bytes(f"{cfg.out}/test/videos/{vid}.mp4")) > 1000
    videos = read_groundingyoutube(f"{cfg.out}/test")
    assert list(videos) == [vid] and videos[vid].boxes


def test_objects_stay_in_the_centre_crop(tmp_path):
    """The sharder keeps the centred square of each frame; every object must lie inside it at every frame."""
    cfg = small(tmp_path, jitter=0.0)
    x0 = (cfg.width - cfg.height) // 2
    for i in range(20):
        plan = plan_video(cfg, "train", i)
        for o in plan.objects:
            h, w = sprites.footprint(o.noun, o.size)
            xs = o.x - plan.camera[:, 0]
            ys = o.y - plan.camera[:, 1]
            assert xs.min() >= x0 and xs.max() + w <= x0 + cfg.height and ys.min() >= 0 and ys.max() + h <= cfg.height


def test_bad_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="even"):
        small(tmp_path, width=127).validate()
    with pytest.raises(ConfigError, match="max_objects"):
        small(tmp_path, max_objects=7, colours=6).validate()
    with pytest.raises(ConfigError, match="camera_drift"):
        small(tmp_path, max_object_size=0.4, camera_drift=30).validate()
    res = subprocess.run([sys.executable, "-m", "shards.synthetic", "--out", str(tmp_path), "no_such_knob=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no_such_knob" in res.stderr
