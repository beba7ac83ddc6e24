"""The shared training machinery (trainer/) on its own: a toy model and task through the real DeepSpeed engine on
a one-rank gloo group, the trainer-state files' safe loading, and the abstract bases a new head or dataset
implements."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from trainer import checkpoint
from trainer.engine import build_engine, init_distributed
from trainer.loop import Task, fit
from trainer.settings import TrainSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, inputs):
        return {"loss": ((self.lin(inputs["x"]) - inputs["y"]) ** 2).mean()}


class NoiseTask(Task):
    """Batches drawn from the global RNGs (torch and numpy), so an exact resume needs their states restored."""

    def __init__(self):
        self.seen = 0

    def start(self, state):
        self.seen = (state or {}).get("seen", 0)

    def inputs(self, step, micro):
        self.seen += 1
        x = torch.randn(8, 4) + float(np.random.uniform()) + random.random()
        return {"x": x, "y": x.sum(1, keepdim=True)}

    def state(self):
        return {"seen": self.seen}


def settings(run: str, **kw) -> TrainSettings:
    base = dict(run=run, max_steps=6, micro_batch=8, deepspeed=os.path.join(ROOT, "configs/deepspeed/zero0.json"),
                lr=0.05, checkpoint_every=2, keep_last=1, log_every=1, precision="fp32")
    return TrainSettings(**{**base, **kw})


def train(run: str, **kw):
    init_distributed(single=True)
    torch.manual_seed(0)
    engine, _ = build_engine(Regression(), settings(run, **kw), 1)
    return fit(engine, NoiseTask(), settings(run, **kw))


def losses(run: str) -> list[float]:
    recs = []
    for name in sorted(os.listdir(os.path.join(run, "logs"))):
        recs += [json.loads(x) for x in open(os.path.join(run, "logs", name)) if x.strip()]
    return [r["loss"] for r in sorted(recs, key=lambda r: r["step"])]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("trainer") / "straight")
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    out = train(run)
    return run, out


def test_fit_resumes_exactly(straight, tmp_path):
    run0, out0 = straight
    assert out0.step == 6 and checkpoint.complete_steps(run0) == [6]  # keep_last 1 pruned 2 and 4
    run = str(tmp_path / "resumed")
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    first = train(run, stop_at_step=4)
    assert first.step == 4
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # the resume must not depend on the new process
    second = train(run)
    assert second.resumed_from == 4 and second.step == 6
    assert losses(run) == pytest.approx(losses(run0), abs=1e-7)
    state = checkpoint.read_trainer_state(os.path.join(run, "checkpoints", checkpoint.tag(6), "trainer-rank0.pt"))
    assert state["task"] == {"seen": 6} and state["step"] == 6


class Payload:
    def __reduce__(self):
        return (open, (os.environ["STG_TEST_SENTINEL"], "w"))


def _plant_and_resume(straight, tmp_path, monkeypatch, member: str, plant) -> str:
    """Copy the straight run, let `plant` rewrite one checkpoint file as a writer of the bucket could, resume
    from it; returns the refusal's message after checking that nothing of the payload ran."""
    import shutil

    run = str(tmp_path / "tampered")
    shutil.copytree(straight[0], run)
    sentinel = tmp_path / "ran"
    monkeypatch.setenv("STG_TEST_SENTINEL", str(sentinel))
    plant(os.path.join(run, "checkpoints", checkpoint.tag(6), member))
    init_distributed(single=True)
    engine, _ = build_engine(Regression(), settings(run), 1)
    with pytest.raises(checkpoint.UnsafeCheckpoint) as e:
        checkpoint.load(engine, run, 6, rank=0, world=1)
    assert not sentinel.exists()  # nothing of the payload ran
    return str(e.value)


def test_pickled_trainer_state_is_refused(straight, tmp_path, monkeypatch):
    def plant(path):
        torch.save({**checkpoint.read_trainer_state(path), "task": Payload()}, path)

    assert "trainer-rank0.pt]: refused" in _plant_and_resume(straight, tmp_path, monkeypatch, "trainer-rank0.pt",
                                                             plant)


def test_pickled_deepspeed_states_are_refused_on_resume(straight, tmp_path, monkeypatch):
    """DeepSpeed's own load_checkpoint unpickles by default; resume loads its files weights-only too."""
    def plant(path):
        torch.save({**torch.load(path, weights_only=False), "planted": Payload()}, path)

    msg = _plant_and_resume(straight, tmp_path, monkeypatch, "mp_rank_00_model_states.pt", plant)
    assert "a DeepSpeed file holds pickled objects" in msg


def test_rng_state_is_plain_data():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian in numpy's state
    state = checkpoint.rng_state()
    expect = (random.random(), np.random.normal(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == expect
    flat = json.dumps({k: v for k, v in state.items() if k == "python"})  # python's state is JSON as it is
    assert flat and torch.is_tensor(state["torch"]) and torch.is_tensor(state["numpy"]["keys"])


def test_a_head_or_dataset_missing_a_method_fails_when_built():
    from finetune.datasets import Adapter, SyntheticAdapter
    from finetune.heads.base import GroundingHead

    class NoScores(GroundingHead):
        def loss(self, batch):
            return {}

    class NoEvalFiles(Adapter):
        def train_samples(self):
            return []

        def eval_queries(self):
            return []

        def videos(self, split):
            return {}

    with pytest.raises(TypeError, match="frame_scores"):
        NoScores()
    with pytest.raises(TypeError, match="write_eval_files"):
        NoEvalFiles()
    from finetune.heads.wsra import WsraConfig
    from finetune.heads.wsra import WSRAHead

    assert isinstance(WSRAHead(8, WsraConfig()), GroundingHead)  # the real ones still build
    assert not getattr(SyntheticAdapter, "__abstractmethods__", set())


def test_relaunch_differences_name_keys_and_spare_resumable_ones():
    from trainer.run_folder import differences

    stored = {"max_steps": 8, "optim": {"lr": 0.1, "betas": [0.9, 0.98]}, "cluster": {"workers": 2}}
    new = {"max_steps": 12, "optim": {"lr": 0.2, "betas": (0.9, 0.99)}, "cluster": {"workers": 4}, "added": 1}
    assert differences(stored, new, ("max_steps", "cluster")) == ["added", "optim.betas", "optim.lr"]
    # a field newer than the stored config counts only when it is not at its default
    assert differences(stored, new, ("max_steps", "cluster", "optim"), defaults={"added": 1}) == []
