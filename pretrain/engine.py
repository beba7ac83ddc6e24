"""DeepSpeed engine set-up: the user's DeepSpeed JSON/YAML, completed from PretrainConfig, and the LR schedule.

The DeepSpeed file owns ZeRO and communication settings; batch sizes, accumulation, clipping and precision come
from PretrainConfig so there is one place to change them. On CPU (DS_ACCELERATOR=cpu) training runs in fp32
with torch's AdamW handed to DeepSpeed as an object, which needs no JIT-built op; optim.optimizer=deepspeed uses
the file's "optimizer" section (FusedAdam etc. on GPU). The only op DeepSpeed builds on CPU is its shared-memory
collective (deepspeed_shm_comm, at init_distributed); `prebuild_ops` builds it once into TORCH_EXTENSIONS_DIR
before workers start, so they load it from the cache instead of compiling it side by side.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os

import torch
import yaml

from common import fsio
from pretrain.config import PretrainConfig

log = logging.getLogger(__name__)


def on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ds_file(url: str) -> dict:
    """A DeepSpeed config (JSON or YAML); a relative path that is not under the cwd is taken from the project."""
    if fsio.is_local(url) and not os.path.isabs(url) and not os.path.exists(url):
        url = os.path.join(PROJECT_ROOT, url)
    text = fsio.read_text(url)
    data = json.loads(text) if url.endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{url}: a DeepSpeed config must be a mapping")
    return data


def ds_config(cfg: PretrainConfig, world: int, gpu: bool | None = None, base: dict | None = None) -> dict:
    """The DeepSpeed config this run uses (echoed into the run directory). `base` is the user's file, already
    read (the Ray entry reads it on the driver, where relative paths mean something)."""
    gpu = on_gpu() if gpu is None else gpu
    ds = copy.deepcopy(base if base is not None else load_ds_file(cfg.deepspeed))
    ds["train_micro_batch_size_per_gpu"] = cfg.data.micro_batch
    ds["gradient_accumulation_steps"] = cfg.optim.grad_accum
    ds["train_batch_size"] = cfg.data.micro_batch * cfg.optim.grad_accum * world
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # our own logging; DeepSpeed's would interleave with the bar
    ds.setdefault("wall_clock_breakdown", False)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if cfg.zero_stage >= 0:
        zero["stage"] = cfg.zero_stage
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpu else "fp32")
    if precision in ("bf16", "fp16") and not gpu:
        raise ValueError(f"precision={precision} needs a GPU; use fp32 (or auto) on CPU")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    if cfg.optim.optimizer == "torch":
        ds.pop("optimizer", None)
    elif "optimizer" not in ds:
        raise ValueError(f"optim.optimizer=deepspeed but {cfg.deepspeed} has no optimizer section")
    else:
        params = ds["optimizer"].setdefault("params", {})
        params.update(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=list(cfg.optim.betas),
                      eps=cfg.optim.eps)
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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings of scale (1-d tensors) and the logit temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, cfg: PretrainConfig, world: int, base: dict | None = None):
    """(engine, ds_config). The scheduler is the engine's lr_scheduler and is stepped by engine.step()."""
    import deepspeed

    ds = ds_config(cfg, world, base=base)
    o = cfg.optim
    kwargs = {}
    if o.optimizer == "torch":
        kwargs["optimizer"] = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                                eps=o.eps)
        kwargs["model_parameters"] = None
    else:
        kwargs["model_parameters"] = param_groups(model, o.weight_decay)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, o.warmup_steps, cfg.max_steps, o.min_lr_ratio))

    engine, _, _, _ = deepspeed.initialize(model=model, config=ds, lr_scheduler=schedule, **kwargs)
    return engine, ds


def prebuild_ops() -> None:
    """Compile DeepSpeed's CPU collective op into TORCH_EXTENSIONS_DIR once (a no-op when cached or on GPU)."""
    if os.environ.get("DS_ACCELERATOR") != "cpu":
        return
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)
