"""From the released layouts to m_vIoU: VidSTG + VidOR files for real VidSTG test video ids converted
(`python -m grounding.convert`), the frames a detector must see (`python -m tubes.frames`, at a stride), a
detector's COCO results (here made from the VidOR boxes, jittered: no detector weights ship) converted
(`python -m tubes.from_coco`) and linked (`python -m tubes --videos`), then the shipped FSM and VCMA VidSTG configs
finetuned a few steps as Ray tasks, predicting and scoring with m_vIoU; TubeDETR's two prediction dicts of a run
hold the same tubes as its predictions.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common import config as C
from conftest import ROOT, shared_path
from finetune.config import FinetuneConfig
from grounding.metrics import sample_frame_ids
from grounding.readers.stvg import read_vidstg
from stvg_release_fixtures import object_box, vidstg_release


def _cli(module: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_e2e")
    rel = vidstg_release(str(root), str(shared_path("benchmarks", "vidstg", "test_annotations.json")), items=6)
    conv = _cli("grounding.convert", "vidstg", "--annotations", rel["annotations"], "--vidor", rel["vidor"],
                "--videos", rel["videos"], "--out", str(root / "data"))
    frames = _cli("tubes.frames", "--videos", rel["videos"], "--out", str(root / "frames"), "--stride", "3")
    index = json.loads((root / "frames" / "images.json").read_text())
    objects = {a["vid"]: sorted({o["tid"] for o in a["subject/objects"]}) for a in rel["items"]}
    rng = np.random.default_rng(0)
    results = []
    for img in index["images"]:  # every object found, its box jittered by 3 px, plus one false positive
        for tid in objects[img["video"]]:
            x1, y1, x2, y2 = np.asarray(object_box(tid, img["frame"], img["width"], img["height"])) + rng.normal(0, 3, 4)
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, img["width"]), min(y2, img["height"])
            results.append({"image_id": img["id"], "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(rng.uniform(0.5, 1))})
        results.append({"image_id": img["id"], "category_id": 2, "bbox": [1, 1, 20, 20], "score": 0.1})
    (root / "coco_results.json").write_text(json.dumps(results))
    det = _cli("tubes.from_coco", "--results", str(root / "coco_results.json"), "--frames", str(root / "frames"),
               "--out", str(root / "detections.json"), "--top", "10")
    return root, rel, conv, frames, det


def test_release_to_tubes(converted):
    root, rel, conv, frames, det = converted
    assert conv["files"]["test"]["queries"] >= 10 and conv["files"]["test"]["interrogative"] > 0
    assert det["videos"] == frames["videos"] == conv["files"]["test"]["videos"] and det["empty_box"] == 0
    linked = _cli("tubes", "--detections", str(root / "detections.json"), "--videos", rel["videos"], "--out",
                  str(root / "tubes.json"))
    assert linked["videos"] == det["videos"] and linked["tubes"] >= linked["videos"]


def test_shipped_vidstg_configs_finetune_and_score_m_viou(converted, ray_cluster, tmp_path_factory):
    """FSM and VCMA as two Ray tasks of one sweep (one feature extraction), from the shipped fsm_vidstg.yaml."""
    from cluster.finetune import run_finetunes
    from pretrain_fixtures import tiny_export

    root, rel, conv, _, _ = converted
    for name in ("fsm", "vcma", "winner"):  # the shipped configs read the converted splits (m_vIoU needs their boxes)
        d = C.load(FinetuneConfig, str(ROOT / "configs" / "finetune" / f"{name}_vidstg.yaml"), []).dataset
        assert (d.kind, d.train, d.test) == ("vidstg", "data/vidstg/train.json", "data/vidstg/test.json")
    export = tiny_export(str(root / "export"))
    test = conv["files"]["test"]["path"]
    cfg = C.load(FinetuneConfig, str(ROOT / "configs" / "finetune" / "fsm_vidstg.yaml"), [
        f"checkpoint={export}", f"dataset.train={test}", f"dataset.test={test}", f"dataset.videos={rel['videos']}",
        f"dataset.detections={root / 'detections.json'}", f"dataset.test_detections={root / 'detections.json'}",
        f"features.cache={root / 'cache'}", f"run={tmp_path_factory.mktemp('runs') / 'run'}", "batch_size=2",
        "max_steps=2", "checkpoint_every=2", "log_every=1", "features.max_frames=12", "tubes.tubes=4",
        "fsm.dim=16", "fsm.heads=2", "fsm.ffn=32", "fsm.queries=3", "fsm.multiscale=false",
        "features.end_to_end=false", "vcma.dim=16", "vcma.blocks=1", "vcma.heads=2", "vcma.vocab=64",
        "sweep.heads=[fsm, vcma]"])
    out = run_finetunes(cfg, ray_cluster)
    assert [j.get("error") for j in out["jobs"]] == [None, None] and len(out["features"]) == 1
    for job in out["jobs"]:
        check_run(job, test)


def check_run(job: dict, test: str) -> None:
    assert job["steps"] == 2
    ev = json.load(open(os.path.join(job["run"], "eval.json")))
    assert ev["benchmark"] == "vidstg" and ev["counts"]["missing_predictions"] == 0
    assert {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "declarative_m_vIoU"} <= set(ev["metrics"])
    # TubeDETR's two dicts hold the tubes of predictions.json: the same span, the same box at every sampled frame
    ours = json.load(open(os.path.join(job["run"], "predictions.json")))
    frames = json.load(open(os.path.join(job["run"], "tubedetr_predictions.json")))
    videos = json.load(open(os.path.join(job["run"], "tubedetr_video_predictions.json")))
    queries = {q.key: q for q in read_vidstg(test)}
    assert set(videos) == set(ours) == set(queries)
    for key, p in ours.items():
        q = queries[key]
        assert videos[key]["sted"] == p["sted"] and videos[key]["qtype"] == q.qtype
        sampled = [int(f) for f in sample_frame_ids(q.span[0], q.span[1], q.video_fps)]
        assert {k for k in frames if k.startswith(f"{key}_")} == {f"{key}_{f}" for f in sampled}
        for f in sampled:
            if str(f) in p["boxes"]:
                assert np.allclose(frames[f"{key}_{f}"]["boxes"][0], p["boxes"][str(f)], atol=0.01)
