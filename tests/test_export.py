"""pretrain.export and pretrain.load_model read files with weights_only=True: real DeepSpeed checkpoints (ZeRO-0
and ZeRO-2, one gloo rank in a fresh process) consolidate to the module's weights; a file holding a pickled object
or cut short is refused in one line naming it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, shared_path

MAKE = r'''
import os, socket, sys, torch
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
out = sys.argv[1]
for stage in (0, 2):
    torch.manual_seed(stage)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    eng, *_ = deepspeed.initialize(model=model, config=cfg, model_parameters=model.parameters())
    eng.backward(eng(torch.randn(2, 4)).sum()); eng.step()
    eng.save_checkpoint(os.path.join(out, f"zero{stage}"), tag="step-1", save_latest=False)
    torch.save({k: v.detach().float().clone() for k, v in eng.module.state_dict().items()},
               os.path.join(out, f"zero{stage}", "expected.pt"))
'''


@pytest.fixture(scope="module")
def ds_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    env = dict(os.environ, PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu")
    r = subprocess.run([sys.executable, "-c", MAKE, str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


class Hook:
    """Any class: unpickling it could run code of the file's choosing."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_checkpoints_consolidate_weights_only(ds_checkpoints, stage):
    from pretrain.export import consolidated_state_dict

    root = ds_checkpoints / f"zero{stage}"
    state = consolidated_state_dict(str(root), "step-1")
    expected = torch.load(root / "expected.pt", weights_only=True)
    assert set(state) == set(expected)
    for k in expected:
        torch.testing.assert_close(state[k], expected[k])
    assert torch.load is not None and torch.load.__module__ == "torch.serialization"  # the merge's patch is undone


def test_pickled_object_in_a_checkpoint_is_refused(ds_checkpoints, tmp_path, capfd):
    import shutil

    from pretrain.export import consolidated_state_dict
    from pretrain.model import ExportError

    for stage, name in ((0, "mp_rank_00_model_states.pt"), (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")):
        root = tmp_path / f"zero{stage}"
        shutil.copytree(ds_checkpoints / f"zero{stage}", root)
        f = root / "step-1" / name
        state = torch.load(f, weights_only=False)
        state["hook"] = Hook()
        torch.save(state, f)
        with pytest.raises(ExportError, match=r"pickled objects") as e:
            consolidated_state_dict(str(root), "step-1")
        assert str(root) in str(e.value) and "\n" not in str(e.value)
    assert "code ran" not in capfd.readouterr().out


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), STG_DEBUG="")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_export_with_a_pickled_object_or_cut_short_is_one_line(tmp_path):
    """An export written by the project (save_export), then tampered with or truncated, read by a user's
    command: exit 2, one error line naming model.pt, no traceback, no code run."""
    from pretrain_fixtures import tiny_export

    export = tiny_export(str(tmp_path / "export"))
    weights = os.path.join(export, "model.pt")
    good = open(weights, "rb").read()
    video = str(shared_path("videos", "carphone_pristine.mp4"))
    state = torch.load(weights, weights_only=True)
    state["hook"] = Hook()
    torch.save(state, weights)
    r = _cli("grounding.query", "--checkpoint", export, "--video", video, "--text", "cut")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "code ran" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"error: export [{weights}]: " + r.stderr.split("]: ", 1)[1].strip()]
    assert "pickled objects" in r.stderr
    with open(weights, "wb") as f:
        f.write(good[: len(good) // 3])
    r = _cli("grounding.query", "--checkpoint", export, "--video", video, "--text", "cut")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: export [{weights}]: truncated"), r.stderr
