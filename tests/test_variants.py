"""benchmarks/experiments/variants.py: the variants are the corpus' own generator knobs with one thing changed
(grounding.variants), the ratios and their 10% flags are right on hand numbers, a real run prints one JSON object,
bad input is one error line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from grounding import variants as V
from shards.synthetic import SyntheticConfig
from tests.conftest import ROOT


def test_ratio_and_flag_on_hand_numbers():
    base = {"action_acc": 40.0, "pointing_game": 70.0, "mAP@0.5": 0.0, "mAP@0.3": 4.0, "action_x_chance": 1.6}
    row = {"action_acc": 36.0, "pointing_game": 62.0, "mAP@0.5": 1.0, "mAP@0.3": 4.6, "action_x_chance": 1.2}
    r = V.ratios(base, row)
    assert r["action_acc"] == {"ratio": 0.9, "within_10pct": True}             # exactly 10% down: within
    assert r["pointing_game"] == {"ratio": 0.8857, "within_10pct": False}
    assert r["mAP@0.3"] == {"ratio": 1.15, "within_10pct": False}              # 15% up is outside too
    assert r["action_x_chance"] == {"ratio": 0.75, "within_10pct": False}
    assert r["mAP@0.5"] == {"ratio": None, "within_10pct": None}               # in-distribution 0: undefined
    assert r["IoU+Point"] == {"ratio": None, "within_10pct": None}             # missing figure
    assert V.with_chance_ratio({"action_acc": 51.6, "action_chance": 25.8})["action_x_chance"] == 2.0


def test_targets_on_hand_numbers():
    row = {"action_acc": 75.0, "mAP@0.1:0.5": 27.99, "mAP@0.5": 14.5, "pointing_game": 69.0}
    t = V.targets(row, {"seed": {"action_acc": True, "mAP@0.5": None}, "longer": {"action_acc": True}})
    assert [t[k]["met"] for k in ("action_acc", "mAP@0.1:0.5", "mAP@0.5", "pointing_game")] == [True, False, True, False]
    assert t["mAP@0.5"] == {"value": 14.5, "target": 14.0, "met": True} and t["variants_within_10pct"] is True
    assert V.targets(row, {"seed": {"action_acc": False}})["variants_within_10pct"] is False
    assert V.targets(row, {})["variants_within_10pct"] is None


def test_each_variant_changes_one_knob_and_validates(tmp_path):
    base = SyntheticConfig(out=str(tmp_path))
    assert V.variant_overrides("seed", base) == {"seed": 1}
    assert V.variant_overrides("longer", base) == {"min_seconds": 48, "max_seconds": 80}
    assert V.variant_overrides("more_objects", base) == {"min_objects": 5, "max_objects": 5}
    assert V.variant_overrides("smaller_objects", base) == {"min_object_size": 0.132, "max_object_size": 0.18}
    import dataclasses

    for name in V.VARIANTS:
        dataclasses.replace(base, **V.variant_overrides(name, base)).validate()
    full = dataclasses.replace(base, min_objects=5, max_objects=5)
    with pytest.raises(V.UserError, match="already has 5 objects"):
        V.variant_overrides("more_objects", full)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmarks.experiments.variants", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from shards.synthetic import generate
    from tests.pretrain_fixtures import tiny_export

    d = tmp_path_factory.mktemp("variants")
    generate(SyntheticConfig(out=str(d / "corpus"), n_train=0, n_test=2, min_seconds=14, max_seconds=16,
                             min_actions=1, max_actions=2).validate())
    return {"test": str(d / "corpus" / "test"), "export": tiny_export(str(d / "export")), "out": str(d / "out")}


def test_one_json_object_with_figures_and_ratios_of_a_real_run(tiny):
    proc = _run("--export", tiny["export"], "--test", tiny["test"], "--out", tiny["out"], "--videos", "1",
                "--only", "longer")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    rep = json.loads(lines[0])
    assert set(rep["figures"]) == {"in_distribution", "longer"} and rep["videos_per_variant"] == 1
    assert rep["splits"]["longer"]["knobs"] == {"min_seconds": 28, "max_seconds": 32}
    made = json.load(open(os.path.join(tiny["out"], "longer", "corpus.json")))["config"]
    assert made["n_test"] == 1 and made["n_train"] == 0 and made["min_seconds"] == 28 and made["seed"] == 0
    assert len(json.load(open(os.path.join(rep["splits"]["longer"]["test"], "truth", "ground_seg.json")))) == 1
    base, row = rep["figures"]["in_distribution"], rep["figures"]["longer"]
    for k in ("action_acc", "pointing_game"):
        assert 0 <= row[k] <= 100
        want = None if not base[k] else round(row[k] / base[k], 2)
        got = rep["ratios"]["longer"][k]
        assert (got is None) == (want is None) and (got is None or abs(got - want) < 0.01)
    flags = rep["within_10pct"]["longer"]
    assert rep["all_within_10pct"] == (not any(v is False for v in flags.values()))
    assert sorted(rep["outside_10pct"]) == sorted(f"longer:{k}" for k, v in flags.items() if v is False)
    assert rep["targets"]["action_acc"] == {"value": base["action_acc"], "target": 75.0,
                                            "met": base["action_acc"] >= 75.0}
    assert rep["targets"]["variants_within_10pct"] == rep["all_within_10pct"] and rep["calibration"] is None


def test_calibrated_decoding_is_applied_to_every_split(tiny):
    out = tiny["out"] + "-cal"
    # the tiny corpus has no train split: its test split stands in for one here (a user passes the train split)
    proc = _run("--export", tiny["export"], "--test", tiny["test"], "--out", out, "--videos", "1", "--only", "seed",
                "--calibrate", tiny["test"], "--calibrate-videos", "2")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    cal = rep["calibration"]
    assert cal["videos"] == 2 and len(cal["overrides"]) == 5
    assert all(o.startswith("inference.") for o in cal["overrides"])
    # the in-distribution split is the calibration split here, so its figure is the calibration's own
    assert rep["figures"]["in_distribution"]["mAP@0.1:0.5"] == pytest.approx(cal["train"]["chosen"]["mAP@0.1:0.5"],
                                                                              abs=0.01)


@pytest.mark.parametrize("args, says", [
    (["--export", "/nonexistent/export"], "no model.pt"),
    (["--only", "bigger"], "unknown variant"),
    (["--calibrate", "/nonexistent/train"], "not a split with hidden truth"),
])
def test_bad_input_is_one_error_line_exit_2(tiny, args, says):
    base = {"--export": tiny["export"], "--test": tiny["test"], "--out": tiny["out"] + "-bad"}
    for i in range(0, len(args) - 1, 2):
        if args[i] in base:
            base[args[i]] = args[i + 1]
    extra = [] if args[0] in base else args
    proc = _run(*[x for kv in base.items() for x in kv], *extra)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    assert not os.path.exists(tiny["out"] + "-bad")  # nothing written before the input is checked
