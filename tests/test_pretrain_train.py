"""Pretraining under Ray Train with real DeepSpeed workers (CPU, gloo) and the real tiny model.

One straight run feeds several tests (learning, checkpoints, export); the resume run stores on the loopback S3
server; the fault run has a worker process killed by the test; the two-node run uses its own Ray
(ray.cluster_utils.Cluster) in a subprocess, as the session already holds one.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from common import fsio
from pretrain.config import load, train_settings
from trainer import checkpoint
from trainer.engine import ds_config, lr_lambda
from pretrain_fixtures import make_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "pretrain", "tiny.yaml")
STEPS = 8


def tiny(run: str, shards: str, *extra: str):
    return load(TINY, [f"run={run}", f"data.shards={shards}", f"max_steps={STEPS}", "checkpoint_every=4",
                       "log_every=1", "progress=false", "cluster.workers=2", "cluster.max_failures=2", *extra])


def history(run: str) -> list[list[dict]]:
    """Per attempt (in order of first step), the per-step records rank 0 wrote."""
    fs, path = fsio.filesystem(fsio.join(run, "logs"))
    out = []
    for name in fsio.listdir(fsio.join(run, "logs")):
        text = fsio.read_text(fsio.join(run, "logs", name))
        out.append([json.loads(line) for line in text.splitlines() if line.strip()])
    return sorted(out, key=lambda recs: (recs[0]["step"] if recs else 0, recs[0]["t"] if recs else 0))


def exported(run: str) -> dict:
    fs, path = fsio.filesystem(fsio.join(run, "export", "model.pt"))
    with fs.open(path, "rb") as f:
        return torch.load(f, map_location="cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 64 samples: one epoch is 8 steps of 2 ranks x 4
    return make_shards(str(tmp_path_factory.mktemp("shards")), shards=4, per_shard=16, frames=4, size=32,
                       bad_samples=1)


@pytest.fixture(scope="module")
def straight(ray_cluster, shards, tmp_path_factory):
    from cluster.pretrain import run_pretrain

    run = str(tmp_path_factory.mktemp("runs") / "straight")
    result = run_pretrain(tiny(run, shards))
    return run, result


def test_workers_learn(straight):
    run, result = straight
    assert result.error is None
    (attempt,) = history(run)
    assert [r["step"] for r in attempt] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in attempt]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, losses
    m = result.metrics
    assert m["step"] == STEPS and m["samples_per_s"] > 0 and 0 <= m["data_wait_frac"] < 1
    assert len(m["worker_nodes"]) == 2
    assert m["skipped.bad_jpeg"] >= 1  # the broken sample was met, counted and skipped
    assert glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
    assert os.path.exists(os.path.join(run, "config.yaml")) and os.path.exists(os.path.join(run, "deepspeed.json"))
    ds = json.load(open(os.path.join(run, "deepspeed.json")))
    assert ds["bf16"]["enabled"] is False and ds["train_batch_size"] == 8


def test_checkpoints_complete_and_pruned(straight):
    run, result = straight
    assert checkpoint.complete_steps(run) == [4, 8]  # keep_last 2
    marker = checkpoint.read_marker(run, 8)
    assert marker["world_size"] == 2 and "trainer-rank1.pt" in marker["files"]
    assert result.checkpoint is not None and result.checkpoint.path.endswith(checkpoint.tag(8))


def test_export_loads_into_the_model(straight):
    from pretrain.model import build_model
    from pretrain.model_config import ModelConfig
    from common.config import from_dict

    run, _ = straight
    state = exported(run)
    cfg = from_dict(ModelConfig, json.load(open(os.path.join(run, "export", "model_config.json"))))
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(fresh[k], state[k]) for k in state)  # trained weights, not the initial ones


def test_resume_is_exact_on_s3(straight, shards, s3_bucket):
    """N steps straight == N/2 steps, stop, resume, N/2 steps (run storage on S3)."""
    from cluster.pretrain import run_pretrain

    straight_run, _ = straight
    run = f"{s3_bucket}/runs/resumed"
    first = run_pretrain(tiny(run, shards, f"stop_at_step={STEPS // 2}", "export=false"))
    assert first.error is None and checkpoint.complete_steps(run) == [STEPS // 2]
    # a save that died half-way must be ignored on resume
    fsio.write_bytes_atomic(fsio.join(checkpoint.url_of(run, STEPS // 2 + 2), "mp_rank_00_model_states.pt"), b"x")
    second = run_pretrain(tiny(run, shards))
    assert second.error is None
    attempts = history(run)
    assert [a[0]["step"] for a in attempts] == [1, STEPS // 2 + 1]
    straight_losses = [r["loss"] for r in history(straight_run)[0]]
    resumed_losses = [r["loss"] for r in attempts[0] + attempts[1]]
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-6)
    a, b = exported(straight_run), exported(run)
    assert a.keys() == b.keys()
    diffs = {k: (b[k].double() - a[k].double()).abs().max().item() for k in a}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-6, (worst, diffs[worst], sum(d > 1e-6 for d in diffs.values()), len(diffs))


def test_killed_worker_restarts_from_last_checkpoint(ray_cluster, shards, tmp_path):
    from cluster.pretrain import run_pretrain

    run = str(tmp_path / "fault")
    steps, every = 16, 4
    cfg = tiny(run, shards, f"max_steps={steps}", f"checkpoint_every={every}", "export=false")
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not checkpoint.complete_steps(run):
            time.sleep(0.05)
        logs = glob.glob(os.path.join(run, "logs", "attempt-*.jsonl"))
        if logs:
            pid = int(logs[0].rsplit("-", 1)[1].split(".")[0])  # rank 0's process
            killed["at"] = checkpoint.complete_steps(run)[-1]
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    t.start()
    result = run_pretrain(cfg)
    t.join(timeout=5)
    assert "at" in killed and result.error is None
    attempts = history(run)
    assert len(attempts) == 2, [(a[0]["step"], a[-1]["step"]) for a in attempts]
    before, after = attempts
    resumed_at = after[0]["step"] - 1
    # restarted exactly after a complete checkpoint, no earlier: nothing before it ran twice
    assert resumed_at % every == 0 and resumed_at >= killed["at"]
    assert before[-1]["step"] >= resumed_at
    assert [r["step"] for r in after] == list(range(resumed_at + 1, steps + 1))
    assert result.metrics["step"] == steps
    assert checkpoint.latest(run) == steps


def test_two_nodes(shards, tmp_path):
    """2 nodes x 1 worker on a ray.cluster_utils.Cluster (its own Ray, hence a subprocess)."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from ray.cluster_utils import Cluster
        from cluster.pretrain import run_pretrain
        from test_pretrain_train import tiny
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cfg = tiny({str(tmp_path / 'two')!r}, {shards!r}, "max_steps=2", "checkpoint_every=2", "export=false",
                   "cluster.address=" + cluster.address, "cluster.placement=STRICT_SPREAD")
        res = run_pretrain(cfg)
        print("RESULT", json.dumps({{"error": str(res.error) if res.error else None, "metrics": res.metrics}}))
        import ray; ray.shutdown(); cluster.shutdown()
    """)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out["error"] is None and out["metrics"]["step"] == 2
    assert len(set(out["metrics"]["worker_nodes"])) == 2  # one rank per node


# --- configuration pieces (no workers) ---------------------------------------------------------------------

def test_lr_schedule():
    f = [lr_lambda(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))  # cosine never rises after warmup
    assert f[20] == pytest.approx(0.1)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_files(stage, shards):
    cfg = load(TINY, [f"data.shards={shards}", f"deepspeed=configs/deepspeed/zero{stage}.json",
                      "optim.grad_accum=3", "optim.grad_clip=0.5"])
    cpu = ds_config(train_settings(cfg), world=2, gpu=False)
    assert cpu["zero_optimization"]["stage"] == stage and cpu["train_batch_size"] == cfg.data.micro_batch * 3 * 2
    assert cpu["gradient_clipping"] == 0.5 and not cpu["bf16"]["enabled"] and "optimizer" not in cpu
    gpu = ds_config(train_settings(cfg), world=2, gpu=True)
    assert gpu["bf16"]["enabled"]
    with pytest.raises(ValueError, match="GPU"):
        ds_config(train_settings(load(TINY, [f"data.shards={shards}", "precision=bf16"])), world=1, gpu=False)
    dsopt = ds_config(train_settings(load(TINY, [f"data.shards={shards}", "optim.optimizer=deepspeed", "optim.lr=0.01",
                                                 f"deepspeed=configs/deepspeed/zero{stage}.json"])), world=1, gpu=True)
    assert dsopt["optimizer"]["params"]["lr"] == 0.01


def test_only_complete_checkpoints_count(tmp_path):
    run = str(tmp_path)
    for step, done in [(2, True), (4, True), (6, False), (8, True), (10, False)]:
        os.makedirs(os.path.join(run, "checkpoints", checkpoint.tag(step)))
        if done:
            fsio.write_json_atomic(os.path.join(run, "checkpoints", checkpoint.tag(step), "complete"), {})
    assert checkpoint.complete_steps(run) == [2, 4, 8] and checkpoint.latest(run) == 8
    checkpoint.prune(run, keep_last=1)
    # old ones and the dead partial one go; a newer unmarked folder may be a save in progress and stays
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == [checkpoint.tag(8), checkpoint.tag(10)]
