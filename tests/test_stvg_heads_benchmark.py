"""benchmarks/experiments/stvg_heads.py: the per-seed aggregation (finetune.stvg_rows) and its refusal of a malformed
row (its finetunes are the finetune tests' business; the figures it prints are in docs/stvg.md and the heads' docs)."""
import json
import os
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


def test_every_run_failing_is_not_exit_0(tmp_path):
    """Issue 29: when every finetune of every row failed, the error was only inside the JSON and the exit 0. The
    inputs pass the checks made before any run (a real export, a corpus folder with its truth file) and fail inside
    each run (the corpus holds no videos, no queries)."""
    from tests.pretrain_fixtures import tiny_export

    corpus = tmp_path / "c"
    (corpus / "test" / "truth").mkdir(parents=True)
    (corpus / "test" / "truth" / "vidstg.json").write_text("{}")
    export = tiny_export(str(tmp_path / "e"))
    p = subprocess.run([sys.executable, "-m", "benchmarks.experiments.stvg_heads", "--corpus", str(corpus), "--export",
                        export, "--out", str(tmp_path / "o"), "--no-baselines", "--seeds", "0",
                        "--head", "x", "configs/finetune/fsm_synthetic.yaml"],
                       capture_output=True, text=True)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode != 0 and len(errors) == 1 and "every finetune run failed" in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["heads"]["x"]["seeds_done"] == 0


@pytest.fixture(scope="module")
def stvg_inputs(tmp_path_factory):
    """A folder that is no corpus, a temporal (mode=steps) corpus, an STVG one (as far as the refusals look), an
    export cut short."""
    from pretrain_fixtures import tiny_export

    root = tmp_path_factory.mktemp("stvg_bench")
    for name, truth in (("temporal", "vid2step.json"), ("stvg", "vidstg.json")):
        (root / name / "test" / "truth").mkdir(parents=True)
        (root / name / "corpus.json").write_text("{}")
        (root / name / "test" / "truth" / truth).write_text("{}")
    export = tiny_export(str(root / "export"))
    (root / "trunc").mkdir()
    blob = open(os.path.join(export, "model.pt"), "rb").read()
    (root / "trunc" / "model.pt").write_bytes(blob[: len(blob) // 2])
    (root / "trunc" / "model_config.json").write_text(open(os.path.join(export, "model_config.json")).read())
    return root


@pytest.mark.parametrize("case,args,needle", [
    ("missing-corpus", ["--corpus", "{root}/nowhere"], "nowhere"),
    ("temporal-corpus", ["--corpus", "{root}/temporal"], "not an STVG corpus"),
    ("truncated-export", ["--corpus", "{root}/stvg", "--export", "{root}/trunc"], "model.pt"),
    ("split-val", ["--corpus", "{root}/stvg", "--split", "val"], "--split"),
    ("tubes-0", ["--corpus", "{root}/stvg", "--tubes", "0"], "--tubes"),
])
def test_stvg_benchmark_bad_input_is_one_error_line(stvg_inputs, case, args, needle):
    p = subprocess.run([sys.executable, "-m", "benchmarks.experiments.stvg_baselines", *[a.format(root=stvg_inputs) for a in args]],
                       capture_output=True, text=True, timeout=300)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(errors) == 1, p.stderr[-2000:]
    assert needle in errors[0], errors[0]


def test_span_rule_rows_are_parsed_and_a_bad_one_refused(tmp_path):
    from finetune.stvg_rows import span_overrides

    assert span_overrides("activity") == ("activity", ["span.rule=activity"])
    assert span_overrides("mix:0.5/5") == ("mix:0.5/5", ["span.rule=mix", "span.weight=0.5", "span.smooth=5"])
    assert span_overrides("activity@0") == ("activity@0", ["span.rule=activity", "span.tube_weight=0.0"])
    p = subprocess.run([sys.executable, "-m", "benchmarks.experiments.stvg_heads", "--corpus", str(tmp_path),
                        "--export", str(tmp_path), "--out", str(tmp_path / "o"), "--span-rules", "mix:x",
                        "--head", "x", "configs/finetune/fsm_synthetic.yaml"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: --span-rules") and len(p.stderr.strip().splitlines()) == 1
