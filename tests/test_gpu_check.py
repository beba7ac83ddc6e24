"""benchmarks/gpu/check.py: its no-GPU answer, its code path on tiny CPU sizes, and the bare-machine contract (it
runs with ray, deepspeed, webdataset, faiss, fsspec and s3fs unimportable), each in a fresh interpreter started
the way docs/gpu_check.md runs it: `python3 -m benchmarks.gpu.check` from the checkout's root."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from trainer.device_peaks import peak_bf16_tflops

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
MODULE = "benchmarks.gpu.check"
BLOCKED = ("ray", "deepspeed", "webdataset", "faiss", "fsspec", "s3fs")

# Put first on sys.meta_path of a fresh interpreter: importing any of BLOCKED (or a submodule) raises ImportError,
# as on a machine where they are not installed. It then reports which of them it refused, and runs the module.
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, json, runpy, sys
    BLOCKED = {BLOCKED!r}
    class Bare(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{{name}}: not on the bare GPU machine")
    sys.meta_path.insert(0, Bare())
    refused = {{}}
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError as e:
            refused[name] = str(e)
    print(json.dumps({{"refused": refused}}), file=sys.stderr)
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
""")


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env.pop("PYTHONPATH", None)  # the project is found from the checkout's root, as `python3 -m` there does
    return env


def _json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


def test_without_a_gpu_it_says_so_and_exits_0():
    out = subprocess.run([sys.executable, "-m", MODULE], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=_env(CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr
    res = _json_line(out.stdout)
    assert res["benchmark"] == "gpu_check" and res["measured"] is False
    assert "no CUDA device" in res["reason"]
    assert not any(k in res for k in ("sinkhorn", "train", "regions", "linking"))


def test_cpu_smoke_runs_every_section_on_a_bare_machine(tmp_path):
    out_file = tmp_path / "check.json"
    out = subprocess.run([sys.executable, "-c", BLOCKER, MODULE, "--cpu-smoke", "--out", str(out_file)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr[-3000:]
    # every package was refused by the blocker itself (whether or not it is installed here), so the run below
    # would have failed had gpu_check or a project module imported one of them
    refused = json.loads(next(ln for ln in out.stderr.splitlines() if ln.startswith('{"refused"')))["refused"]
    assert refused == {name: f"{name}: not on the bare GPU machine" for name in BLOCKED}
    res = _json_line(out.stdout)
    assert json.loads(out_file.read_text()) == res
    assert res["measured"] is False and "cpu-smoke" in res["reason"] and res["device"] == "cpu"
    assert set(res["seconds"]) >= {"imports", "sinkhorn", "train", "regions", "linking", "total"}

    sk = res["sinkhorn"]
    assert sk["speedup"] > 0 and sk["per_sample_ms"] > 0 and sk["batched_ms"] > 0
    assert sk["identical"] is True and sk["same_selection"] == 1.0 and sk["same_selection_fp64"] == 1.0

    tr = res["train"]
    assert tr["samples_per_s"] > 0 and tr["flops_per_step"] > 0 and tr["achieved_tflops"] >= 0
    assert tr["trainable_params"] < tr["params"]  # the config's partial freeze
    assert tr["mfu"] is None and tr["peak_bf16_tflops"] is None  # no bf16 peak for a CPU
    cmp = tr["bf16_vs_fp32"]
    assert len(cmp["losses_bf16"]) == len(cmp["losses_fp32"]) == cmp["steps"] >= 2
    assert cmp["finite"] and all(math.isfinite(x) for x in cmp["losses_bf16"] + cmp["losses_fp32"])
    assert cmp["losses_bf16"] != cmp["losses_fp32"]  # two precisions really ran
    assert cmp["agree"] is (cmp["max_rel_diff"] <= cmp["rtol"] and cmp["mean_rel_diff"] <= cmp["mean_rtol"])
    assert cmp["agree"]  # the tiny model's 3 steps stay well inside the GPU tolerance (0.5% at most seen)

    (row,) = res["regions"]["rows"]
    assert row["finite"] and row["region_features_s"] > 0 and row["roi_align_max_diff"] == 0.0  # both on CPU
    (link,) = res["linking"]["rows"]
    assert 1 <= link["tubes"] <= 2 and link["seconds"] > 0


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA GH200 480GB", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("Tesla T4", None), ("cpu", None),
])
def test_peak_table_matches_the_most_specific_name(name, tflops):
    assert peak_bf16_tflops(name) == tflops


@pytest.mark.parametrize("argv", [["--sections", "sinkhorn,nope"], ["--sections", ","], ["--micro-batch", "1"]])
def test_bad_arguments_are_one_error_line_and_exit_2(argv):
    out = subprocess.run([sys.executable, "-m", MODULE, *argv], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""))
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), out.stderr


def test_flops_only_counts_a_training_step_and_an_embedding():
    out = subprocess.run([sys.executable, "-m", MODULE, "--flops-only", "--cpu-smoke"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr[-3000:]
    res = _json_line(out.stdout)["train"]
    assert res["flops_per_step"] == res["flops_per_sample"] * res["micro_batch"] > 0
    # the embedding encodes each window frame once without gradients; a training sample also encodes the selected
    # frames again with gradients and runs the backward
    assert 0 < res["embed_flops_per_clip"] < res["flops_per_sample"]
    assert 0 < res["trainable_params"] < res["params"]
