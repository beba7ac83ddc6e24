"""The STVG demo (`python -m cluster.demo --config configs/demo_stvg.yaml`, `make demo-stvg`, issue 34): its config
parses and validates, and the demo runs end to end on a tiny STVG corpus with a few steps: baselines and the three
heads in one vidstg table, and a picture of predicted vs true tubes per shown query."""
from __future__ import annotations

import json
import os

import pytest

from common import config as C
from conftest import ROOT

TINY = ["n_train=6", "n_test=2", "size=32", "window_frames=4", "pretrain=configs/pretrain/tiny.yaml",
        "stvg_steps=2", "stvg_tubes=3", "pictures=1"]


def test_stvg_demo_config_parses_and_names_the_stvg_stages():
    from cluster.demo import DemoConfig, corpus_config, stvg_head_config

    cfg = C.load(DemoConfig, os.path.join(ROOT, "configs", "demo_stvg.yaml"), []).validate()
    assert cfg.mode == "stvg" and cfg.stvg_heads == ["vcma", "winner", "fsm", "fsm_when"]
    assert corpus_config(cfg).mode == "stvg"
    assert all(os.path.isfile(stvg_head_config(h)) for h in cfg.stvg_heads)
    with pytest.raises(C.ConfigError, match="stvg_heads"):
        C.load(DemoConfig, os.path.join(ROOT, "configs", "demo_stvg.yaml"), ["stvg_heads=[nohead]"]).validate()
    with pytest.raises(C.ConfigError, match="export"):
        C.load(DemoConfig, os.path.join(ROOT, "configs", "demo_stvg.yaml"), ["export=/nonexistent"]).validate()
    with pytest.raises(C.ConfigError, match="mode"):
        C.load(DemoConfig, None, ["mode=video"]).validate()


def test_stvg_demo_runs_end_to_end_on_a_tiny_corpus(tmp_path, ray_cluster, capsys):
    """In process on the session's Ray (cluster.demo's init_ray joins it), from a given export (a random-init
    stg-micro): sharding and Ray Train pretraining are the instructional demo's stages, run end to end by
    tests/test_demo_logs.py; here they would cost minutes on the loaded 2 cores."""
    from cluster import demo
    from tubes.baselines import random_export

    out = tmp_path / "demo"
    export = random_export(str(tmp_path / "export"))
    assert demo.main(["--config", os.path.join(ROOT, "configs", "demo_stvg.yaml"), "--out", str(out), *TINY,
                      f"export={export}"]) == 0
    log = capsys.readouterr().out
    for header in ("export given", "=== 4s. STVG baselines", "=== 5s. STVG heads", "=== 6s. pictures"):
        assert header in log, header
    summary = json.load(open(out / "summary.json"))
    table = summary["metrics"]
    heads = [h for head in ("VCMA (weak)", "WINNER (weak)", "FSM (supervised)", "FSM with when-score (supervised)")
             for h in (head, f"{head} + activity span")]
    rows = ["random span + random tube", "zero-shot (Sec. 3.5 span + best word-region tube)",
            "zero-shot tube + its activity span", *heads, "zero-shot tube given the true span",
            "best tube given the true span (ceiling)"]
    assert list(table) == rows
    for name, row in table.items():
        assert all(0 <= row[k] <= 100 for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")), (name, row)
    # given the true span, the temporal half is exact; the best tube bounds the zero-shot choice
    assert table["best tube given the true span (ceiling)"]["m_tIoU"] == 100
    assert table["best tube given the true span (ceiling)"]["m_vIoU"] >= table["zero-shot tube given the true span"]["m_vIoU"]
    assert len(summary["pictures"]) == 1 and all(os.path.getsize(p) > 0 for p in summary["pictures"])
    from PIL import Image

    w, h = Image.open(summary["pictures"][0]).size
    assert h > 11 * 32  # a row per method: truth, the two zero-shot rows and the four heads under both span rules
    # the activity rows are the heads' runs predicted again (no training): in their own folders beside each run
    for head in ("vcma", "winner", "fsm", "fsm_when"):
        again = json.load(open(out / "finetune" / head / "span-activity" / "eval.json"))
        assert again["span"]["rule"] == "activity" and again["counts"]["missing_predictions"] == 0
