"""`make demo`'s stages on a tiny corpus, run as a user runs them (a fresh `python -m cluster.demo` process with its
own local Ray): the log says nothing untrue. No line claims random initialisation (open_clip's "No pretrained
weights loaded ... Model initialized randomly"): every model of the demo either loads weights right after it is
built (an export, a checkpoint, the second round's warm start) or is random by its config's choice."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, user_env

TINY = ["n_train=6", "n_test=3", "window_frames=4", "videos_per_shard=3", "pretrain=configs/pretrain/tiny.yaml",
        "pretrain_overrides=[max_steps=4, checkpoint_every=2, progress=false]", "second_round=true",
        "second_round_steps=6", "finetune_steps=2", "chance_seeds=1", "pictures=1", "calibrate_videos=2"]


def test_demo_log_claims_no_random_initialisation(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "cluster.demo", "--config", "configs/demo32.yaml", "--out", str(out),
                        *TINY], cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    # every stage ran: the second round loaded the first round's export, the table was printed
    for header in ("=== 3. pretraining", "=== 4b. second pretraining round", "=== 5. grounding evaluation",
                   "=== 5b. WSRA finetune", "=== 6. pictures"):
        assert header in log, header
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert "pretrained + pseudo-positives" in summary["metrics"]
    assert "initialized randomly" not in log and "No pretrained weights loaded" not in log, \
        [ln for ln in log.splitlines() if "randomly" in ln]
