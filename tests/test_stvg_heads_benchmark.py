"""benchmarks/stvg_heads.py: the per-seed aggregation and its refusal of a malformed row (its finetunes are the
finetune tests' business; the figures it prints are in docs/stvg.md and the heads' docs)."""
import subprocess
import sys

import pytest

from benchmarks.stvg_heads import aggregate


def test_mean_and_std_over_seeds_per_sentence_type():
    runs = [{"metrics": {"m_vIoU": 2.0, "declarative_m_vIoU": 1.0, "interrogative_m_vIoU": 3.0, "m_tIoU": 10.0}},
            {"metrics": {"m_vIoU": 4.0, "declarative_m_vIoU": 3.0, "interrogative_m_vIoU": 5.0, "m_tIoU": 20.0}},
            {"error": "exit 2: error: something"}]                        # a failed seed is not averaged in
    out = aggregate(runs)
    assert out["seeds_done"] == 2
    assert out["mean"] == {"m_tIoU": 15.0, "m_vIoU": 3.0, "declarative_m_vIoU": 2.0, "interrogative_m_vIoU": 4.0}
    assert out["std"]["m_vIoU"] == 1.0 and out["std"]["m_tIoU"] == 5.0


@pytest.mark.parametrize("row", [["only_a_name"], ["name", "configs/finetune/no_such.yaml"]])
def test_a_malformed_row_is_one_error_line(tmp_path, row):
    p = subprocess.run([sys.executable, "-m", "benchmarks.stvg_heads", "--corpus", str(tmp_path), "--export",
                        str(tmp_path), "--out", str(tmp_path / "o"), "--head", *row], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: --head") and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
