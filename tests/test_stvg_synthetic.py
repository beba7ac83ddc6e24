"""The STVG mode of the synthetic generator: determinism, tubes equal to the rendered boxes, relations true in the
tube's frames, real ambiguity, concurrent distractor actions that only the words resolve, parses consistent with
the scene, and a perfect prediction scoring 100 through `python -m grounding.evaluate vidstg`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grounding.readers.stvg import read_vidstg
from shards.synthetic import SyntheticConfig, generate
from shards.synthetic.render import Renderer
from shards.synthetic.stvg import KINDS, holds, stvg_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def small(out, **kw) -> SyntheticConfig:
    base = dict(out=str(out), mode="stvg", seed=5, n_train=2, n_test=4, min_seconds=18, max_seconds=24,
                stvg_attribute=0.1, stvg_action=0.3, stvg_relation=0.3, stvg_same_noun=0.3)
    base.update(kw)
    return SyntheticConfig(**base)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("stvg"))
    generate(cfg)
    return cfg


def _load(cfg, split, name):
    with open(os.path.join(cfg.out, split, name)) as f:
        return json.load(f)


def _rendered(cfg, split):
    """{vid: (plan, per-frame boxes)} re-rendered from the plan, independently of the files."""
    out = {}
    for i in range(cfg.n_train if split == "train" else cfg.n_test):
        p = stvg_plan(cfg, split, i)
        r = Renderer(p)
        out[p.vid] = (p, [r.frame(f)[1] for f in range(p.frames)])
    return out


def test_deterministic_per_seed(corpus, tmp_path):
    again = small(tmp_path / "again")
    generate(again)
    names = ("queries.json", "detections.json", "truth/vidstg.json", "truth/parses.json", "caption.json")
    for split in ("train", "test"):
        for name in names:
            with open(os.path.join(corpus.out, split, name), "rb") as a, open(os.path.join(again.out, split, name),
                                                                             "rb") as b:
                assert a.read() == b.read(), (split, name)
    other = small(tmp_path / "other", seed=6, n_train=0, n_test=1)
    generate(other)
    assert _load(other, "test", "truth/vidstg.json") != {"videos": _load(corpus, "test", "truth/vidstg.json")}
    assert _load(other, "test", "queries.json")[0]["video"] != _load(corpus, "test", "queries.json")[0]["video"]


def test_tube_boxes_equal_rendered_boxes_at_native_rate(corpus):
    for split in ("train", "test"):
        rendered = _rendered(corpus, split)
        queries = read_vidstg(os.path.join(corpus.out, split, "truth", "vidstg.json"))
        raw = _load(corpus, split, "truth/vidstg.json")["videos"]
        assert queries and len(queries) == len(raw)
        for q, v in zip(queries, raw):
            p, boxes = rendered[q.video]
            a = p.all_actions[_load(corpus, split, "truth/parses.json")[q.key]["action"]]
            assert q.video_fps == corpus.fps and q.span == (0, p.frames)
            assert q.tube == (a.start * p.fps, a.end * p.fps) and a.target == v["target_id"]
            assert sorted(q.boxes) == list(range(*q.tube))  # one box per native frame, not one a second
            for f, b in q.boxes.items():
                assert tuple(int(c) for c in b) == boxes[f][v["target_id"]]


def test_relations_hold_in_the_tube_and_resolve_the_noun(corpus):
    near = corpus.stvg_near * min(corpus.width, corpus.height)
    seen = {k: 0 for k in KINDS}
    for split in ("train", "test"):
        rendered = _rendered(corpus, split)
        parses = _load(corpus, split, "truth/parses.json")
        for v in _load(corpus, split, "truth/vidstg.json")["videos"]:
            p = parses[v["video_id"]]
            seen[p["kind"]] += 1
            if p["kind"] not in ("relation", "same_noun"):
                assert p["reference"] is None and p["parse"]["relations"] == []
                continue
            boxes = rendered[v["original_video_id"]][1]
            objs = rendered[v["original_video_id"]][0].objects
            t, r = p["target"], p["reference"]
            assert (objs[r].noun == objs[t].noun) == (p["kind"] == "same_noun")
            frames = range(v["tube_start_frame"], v["tube_end_frame"])
            assert all(holds(p["predicate"], boxes[f][t], boxes[f][r], near) for f in frames)
            rivals = [j for j, o in enumerate(objs) if o.noun == objs[t].noun and j not in (t, r)]
            for j in rivals:
                assert not any(holds(p["predicate"], boxes[f][j], boxes[f][r], near) for f in frames)
            assert p["predicate"] in v["caption"] and f"{objs[r].colour} {objs[r].noun}" in v["caption"]
            assert p["parse"]["relations"][0][1:] == [p["predicate"], f"{objs[r].colour} {objs[r].noun}"]
    assert all(seen[k] > 0 for k in KINDS), seen


def test_ambiguity_and_parse(corpus):
    qtypes = set()
    shared_colour = 0
    for split in ("train", "test"):
        objects = _load(corpus, split, "truth/vidstg.json")["objects"]
        parses = _load(corpus, split, "truth/parses.json")
        for vid, objs in objects.items():
            pairs = [(o["noun"], o["colour"]) for o in objs]
            assert len(set(pairs)) == len(pairs)  # "the red cube" names one object
            colours = [c for _, c in pairs]
            shared_colour += len(set(colours)) < len(colours)
        for v in _load(corpus, split, "truth/vidstg.json")["videos"]:
            objs = objects[v["original_video_id"]]
            target = objs[v["target_id"]]
            p = parses[v["video_id"]]
            # the noun alone never names the target
            assert sum(o["noun"] == target["noun"] for o in objs) >= 2
            subject = p["parse"]["subject"]
            assert subject["noun"] in (target["noun"], None) and subject["attributes"] in ([], [target["colour"]])
            if subject["noun"]:
                assert target["noun"] in v["caption"]
            if p["kind"] == "same_noun":
                assert v["caption"].count(target["noun"]) == 2
            assert v["caption"].endswith("?") == (v["qtype"] == "interrogative")
            qtypes.add(v["qtype"])
    assert qtypes == {"declarative", "interrogative"} and shared_colour > 0
    meta = json.load(open(os.path.join(corpus.out, "corpus.json")))
    assert set(meta["stvg"]["mix"]) == set(KINDS) and abs(sum(meta["stvg"]["mix"].values()) - 1) < 1e-6
    assert sum(meta["splits"]["test"]["stvg"]["kinds"].values()) == len(_load(corpus, "test", "queries.json"))


def _acted_on(p, frames, verb=None):
    """Objects some action (main or concurrent, of `verb` or any) is done to in a frame of `frames`."""
    return {a.target for a in p.actions + p.concurrent
            if (verb is None or a.verb == verb) and a.start * p.fps < frames.stop and a.end * p.fps > frames.start}


def _fit(p, boxes, q, frames, near):
    """The objects that satisfy all of a query's words (from its parse) during `frames`."""
    noun, colours = q["parse"]["subject"]["noun"], q["parse"]["subject"]["attributes"]
    fit = set()
    for j, o in enumerate(p.objects):
        if j not in _acted_on(p, frames, q["parse"]["action"]) or (noun and o.noun != noun):
            continue
        if colours and o.colour not in colours:
            continue
        if q["predicate"] and (j == q["reference"] or not all(
                holds(q["predicate"], boxes[f][j], boxes[f][q["reference"]], near) for f in frames)):
            continue
        fit.add(j)
    return fit


def test_every_query_is_decided_by_its_words(corpus):
    """For every query, the objects that satisfy all its words during its span (its verb done to them then, the
    noun and colour it says, its relation true in every span frame) are exactly its target: a concurrent
    distractor never makes a query ambiguous. Nor does another action of the video: no other action of its verb
    has an object its words fit over that action's frames (the words name one time too)."""
    near = corpus.stvg_near * min(corpus.width, corpus.height)
    checked = 0
    for split in ("train", "test"):
        rendered = _rendered(corpus, split)
        parses = _load(corpus, split, "truth/parses.json")
        for v in _load(corpus, split, "truth/vidstg.json")["videos"]:
            p, boxes = rendered[v["original_video_id"]]
            q = parses[v["video_id"]]
            frames = range(v["tube_start_frame"], v["tube_end_frame"])
            assert _fit(p, boxes, q, frames, near) == {v["target_id"]}, v["caption"]
            me = p.all_actions[q["action"]]
            for b in p.all_actions:
                if b is not me and b.verb == me.verb:
                    assert b.target not in _fit(p, boxes, q, range(b.start * p.fps, b.end * p.fps), near), \
                        (v["caption"], b)
                    checked += 1
    assert checked > 0  # the time-level check met other actions of the same verb


def test_concurrent_distractors_are_present(corpus):
    """Most queries have another object acted on during their span, often one of the target's noun (so "the
    object that changes now" does not name the target); the count is the one corpus.json reports, and
    stvg_concurrent=0 brings back one action at a time."""
    meta = json.load(open(os.path.join(corpus.out, "corpus.json")))
    assert meta["stvg"]["concurrent"] == corpus.stvg_concurrent
    total = busy = same_noun = same_verb = 0
    for split in ("train", "test"):
        rendered = _rendered(corpus, split)
        n = 0
        for v in _load(corpus, split, "truth/vidstg.json")["videos"]:
            p = rendered[v["original_video_id"]][0]
            frames = range(v["tube_start_frame"], v["tube_end_frame"])
            t = p.objects[v["target_id"]]
            others = _acted_on(p, frames) - {v["target_id"]}
            n += bool(others)
            same_noun += any(p.objects[j].noun == t.noun for j in others)
            verb = next(a.verb for a in p.all_actions if a.target == v["target_id"]
                        and (a.start * p.fps, a.end * p.fps) == (frames.start, frames.stop))
            same_verb += bool(others & _acted_on(p, frames, verb))
            total += 1
        busy += n
        assert meta["splits"][split]["stvg"]["concurrent_queries"] == n
    assert busy >= 0.4 * total and same_noun > 0 and same_verb > 0, (busy, total, same_noun, same_verb)
    quiet = small(os.path.join(corpus.out, "quiet"), n_train=0, n_test=2, stvg_concurrent=0.0)
    generate(quiet)
    assert json.load(open(os.path.join(quiet.out, "corpus.json")))["splits"]["test"]["stvg"]["concurrent_queries"] == 0


def test_concurrent_action_is_rendered_on_its_object(corpus):
    """In a frame of a concurrent action, the distractor's box holds changed pixels (against the same scene with
    nothing happening) and every changed pixel lies in the box of an object being acted on."""
    checked = 0
    for i in range(corpus.n_test):
        p = stvg_plan(corpus, "test", i)
        r = Renderer(p)
        for c in p.concurrent:
            f = c.start * p.fps
            img, boxes = r.frame(f)
            changed = np.abs(img.astype(int) - r.frame(f, actions=False)[0].astype(int)).max(-1) > 0
            inside = np.zeros_like(changed)
            for j in p.acting_at(f / p.fps):
                x1, y1, x2, y2 = boxes[j]
                inside[y1:y2, x1:x2] = True
            x1, y1, x2, y2 = boxes[c.target]
            assert changed[y1:y2, x1:x2].sum() >= 20 and not (changed & ~inside).any()
            checked += 1
    assert checked > 0


def test_visible_files_hold_no_truth(corpus):
    visible = _load(corpus, "test", "queries.json")
    assert all(set(q) == {"key", "video", "sentence", "qtype"} for q in visible)
    det = _load(corpus, "test", "detections.json")
    p = stvg_plan(corpus, "test", 0)
    frames = det["videos"][p.vid]["frames"]
    assert sorted(int(f) for f in frames) == list(range(p.frames))
    assert all(set(e) == {"boxes", "scores"} for e in frames.values())
    counts = [len(e["boxes"]) for e in frames.values()]
    assert min(counts) != max(counts)  # misses and false positives change the count from frame to frame


def test_perfect_prediction_scores_100(corpus, tmp_path):
    ann = os.path.join(corpus.out, "test", "truth", "vidstg.json")
    preds = {q.key: {"sted": list(q.tube), "boxes": {str(f): b.tolist() for f, b in q.boxes.items()}}
             for q in read_vidstg(ann)}
    path = tmp_path / "perfect.json"
    path.write_text(json.dumps(preds))
    res = subprocess.run([sys.executable, "-m", "grounding.evaluate", "vidstg", "--annotations", ann,
                          "--predictions", str(path)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "declarative_m_vIoU", "interrogative_m_vIoU"):
        assert scores[k] == 100.0, (k, scores)


def test_bad_mode_is_one_error_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "shards.synthetic", "--out", str(tmp_path / "x"), "mode=stvgx"],
                         capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "mode" in lines[0]
