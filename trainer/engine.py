"""DeepSpeed engine set-up: the user's DeepSpeed JSON/YAML, completed from TrainSettings, and the LR schedule.

The DeepSpeed file owns ZeRO and communication settings; batch sizes, accumulation, clipping and precision come
from the stage's config (through TrainSettings) so there is one place to change them. On CPU (DS_ACCELERATOR=cpu) training runs in fp32
with torch's AdamW handed to DeepSpeed as an object, which needs no JIT-built op; optim.optimizer=deepspeed uses
the file's "optimizer" section (FusedAdam etc. on GPU). The only op DeepSpeed builds on CPU is its shared-memory
collective (deepspeed_shm_comm, at init_distributed); `prebuild_ops` builds it once into TORCH_EXTENSIONS_DIR
before workers start, so they load it from the cache instead of compiling it side by side.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os

import torch
import yaml

from common import fsio
from common.config import ConfigError
from trainer.settings import TrainSettings

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ds_file(url: str) -> dict:
    """A DeepSpeed config (JSON or YAML); a relative path that is not under the cwd is taken from the project."""
    if fsio.is_local(url) and not os.path.isabs(url) and not os.path.exists(url):
        url = os.path.join(PROJECT_ROOT, url)
    text = fsio.read_text(url)
    try:
        data = json.loads(text) if url.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"deepspeed file [{url}]: not valid JSON/YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed file [{url}]: a DeepSpeed config must be a mapping")
    return data


def ds_config(s: TrainSettings, world: int, gpu: bool | None = None, base: dict | None = None) -> dict:
    """The DeepSpeed config this run uses (echoed into the run directory). `base` is the user's file, already
    read (the Ray entry reads it on the driver, where relative paths mean something)."""
    gpu = on_gpu() if gpu is None else gpu
    ds = copy.deepcopy(base if base is not None else load_ds_file(s.deepspeed))
    ds["train_micro_batch_size_per_gpu"] = s.micro_batch
    ds["gradient_accumulation_steps"] = s.grad_accum
    ds["train_batch_size"] = s.micro_batch * s.grad_accum * world
    ds["gradient_clipping"] = s.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # our own logging; DeepSpeed's would interleave with the bar
    ds.setdefault("wall_clock_breakdown", False)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if s.zero_stage >= 0:
        zero["stage"] = s.zero_stage
    precision = s.precision if s.precision != "auto" else ("bf16" if gpu else "fp32")
    if precision in ("bf16", "fp16") and not gpu:
        raise ConfigError(f"precision [precision]: {precision} needs a GPU; use fp32 (or auto) on CPU")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    if s.optimizer == "torch":
        ds.pop("optimizer", None)
    elif "optimizer" not in ds:
        raise ConfigError(f"deepspeed file [{s.deepspeed}]: optim.optimizer=deepspeed but it has no optimizer "
                          "section")
    else:
        params = ds["optimizer"].setdefault("params", {})
        params.update(lr=s.lr, weight_decay=s.weight_decay, betas=list(s.betas), eps=s.eps)
    ds.pop("scheduler", None)  # one schedule, ours (below), so checkpoints and logs agree
    if not gpu:
        # ZeRO's overlap and pinned-memory paths are CUDA stream features.
        zero["overlap_comm"] = False
        zero.pop("offload_optimizer", None)
        zero.pop("offload_param", None)
    return ds


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio at `total` (multiplier of the base LR at optimizer step `step`)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, lr_groups=()) -> list[dict]:
    """No weight decay on biases, norms, embeddings of scale (1-d tensors) and the logit temperature. lr_groups:
    (name prefix, lr) pairs; the parameters under a prefix form groups of their own with that lr (the others keep
    the optimizer's lr); empty groups are left out."""
    prefixes = [p for p, _ in lr_groups]
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        which = next((i for i, pre in enumerate(prefixes) if name.startswith(pre)), -1)
        groups.setdefault((which, p.ndim <= 1 or "logit_scale" in name), []).append(p)
    out = []
    for which in [-1] + list(range(len(prefixes))):
        for plain in (False, True):
            if which >= 0 and not groups.get((which, plain)):
                continue
            g = {"params": groups.get((which, plain), []), "weight_decay": 0.0 if plain else weight_decay}
            if which >= 0:
                g["lr"] = lr_groups[which][1]
            out.append(g)
    return out


def build_engine(model: torch.nn.Module, s: TrainSettings, world: int, base: dict | None = None):
    """(engine, ds_config). The scheduler is the engine's lr_scheduler and is stepped by engine.step()."""
    import deepspeed

    ds = ds_config(s, world, base=base)
    kwargs = {}
    if s.optimizer == "torch":
        kwargs["optimizer"] = torch.optim.AdamW(param_groups(model, s.weight_decay, s.lr_groups), lr=s.lr,
                                                betas=tuple(s.betas), eps=s.eps)
        kwargs["model_parameters"] = None
    else:
        kwargs["model_parameters"] = param_groups(model, s.weight_decay, s.lr_groups)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_lambda(step, s.warmup_steps, s.max_steps, s.min_lr_ratio))

    engine, _, _, _ = deepspeed.initialize(model=model, config=ds, lr_scheduler=schedule, **kwargs)
    return engine, ds


def init_distributed(timeout_s: int = 600, single: bool = False) -> None:
    """The process group DeepSpeed uses: an existing one (Ray Train) as it is; else, with `single`, a one-rank
    group of this process (a finetune), kept for later runs in the same process (a reused Ray worker); else the
    usual RANK/WORLD_SIZE/MASTER_* variables (torchrun, the deepspeed launcher). A one-rank group sets those
    variables itself, whatever the process inherited (a Ray worker inherits its driver's)."""
    import deepspeed
    import torch.distributed as dist

    if single and not dist.is_initialized():
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo",
                               timeout=datetime.timedelta(seconds=timeout_s))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prebuild_ops() -> None:
    """Compile DeepSpeed's CPU collective op into TORCH_EXTENSIONS_DIR once (a no-op when cached or on GPU)."""
    if os.environ.get("DS_ACCELERATOR") != "cpu":
        return
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)
