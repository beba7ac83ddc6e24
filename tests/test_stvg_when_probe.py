"""benchmarks/diagnostics/stvg_when_probe.py: its ROC area (grounding.metrics.roc) on hand numbers, and a bad argument
is one error line."""
import os
import subprocess
import sys

import numpy as np

from grounding.metrics.roc import auc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_auc_hand_numbers():
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(np.array([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    # positives 0.3 and 0.1 against negatives 0.2 and 0.1: wins 0.3>0.2, 0.3>0.1, tie 0.1=0.1 (a half) -> 2.5 / 4
    assert auc(np.array([0.2, 0.1, 0.3, 0.1]), y) == 0.625
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_bad_argument_is_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.stvg_when_probe", "--batches", "0",
                          f"checkpoint={tmp_path}/none", f"dataset.root={tmp_path}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "--batches" in lines[0], \
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
