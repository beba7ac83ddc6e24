"""The paper's ablations on the synthetic benchmark at `make demo` scale; prints one JSON table.

    python -m benchmarks.experiments.ablations [--demo runs/demo] [--out runs/ablations] [--steps 600] \
        [--only sinkhorn,topk]

Reuses the demo's corpus and shards (run `make demo` first, or this makes them), pretrains one model per variant
with the demo's pretraining config on the local Ray cluster, and scores each with `python -m grounding.evaluate
groundingyoutube` on the synthetic test split (cluster.demo.evaluate: IoU+Point, video mAP, pointing game):
  Table 5, frame selection: sinkhorn | topk (no optimal transport) | none (evenly strided T of U)
  Table 6, losses: L_local + L_global | L_local only | L_global only
  ours: pooled_local, L_local without its word-region term (the paper's L_local as printed, branch heatmap)
Chance (random segments) is in the same table. Each variant's run folder is kept, so a re-run only scores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "token")

VARIANTS = {
    "sinkhorn": [],                                           # the full model (both losses, Sinkhorn selection)
    "topk": ["model.selection=topk"],
    "none": ["model.selection=none"],
    "local_only": ["model.loss_global=false"],
    "global_only": ["model.loss_local=false"],
    # L_local as printed: pooled branch features only, heatmap from the branch's last cross-attention
    "pooled_local": ["model.word_region_weight=0", "model.heatmap=branch"],
}
KEYS = ("IoU+Point", "mAP@0.1", "mAP@0.3", "mAP@0.1:0.5", "pointing_game")


def main() -> int:
    from cluster import demo
    from cluster.runtime import init_ray

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="runs/demo", help="demo folder whose corpus and shards are reused")
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--steps", type=int, default=0, help="pretraining steps per variant (0: the demo config's)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(VARIANTS))
    args = p.parse_args()
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if n]
    cfg = demo.DemoConfig(out=args.demo, chance_seeds=3)
    corpus_dir = demo.corpus(cfg)
    ray = init_ray(None)
    shards = demo.shard(cfg, corpus_dir, ray)
    exports, seconds = {}, {}
    for name in names:
        t = time.time()
        run_cfg = demo.DemoConfig(out=os.path.join(args.out, name), seed=cfg.seed,
                                  pretrain_overrides=VARIANTS[name] + ([f"max_steps={args.steps}"] if args.steps
                                                                       else []) + ["progress=false"])
        exports[name] = demo.pretrain(run_cfg, shards)
        seconds[name] = round(time.time() - t, 1)
    table = demo.evaluate(demo.DemoConfig(out=args.out, chance_seeds=3), corpus_dir, exports)
    out = {"benchmark": "ablations", "corpus": corpus_dir, "steps": args.steps or "demo config",
           "pretrain_seconds": seconds,
           "table": {k: {m: round(v.get(m, float("nan")), 2) for m in KEYS} for k, v in table.items()}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
