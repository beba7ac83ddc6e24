"""Pretraining under Ray Train with real DeepSpeed workers (CPU, gloo) and the real tiny model.

One straight run feeds several tests (learning, checkpoints, export) and is the uninterrupted reference every
interrupted run is compared with (per-step losses, final export): the resume run stores on the loopback S3
server and is pruned before it is resumed; the fault run has a worker process killed by the test; the CLI run
(`python -m cluster.pretrain` with its own local Ray, as a user starts it) has its whole Ray cluster killed, is
resubmitted (a second local Ray head with a dashboard starting mid-run beside it), and extended past its finished
max_steps. The LR is constant after warmup
(optim.min_lr_ratio=1), so a run extended to STEPS follows the schedule of one planned that long. The two-node
run uses its own Ray (ray.cluster_utils.Cluster) in a subprocess, as the session already holds one.
"""
from __future__ import annotations

import contextlib
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
from conftest import neighbour_ray, tree_digest, user_env
from pretrain_fixtures import make_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "pretrain", "tiny.yaml")
STEPS = 12
# every run of this module, as key=value overrides of tiny.yaml (the CLI run passes them on its command line)
COMMON = ("checkpoint_every=4", "log_every=1", "progress=false", "cluster.workers=2", "cluster.max_failures=2",
          "optim.min_lr_ratio=1.0")


def tiny(run: str, shards: str, *extra: str):
    return load(TINY, [f"run={run}", f"data.shards={shards}", f"max_steps={STEPS}", *COMMON, *extra])


def losses_by_step(run: str) -> dict[int, float]:
    """Each step's loss as the run finally holds it (a later attempt's record of a step replaces an earlier one)."""
    out = {}
    for attempt in history(run):
        out.update({r["step"]: r["loss"] for r in attempt})
    return out


def assert_same_export(a_run: str, b_run: str) -> None:
    a, b = exported(a_run), exported(b_run)
    assert a.keys() == b.keys()
    diffs = {k: (b[k].double() - a[k].double()).abs().max().item() for k in a}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-6, (worst, diffs[worst], sum(d > 1e-6 for d in diffs.values()), len(diffs))


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
    assert checkpoint.complete_steps(run) == [8, 12]  # keep_last 2 (Ray Train pruned step 4)
    marker = checkpoint.read_marker(run, 12)
    assert marker["world_size"] == 2 and "trainer-rank1.pt" in marker["files"]
    assert result.checkpoint is not None and result.checkpoint.path.endswith(checkpoint.tag(12))
    # Ray's run snapshot lists exactly the checkpoints that exist (a re-submitted job checks it)
    snapshot = json.load(open(os.path.join(run, "checkpoint_manager_snapshot.json")))
    listed = sorted(r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"])
    assert listed == [f"checkpoints/{checkpoint.tag(8)}", f"checkpoints/{checkpoint.tag(12)}"], listed


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


def test_resume_after_a_prune_is_exact_on_s3(straight, shards, s3_bucket):
    """N steps straight == N/3 steps (a checkpoint every 2, keep_last 1: step 2 pruned), stop, the same job
    submitted again, N steps (run storage on S3)."""
    from cluster.pretrain import run_pretrain

    straight_run, _ = straight
    run = f"{s3_bucket}/runs/resumed"
    cadence = ("checkpoint_every=2", "keep_last=1")
    first = run_pretrain(tiny(run, shards, "stop_at_step=4", "export=false", *cadence))
    assert first.error is None and checkpoint.complete_steps(run) == [4]  # step 2 pruned
    # a save that died half-way must be ignored on resume
    fsio.write_bytes_atomic(fsio.join(checkpoint.url_of(run, 6), "mp_rank_00_model_states.pt"), b"x")
    second = run_pretrain(tiny(run, shards, *cadence))
    assert second.error is None
    attempts = history(run)
    assert [a[0]["step"] for a in attempts] == [1, 5]
    straight_losses = [r["loss"] for r in history(straight_run)[0]]
    resumed_losses = [r["loss"] for r in attempts[0] + attempts[1]]
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-6)
    assert_same_export(straight_run, run)


def test_killed_worker_restarts_from_last_checkpoint(ray_cluster, straight, shards, tmp_path):
    from cluster.pretrain import run_pretrain

    straight_run, _ = straight
    run = str(tmp_path / "fault")
    every = 4
    cfg = tiny(run, shards)
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 900
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
    assert [r["step"] for r in after] == list(range(resumed_at + 1, STEPS + 1))
    assert result.metrics["step"] == STEPS
    assert checkpoint.latest(run) == STEPS
    # the restart read the weights, optimizer and data position, not only the step: the same losses and export
    reference = losses_by_step(straight_run)
    assert [r["loss"] for r in after] == pytest.approx([reference[r["step"]] for r in after], abs=1e-6)
    assert [r["loss"] for r in before] == pytest.approx([reference[r["step"]] for r in before], abs=1e-6)
    assert_same_export(straight_run, run)


# --- the CLI as a user runs it: its own local Ray, killed whole, resubmitted, extended, refused -------------------

QUIET = ("Failed to query Ray Train Controller actor state", "TrainingReport(", "Cleaning up placement group")


def cli(run: str, shards: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cluster.pretrain", "--config", TINY, f"run={run}", f"data.shards={shards}",
            "max_steps=8", "keep_last=1", *COMMON, *extra]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def cli_run(shards, tmp_path_factory):
    """Launch 1 is killed with its whole local Ray (SIGKILL to the process group and every descendant) once a
    checkpoint exists; launch 2 is the same command; launch 3 extends the finished run to STEPS. A second local
    Ray head with a dashboard starts once launch 2 has logged a step and runs beside it and launch 3."""
    run = str(tmp_path_factory.mktemp("cli") / "run")
    env = user_env()
    out = {"run": run}
    t0 = time.time()
    proc = subprocess.Popen(cli(run, shards), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and not checkpoint.complete_steps(run) and proc.poll() is None:
        time.sleep(0.1)
    out["killed_at"] = checkpoint.complete_steps(run)
    family = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # Ray's own processes too, wherever they put themselves
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    out["first_rc"] = proc.wait(timeout=60)
    first_err = proc.stderr.read().decode(errors="replace")
    proc.stdout.close(), proc.stderr.close()
    # a launch that ended before its first checkpoint (e.g. Ray refusing a full disk) says why, here
    assert out["killed_at"], f"launch 1 exited ({out['first_rc']}) with no checkpoint: {first_err[-3000:]}"
    out["first_s"] = time.time() - t0
    with contextlib.ExitStack() as neighbour:
        for name, extra in (("resubmitted", ()), ("extended", (f"max_steps={STEPS}",))):
            t0 = time.time()
            logs = tmp_path_factory.mktemp(name)
            with open(logs / "out", "w+") as o, open(logs / "err", "w+") as e:
                proc = subprocess.Popen(cli(run, shards, *extra), cwd=ROOT, env=env, stdout=o, stderr=e, text=True)
                if name == "resubmitted":
                    # another local Ray head with a dashboard starts mid-run (same Ray temp dir, as a user's other
                    # Ray app) and stays up through the extension (issue 29: it used to cost a worker-group restart)
                    while len(os.listdir(os.path.join(run, "logs"))) < 2 and proc.poll() is None:
                        time.sleep(0.1)
                    out["neighbour"] = neighbour.enter_context(neighbour_ray(env))
                proc.wait(timeout=1200)
                o.seek(0), e.seek(0)
                out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, o.read(), e.read())
            out[f"{name}_s"] = time.time() - t0
    return out


def test_resubmit_after_the_cluster_was_killed_and_extend_a_finished_run(cli_run, straight):
    straight_run, _ = straight
    run = cli_run["run"]
    assert cli_run["killed_at"] == [4] and cli_run["first_rc"] == -signal.SIGKILL
    for name in ("resubmitted", "extended"):
        done = cli_run[name]
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["metrics"]["step"] == (8 if name == "resubmitted"
                                                                                       else STEPS)
    attempts = history(run)
    firsts = [a[0]["step"] for a in attempts]
    # the resubmitted job continued after the killed one's checkpoint; the extension after the finished step 8
    # (whose step-4 checkpoint had been pruned: Ray's snapshot agreed)
    # one attempt per launch: the neighbouring Ray (up from launch 2's first step on) cost no restart
    assert cli_run["neighbour"] and firsts == [1, 5, 9], firsts
    reference = losses_by_step(straight_run)
    assert losses_by_step(run) == pytest.approx(reference, abs=1e-6)
    assert_same_export(straight_run, run)
    assert checkpoint.complete_steps(run) == [STEPS]


def test_cli_logs_hold_progress_not_ray_noise(cli_run):
    for name in ("resubmitted", "extended"):
        err = cli_run[name].stderr
        for noise in QUIET:
            assert noise not in err, (name, noise)
        # our per-step metrics (progress=false) once per step, not twice (Ray Train's print patch)
        steps = [json.loads(line[line.index("{"):])["step"] for line in err.splitlines()
                 if '"samples_per_s"' in line and "{" in line]
        first = 5 if name == "resubmitted" else 9
        last = 8 if name == "resubmitted" else STEPS
        assert steps == list(range(first, last + 1)), (name, steps)


def test_relaunch_with_another_contract_is_refused_untouched(cli_run):
    run = cli_run["run"]
    before = tree_digest(run)
    done = subprocess.run(cli(run, load(os.path.join(run, "config.yaml")).data.shards, f"max_steps={STEPS}",
                              "optim.lr=0.01", "model.frames_selected=1"),
                          cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    import re

    named = re.search(r"stored config in (.*?); a resume", errors[0]).group(1).split(", ")
    assert sorted(named) == ["model.frames_selected", "optim.lr"] and "config.yaml" in errors[0], errors[0]
    assert "Started a local Ray" not in done.stderr  # refused before Ray
    assert tree_digest(run) == before


@pytest.mark.parametrize("case", ["empty_folder", "missing_folder", "format_1", "optim.lr=-1"])
def test_cli_refuses_bad_configs_before_ray(case, shards, tmp_path):
    where = {"empty_folder": str(tmp_path / "empty"), "missing_folder": str(tmp_path / "nope"),
             "format_1": str(tmp_path / "v1")}
    os.makedirs(tmp_path / "empty")
    os.makedirs(tmp_path / "v1")  # a shard set of format 1 (one sample per ASR segment): no "format" in its manifest
    with open(tmp_path / "v1" / "manifest.json", "w") as f:
        json.dump({"shards": [{"url": "shard-000000.tar", "samples": 4}], "total_samples": 4}, f)
    extra = () if case in where else (case,)
    run = str(tmp_path / "run")
    done = subprocess.run(cli(run, where.get(case, shards), *extra), cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    key = {"empty_folder": "data.shards", "missing_folder": "data.shards",
           "format_1": "shard format 1"}.get(case, case.split("=")[0])
    assert key in errors[0], errors[0]
    assert not os.path.exists(run)  # nothing written


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
