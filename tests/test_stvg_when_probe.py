"""benchmarks/diagnostics/stvg_when_probe.py: its ROC area (grounding.metrics.roc) on hand numbers, and a bad argument
is one error line."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from grounding.metrics.roc import auc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_auc_hand_numbers():
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    # positives 0.3 and 0.1 against negatives 0.2 and 0.1: wins 0.3>0.2, 0.3>0.1, tie 0.1=0.1 (a half) -> 2.5 / 4
    assert auc(np.array([0.2, 0.1, 0.3, 0.1]), y) == 0.625
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize("args", [["--batches", "0"], ["--held-out", "5", "--fold", "5"]])
def test_bad_argument_is_one_error_line(tmp_path, args):
    out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_when_probe", *args,
                          f"checkpoint={tmp_path}/none", f"dataset.root={tmp_path}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and args[-2] in lines[0], \
        out.stderr


def test_span_by_object_splits_queries_by_the_object_their_boxes_follow(tmp_path):
    import json

    box = lambda x: {"bbox": [x, 0, 10, 10]}  # noqa: E731  (x, y, w, h)
    truth = {"videos": [{"video_id": "a", "original_video_id": "v", "target_id": 1, "tube_start_frame": 0,
                         "tube_end_frame": 4},
                        {"video_id": "b", "original_video_id": "v", "target_id": 2, "tube_start_frame": 2,
                         "tube_end_frame": 6}],
             "trajectories": {"v": {"1": {str(f): box(0) for f in range(8)}, "2": {str(f): box(50) for f in range(8)}}}}
    preds = {"a": {"sted": [0, 2], "boxes": {str(f): [0, 0, 10, 10] for f in range(2)}},     # on 1: tIoU 2/4
             "b": {"sted": [2, 6], "boxes": {str(f): [0, 0, 10, 10] for f in range(2, 6)}}}  # on 1, not 2: 4/4
    (tmp_path / "test" / "truth").mkdir(parents=True)
    (tmp_path / "test" / "truth" / "vidstg.json").write_text(json.dumps(truth))
    (tmp_path / "p.json").write_text(json.dumps(preds))
    run = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_span_by_object", "--corpus",
                          str(tmp_path), f"head={tmp_path / 'p.json'}"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)["rows"]["head"]
    assert out == {"queries": 2, "on_object_share": 0.5, "m_tIoU_on_object": 50.0, "m_tIoU_off_object": 100.0,
                   "m_tIoU": 75.0, "median_length_ratio": 0.75}


def test_when_sources_without_a_corpus_is_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_when_sources", "--corpus",
                          str(tmp_path), "--export", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --corpus"), out.stderr


def test_when_text_bad_argument_is_one_error_line(tmp_path):
    for args in (["--epochs", "0"], []):
        out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_when_text", "--corpus", str(tmp_path),
                              "--export", str(tmp_path), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), out.stderr


def test_when_tube_refuses_a_folder_that_is_no_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_when_tube", "--run", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "config.yaml" in lines[0]


def test_weak_when_without_a_corpus_is_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_weak_when", "--corpus", str(tmp_path),
                          "--export", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --corpus"), out.stderr


def _when_rows(seed: int, batches: int = 12, b: int = 8, t: int = 24, n: int = 4, d: int = 16):
    """Rows as stvg_when_probe.when_rows makes them: region n on tube n; row i's referred tube has its verb's look
    added inside its span, another tube has another verb's look elsewhere (an action the sentence does not ask)."""
    from finetune.heads.when_score import ParsedVerbs

    g = torch.Generator().manual_seed(seed)
    look = torch.randn(3, d, generator=g) * 2.0                    # verbs 1, 2, 3 (0: none parsed)
    rows = []
    for _ in range(batches):
        regions = torch.randn(b, 1, n, d, generator=g).expand(b, t, n, d).clone()
        regions += 0.3 * torch.randn(b, t, n, d, generator=g)
        inside = torch.zeros(b, t, dtype=torch.bool)
        pos = torch.zeros(b, t, n, dtype=torch.bool)
        verbs = torch.randint(1, 4, (b,), generator=g)
        for i in range(b):
            k, a = int(torch.randint(n, (1,), generator=g)), int(torch.randint(t - 8, (1,), generator=g))
            regions[i, a:a + 8, k] += look[verbs[i] - 1]
            other, o = (k + 1) % n, (a + 12) % (t - 6)
            regions[i, o:o + 6, other] += look[verbs[i] % 3]      # another verb, another time
            inside[i, a:a + 8] = True
            pos[i, a:a + 8, k] = True
        ok = torch.ones(b, t, n, dtype=torch.bool)
        rows.append({"regions": regions, "tube_ids": torch.arange(n).expand(b, t, n).clone(), "m": n, "ok": ok,
                     "frames": torch.ones(b, t, dtype=torch.bool), "inside": inside, "pos": pos,
                     "parsed": ParsedVerbs(verbs, torch.ones(b, 1, dtype=torch.long))})
    return rows


def test_learnt_when_score_probe_finds_the_asked_action_on_held_out_rows():
    """The learnt when-score probe (the spatial half not given) trains on held-in rows only and scores held-out
    ones: on rows where the asked verb's look sits on one tube inside the span and another verb's on another tube
    outside it, it tells the span's frames (ROC area near 1), pooled and per query; untrained, it does not."""
    from finetune.when_probe import learnt_when_probe

    rows = _when_rows(0)
    held = [torch.arange(len(r["inside"])) % 4 == 0 for r in rows]
    out = learnt_when_probe(rows, held, steps=300)
    for words in ("verb", "target"):
        for way in ("best_region", "peak_tube"):
            key = f"auc_when_score_{words}_{way}"
            assert out[f"{key}_held_out"] > 0.9 and out[f"{key}_per_query_held_out"] > 0.9, out
    untrained = learnt_when_probe(rows, held, steps=0)
    assert untrained["auc_when_score_verb_best_region_held_out"] < 0.8, untrained


def test_learnt_when_score_probe_never_trains_on_held_out_rows():
    """Every row held out: no step trains, so the probe scores as its untrained start (the held-out rows are
    never a target)."""
    from finetune.when_probe import learnt_when_probe

    rows = _when_rows(1, batches=4)
    every = [torch.ones(len(r["inside"]), dtype=torch.bool) for r in rows]
    trained, start = learnt_when_probe(rows, every, steps=200), learnt_when_probe(rows, every, steps=0)
    held_out = [k for k in start if k.endswith("held_out")]
    assert len(held_out) == 8 and [trained[k] for k in held_out] == [start[k] for k in held_out]
