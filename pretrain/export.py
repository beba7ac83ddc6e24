"""Consolidated fp32 model for finetuning and indexing: `<run>/export/model.pt` + `model_config.json`, and the
backbone alone as a plain open_clip file `backbone.safetensors` (docs/contracts.md section 3), from a complete
checkpoint.

ZeRO keeps the fp32 master weights sharded in the optimizer files; DeepSpeed's zero_to_fp32 merges them. A
stage-0 checkpoint without optimizer shards holds the whole module (fp32 on CPU) in its model-states file.

    python -m pretrain.export --run RUN_URL [--step N]

Every file is read with torch.load(weights_only=True): a checkpoint on shared storage can hold tensors and plain
containers (and DeepSpeed's four bookkeeping classes, allowed by name), never code. A file that holds anything else,
or is cut short, is refused in one line naming it.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile

import torch

from common import cli, fsio
from trainer import checkpoint
from pretrain import backbone_file
from pretrain.model import ExportError, ExportMissing, load_weights


def consolidated_state_dict(local_root: str, tag: str) -> dict[str, torch.Tensor]:
    import pickle

    folder = os.path.join(local_root, tag)
    if glob.glob(os.path.join(folder, "*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with checkpoint.weights_only_loads():
                state = get_fp32_state_dict_from_zero_checkpoint(local_root, tag=tag)
        except pickle.UnpicklingError as e:
            raise ExportError(f"checkpoint [{folder}]: a ZeRO shard holds pickled objects, not only tensors; "
                              f"refused ({str(e).splitlines()[-1].strip()[:200]})") from None
        except (RuntimeError, OSError, EOFError) as e:
            raise ExportError(f"checkpoint [{folder}]: a ZeRO shard is truncated or not a torch file "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    else:
        path = os.path.join(folder, "mp_rank_00_model_states.pt")
        states = load_weights(path)
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise ExportError(f"checkpoint [{path}]: no 'module' state_dict in it")
        state = states["module"]
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def export_run(run: str, step: int | None = None) -> str:
    """Write the export of checkpoint `step` (default: the newest complete one); returns the model.pt URL."""
    step = checkpoint.latest(run) if step is None else step
    if step is None or step not in checkpoint.complete_steps(run):
        raise ExportMissing(f"run [{run}]: no complete checkpoint" + ("" if step is None else f" at step {step}"))
    marker = checkpoint.read_marker(run, step)
    out = fsio.join(run, "export")
    with tempfile.TemporaryDirectory(prefix="stg-export-") as tmp:
        if fsio.is_local(run):
            local_root = fsio.filesystem(checkpoint.root(run))[1]
        else:
            local_root = checkpoint.download(run, step, os.path.join(tmp, "ckpt"))
        state = consolidated_state_dict(local_root, checkpoint.tag(step))
        local = os.path.join(tmp, "model.pt")
        torch.save(state, local)
        clip_local = os.path.join(tmp, backbone_file.NAME)
        clip = backbone_file.write(state, backbone_file.model_config(marker["model_config"], run), clip_local)
        # the config first: a reader that finds model.pt finds its config too
        fsio.write_json_atomic(fsio.join(out, "model_config.json"), marker["model_config"])
        fsio.put_file_atomic(local, fsio.join(out, "model.pt"))
        fsio.put_file_atomic(clip_local, fsio.join(out, backbone_file.NAME))
    fsio.write_json_atomic(fsio.join(out, "export.json"), {"step": step, "checkpoint": checkpoint.url_of(run, step),
                                                           "tensors": len(state), "backbone": clip})
    return fsio.join(out, "model.pt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run storage URL (local folder or s3://...)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too (or STG_DEBUG=1)")
    args = p.parse_args(argv)
    print(export_run(args.run, args.step))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
