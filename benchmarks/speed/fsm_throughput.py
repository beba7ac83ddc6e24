"""FSM training throughput (clips/s) with and without the anchor decoder (Eq. 9), or frozen cached features against
backbone finetuning (--end-to-end), in one run. Prints one JSON object.

    python -m benchmarks.speed.fsm_throughput --config configs/finetune/fsm_synthetic.yaml checkpoint=RUN/export \
        dataset.root=DIR \
        [--steps 20] [--warmup 3] [--repeats 2] [--end-to-end] [key=value ...]

The batches are the finetune's own (StvgBatcher over the region-feature cache, with the train truth), drawn once
and reused, so the figure is the head's step: forward, the Eq. 11 losses, backward and an AdamW update, on CUDA
when there is one. Variants: `anchor` (the default head: MRCL's x^gt from the anchor decoder, which shares the first
decoder's weights) and `no_anchor` (fsm.anchor=false: x^gt is the true box's pooled tokens, no second decoder
pass). With --end-to-end the variants are `frozen` (the default head on the cached region features) and
`end_to_end` (features.end_to_end: the same rows' pixels through the encoder, RoI-Align on its live grid, the live
text tower, and the AdamW update of encoder and head, optim.encoder_lr for the encoder). They alternate
`--repeats` times so a machine's drift hits both; a clip is one (video, query) row.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch  # noqa: E402

from common import cli  # noqa: E402
from finetune.config import load, resolve  # noqa: E402


def _batches(cfg, n: int, pixels: bool = False):
    """n training batches of the finetune's own batcher; with `pixels`, each also with its frames' crops and the
    sentences' token ids (what an end-to-end step reads): [(TrainBatch, tokens or None)]."""
    from finetune.families import build_adapter
    from finetune.stvg_batches import StvgBatcher
    from finetune.stvg_features import tokenizer_of, with_pixels
    from finetune.train import feature_store, prepare, train_videos

    adapter = build_adapter(cfg.dataset)
    counts = prepare(cfg, adapter)
    store = feature_store(cfg, counts["model_key"])
    feats = store.load_all(train_videos(cfg, adapter))
    tokenize = None
    if pixels:
        from finetune.features import load_encoder

        enc = load_encoder(cfg.checkpoint)
        feats = with_pixels(feats, train_videos(cfg, adapter), enc.image_size, cfg.features.max_frames)
        tokenize = enc.tokenize
    batcher = StvgBatcher(cfg, adapter.train_samples(), feats, store.text_store.text, tokenizer_of(cfg.checkpoint),
                          truth=adapter.train_truth(), tokenize=tokenize)
    dim = next(iter(feats.values())).regions.shape[-1]
    return [(b, tok) for b, _, tok in (batcher.batch(s) for s in range(n))], dim, getattr(store, "mid_layer", 0)


def _rate(cfg, dim: int, batches, steps: int, warmup: int, device, mid_layer: int = 0) -> float:
    from finetune.config import train_settings
    from finetune.features import load_encoder
    from finetune.heads import build_head
    from finetune.train import FinetuneModule
    from trainer.engine import param_groups

    encoder = load_encoder(cfg.checkpoint).train() if cfg.features.end_to_end else None
    torch.manual_seed(cfg.seed)
    module = FinetuneModule(build_head("fsm", dim, cfg), encoder, cfg.tubes.roi_output, mid_layer).to(device)
    ts = train_settings(cfg)
    opt = torch.optim.AdamW(param_groups(module, ts.weight_decay, ts.lr_groups), lr=ts.lr)
    moved = [(b.to(device), None if tok is None else tok.to(device)) for b, tok in batches]
    clips, t0 = 0, None
    for s in range(warmup + steps):
        if s == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, clips = time.perf_counter(), 0
        b, tok = moved[s % len(moved)]
        if encoder is None:
            b = dataclasses.replace(b, video=dataclasses.replace(b.video, pixels=None))
        loss = module({"batch": b, **({"tokens": tok} if encoder is not None else {})})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        clips += b.video.mask.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/finetune/fsm_synthetic.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--end-to-end", action="store_true", help="frozen cached features vs backbone finetuning")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    cfg = resolve(load(a.config, ["head=fsm", *a.overrides]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.end_to_end:
        frozen = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, end_to_end=False))
        variants = {"frozen": frozen,
                    "end_to_end": dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, end_to_end=True))}
    else:
        variants = {"anchor": cfg, "no_anchor": dataclasses.replace(cfg, fsm=dataclasses.replace(cfg.fsm,
                                                                                               anchor=False))}
    batches, dim, mid = _batches(cfg, min(a.steps, 8), pixels=a.end_to_end)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.repeats):
        for name, c in variants.items():
            rates[name].append(_rate(c, dim, batches, a.steps, a.warmup, device, mid))
    best = {k: max(v) for k, v in rates.items()}
    out = {"benchmark": "fsm_train_throughput", "unit": "clips/s", "device": str(device),
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "cpu": platform.processor(),
           "threads": torch.get_num_threads(), "batch_size": cfg.batch_size, "frames": cfg.features.max_frames,
           "queries": cfg.fsm.queries, "dim": cfg.fsm.dim, "steps": a.steps, "repeats": a.repeats,
           "clips_per_s": {k: round(v, 3) for k, v in best.items()},
           "all_runs": {k: [round(x, 3) for x in v] for k, v in rates.items()},
           "multiscale": cfg.fsm.multiscale, "encoder_lr": cfg.optim.encoder_lr}
    first, second = variants
    out[f"{first}_over_{second}"] = round(best[first] / best[second], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
