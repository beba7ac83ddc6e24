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
