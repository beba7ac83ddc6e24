"""Consolidated fp32 model for finetuning and indexing: `<run>/export/model.pt` + `model_config.json`
(docs/contracts.md section 3), from a complete checkpoint.

ZeRO keeps the fp32 master weights sharded in the optimizer files; DeepSpeed's zero_to_fp32 merges them. A
stage-0 checkpoint without optimizer shards holds the whole module (fp32 on CPU) in its model-states file.

    python -m pretrain.export --run RUN_URL [--step N]
"""
from __future__ import annotations

import argparse
import glob
import os
import tempfile

import torch

from common import fsio
from pretrain import checkpoint


def consolidated_state_dict(local_root: str, tag: str) -> dict[str, torch.Tensor]:
    folder = os.path.join(local_root, tag)
    if glob.glob(os.path.join(folder, "*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(local_root, tag=tag)
    else:
        states = torch.load(os.path.join(folder, "mp_rank_00_model_states.pt"), map_location="cpu",
                            weights_only=False)
        state = states["module"]
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def export_run(run: str, step: int | None = None) -> str:
    """Write the export of checkpoint `step` (default: the newest complete one); returns the model.pt URL."""
    step = checkpoint.latest(run) if step is None else step
    if step is None or step not in checkpoint.complete_steps(run):
        raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} under {run}")
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
        # the config first: a reader that finds model.pt finds its config too
        fsio.write_json_atomic(fsio.join(out, "model_config.json"), marker["model_config"])
        fsio.put_file_atomic(local, fsio.join(out, "model.pt"))
    fsio.write_json_atomic(fsio.join(out, "export.json"), {"step": step, "checkpoint": checkpoint.url_of(run, step),
                                                           "tensors": len(state)})
    return fsio.join(out, "model.pt")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run storage URL (local folder or s3://...)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    args = p.parse_args(argv)
    print(export_run(args.run, args.step))


if __name__ == "__main__":
    main()
