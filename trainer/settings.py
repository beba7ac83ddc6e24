"""TrainSettings: what the training machinery reads. PretrainConfig and FinetuneConfig each map their own
fields onto it (pretrain.config.train_settings, finetune.config.train_settings); it is never read from YAML."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    run: str                          # run storage: checkpoints/, logs/, tensorboard/ go under it
    max_steps: int                    # optimizer steps; also the length of the LR schedule
    micro_batch: int                  # samples per rank per forward/backward
    deepspeed: str                    # DeepSpeed JSON/YAML (ZeRO, communication); batch keys are filled in
    name: str = "train"               # progress bar label
    stop_at_step: int = 0             # > 0: checkpoint and stop after this step
    grad_accum: int = 1
    optimizer: str = "torch"          # torch: AdamW handed to DeepSpeed; deepspeed: the file's optimizer
    lr: float = 1e-4
    lr_groups: tuple = ()             # (parameter name prefix, lr) pairs: those parameters learn at that lr
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0         # cosine from 1 to this at max_steps (1: constant after warmup)
    grad_clip: float = 0.0            # 0: no clipping
    zero_stage: int = -1              # >= 0 overrides the file's zero_optimization.stage
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    checkpoint_every: int = 50
    keep_last: int = 2                # complete checkpoints kept (0: someone else prunes, e.g. Ray Train)
    log_every: int = 10
    progress: bool = False            # tqdm bar on rank 0
    print_metrics: bool = False       # rank 0 prints each log step's metrics as one JSON line on stderr
    comm_timeout_s: int = 600         # collective timeout

    @property
    def stop(self) -> int:
        return self.stop_at_step or self.max_steps


def optimizer_ranges(o, section: str = "optim") -> list[tuple]:
    """common.config.check_ranges rows for a stage's optimizer section (lr, eps, weight_decay, warmup_steps,
    grad_clip, min_lr_ratio, betas: both stages' OptimConfig have them)."""
    k = (lambda name: f"{section}.{name}")
    return [(k("lr"), o.lr, o.lr > 0, "> 0"), (k("eps"), o.eps, 0 < o.eps < 1, "in (0, 1)"),
            (k("weight_decay"), o.weight_decay, o.weight_decay >= 0, ">= 0"),
            (k("warmup_steps"), o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
            (k("grad_clip"), o.grad_clip, o.grad_clip >= 0, ">= 0"),
            (k("min_lr_ratio"), o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "in [0, 1]"),
            (k("betas"), list(o.betas), all(0 <= b < 1 for b in o.betas), "in [0, 1)")]
