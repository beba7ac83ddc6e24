"""benchmarks/experiments/stvg_heads.py: the per-seed aggregation (finetune.stvg_rows) and its refusal of a malformed
row (its finetunes are the finetune tests' business; the figures it prints are in docs/stvg.md and the heads' docs)."""
import subprocess
import sys

import pytest

from finetune.stvg_rows import aggregate


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
    p = subprocess.run([sys.executable, "-m", "benchmarks.experiments.stvg_heads", "--corpus", str(tmp_path),
                        "--export", str(tmp_path), "--out", str(tmp_path / "o"), "--head", *row], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: --head") and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("module", ["benchmarks.experiments.stvg_heads", "benchmarks.experiments.vcma_rows"])
def test_a_missing_corpus_or_export_is_one_error_line_before_any_run(tmp_path, module):
    row = ["--head", "x", "configs/finetune/fsm_synthetic.yaml"] if module.endswith("heads") else ["--row", "x"]
    for corpus, export, what in [(tmp_path / "none", tmp_path, "--corpus"),
                                 (tmp_path / "c", tmp_path / "none", "--export")]:
        (tmp_path / "c" / "test" / "truth").mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / "test" / "truth" / "vidstg.json").write_text("{}")
        p = subprocess.run([sys.executable, "-m", module, "--corpus", str(corpus), "--export", str(export),
                            "--out", str(tmp_path / "o"), *row], capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {what}"), p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
