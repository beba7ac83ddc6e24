"""grounding.calibrate: the decoding chosen on a labelled split. On hand-made scores it picks smoothing only where
smoothing mends the split's segments; run as a user runs it, its figure for the chosen settings is what
grounding.predict + grounding.evaluate give with those overrides; bad input is one error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grounding.calibrate import EncodedVideo, calibrate, figures
from grounding.inference import CropGeometry, InferenceConfig
from grounding.readers.groundingyoutube import GytVideo
from tests.conftest import ROOT

BOX = [2.0, 2.0, 6.0, 6.0]          # the object's box in source pixels (an 8x8 source, a 4x4 heatmap grid)


def _video(flicker: bool) -> tuple[GytVideo, EncodedVideo]:
    """20 seconds: 'cut cube' over seconds 4-13, background around it; the model's scores follow the truth, but
    with `flicker` the other description wins seconds 8 and 9 (a split segment: two short tubes, both poor)."""
    pool = ["cut cube", "stir bowl"]
    truth = GytVideo("v", [(4, 13, "cut cube")], {t: ("cut cube", BOX) for t in range(4, 14)}, pool, (8, 8))
    scores = np.tile([-1.0, -1.0], (20, 1))
    scores[4:14, 0] = 2.0
    if flicker:
        scores[8:10] = [1.0, 3.0]
    heat = np.full((4, 4), 0.2)
    heat[1:3, 1:3] = 1.0                                   # the box above: cells 1-2 of the 4x4 grid
    heats = np.stack([np.stack([heat] * 20)] * 2)
    return truth, EncodedVideo("v", np.arange(20.0), CropGeometry(8, 8, 4), pool, scores, heats)


def test_smoothing_is_chosen_only_where_it_mends_the_split():
    base = InferenceConfig(normalize="none", tau=0.0)
    grid = {"smooth": (1, 7)}
    truth, enc = _video(flicker=False)
    clean = calibrate({"v": truth}, [enc], base, grid=grid)
    assert clean["chosen"] == {"smooth": 1}                            # a tie keeps the paper's per-frame decoding
    assert clean["best"]["mAP@0.5"] == pytest.approx(100.0)
    truth, enc = _video(flicker=True)
    flick = calibrate({"v": truth}, [enc], base, grid=grid)
    assert flick["paper"]["mAP@0.5"] == pytest.approx(0.0)            # two pieces of 4 seconds: IoU 0.4 each
    assert flick["chosen"] == {"smooth": 7} and flick["overrides"] == ["inference.smooth=7"]
    assert flick["best"]["mAP@0.5"] == pytest.approx(100.0)
    assert [r["smooth"] for r in flick["candidates"]] == [1, 7]
    # the box threshold is chosen by the same objective: 0.5 keeps the object's 2x2 cells, 0.01 the whole grid
    box = calibrate({"v": truth}, [enc], base, grid={"smooth": (7,), "box_threshold": (0.01, 0.5)})
    assert box["chosen"]["box_threshold"] == 0.5
    assert figures({"v": truth}, [enc], InferenceConfig(normalize="none", smooth=7, box_threshold=0.01)
                   )["mAP@0.5"] == pytest.approx(0.0)                # the whole 8x8 frame: box IoU 1/4


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from shards.synthetic import SyntheticConfig, generate
    from tests.pretrain_fixtures import tiny_export

    d = tmp_path_factory.mktemp("calibrate")
    generate(SyntheticConfig(out=str(d / "corpus"), n_train=0, n_test=2, min_seconds=14, max_seconds=16,
                             min_actions=1, max_actions=2).validate())
    # a labelled split that is not named test (calibrating on a test split is refused): the generator's test split
    # renders its truth in full, so it serves as the labelled split here
    os.rename(d / "corpus" / "test", d / "corpus" / "labelled")
    return {"split": str(d / "corpus" / "labelled"), "export": tiny_export(str(d / "export")), "dir": d}


def test_cli_figure_is_what_predict_and_evaluate_give(tiny):
    small = ["--videos", "2", "inference.batch_frames=7"]       # a batch size that splits the videos' frames
    r = _cli("grounding.calibrate", "--checkpoint", tiny["export"], "--split", tiny["split"], *small)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["videos"] == 2 and len(out["candidates"]) == 4 * 2 * 2 * 2 * 5
    assert out["best"][out["objective"]] == max(c[out["objective"]] for c in out["candidates"])
    for name, overrides in (("best", out["overrides"]), ("paper", [])):
        pred = str(tiny["dir"] / f"{name}.json")
        r = _cli("grounding.predict", "--checkpoint", tiny["export"], "--videos", tiny["split"], "--out", pred,
                 "inference.batch_frames=7", *overrides)
        assert r.returncode == 0, r.stderr
        r = _cli("grounding.evaluate", "groundingyoutube", "--annotations", tiny["split"], "--predictions", pred)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.strip().splitlines()[-1])
        for k in ("mAP@0.1:0.5", "mAP@0.5", "IoU+Point", "action_acc"):
            assert got[k] == pytest.approx(out[name][k], abs=1e-3), (name, k)


@pytest.mark.parametrize("args, message", [
    (["--split", "/nonexistent/split"], "--split [/nonexistent/split]: not a folder"),
    (["--objective", "accuracy"], "--objective [accuracy]: must be one of"),
    (["--videos", "0"], "--videos [0]: must be >= 1"),
    (["inference.box_threshold=2"], "box_threshold"),
    (["--out", "tests"], "--out [tests]: is a folder"),
])
def test_bad_input_is_one_error_line(tiny, args, message):
    base = {"--checkpoint": tiny["export"], "--split": tiny["split"]}
    for k in [a for a in args if a.startswith("--")]:
        base.pop(k, None)
    argv = [x for kv in base.items() for x in kv] + args
    r = _cli("grounding.calibrate", *argv)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
