"""WSRA finetune on the synthetic corpus vs chance and vs the same head untrained; prints one JSON object.

    python -m benchmarks.experiments.finetune_wsra --checkpoint RUN/export [--corpus DIR | --n-train 160 --n-test 40]
        [--out runs/bench-finetune-wsra] [--steps 300] [--seeds 0,1,2] [--ceiling] [key=value ...]

The finetune settings are configs/finetune/wsra_synthetic.yaml (--config) plus key=value overrides.

Queries are the test split's truth steps; the metric is Charades-STA's (R@{1,5} at IoU {0.3,0.5,0.7}, mIoU, in
percent) from `python -m grounding.evaluate charades_sta` (see finetune/datasets.py for why). Chance ranks the
same candidate windows in a random order (mean over 5 seeds); "untrained" is the head at the trained run's
initialisation (same seed), predicting with the same features. With several --seeds (head initialisation and
batch order), trained and untrained are the means over them and `per_seed` lists each. Without --checkpoint, a
randomly initialised stg-tiny encoder (64 px) is exported and used. `--ceiling` adds a diagnostic that is *not*
weakly supervised: the same head trained per frame on the train split's hidden truth (binary cross-entropy on
"this frame shows this step", 64 truth steps per batch), i.e. how far these features can take the head at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/stground/torch_extensions"))


def supervised_ceiling(cfg, out_dir: str, steps: int, batch: int = 64) -> dict:
    """Diagnostic: phi trained per frame with the train split's truth segments; evaluated like the others."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from common import fsio
    from finetune import predict as P
    from finetune.families import build_adapter
    from finetune.features import centered
    from finetune.heads import build_head
    from finetune.batches import stack as _stack
    from finetune.train import feature_store, train_videos

    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg)
    prep = (centered if cfg.features.center else (lambda f: f))
    train = {v: prep(f) for v, f in store.load_all(train_videos(cfg, adapter)).items()}
    test = {v: prep(f) for v, f in store.load_all(adapter.videos("test")).items()}
    truth = fsio.read_json(os.path.join(cfg.dataset.root, "train", "truth", "ground_seg.json"))
    items = [(v, s["sentence"], s["segment"]) for v, segs in truth.items() if v in train for s in segs]
    store.extract_text([i[1] for i in items])
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, next(iter(train.values())).frames.shape[1], cfg)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.optim.lr)
    rng = np.random.default_rng(cfg.seed)
    for _ in range(steps):
        picked = [items[i] for i in rng.choice(len(items), size=batch)]
        frames, mask = _stack([train[v].frames.astype(np.float32) for v, _, _ in picked])
        target, _ = _stack([((train[v].times >= a) & (train[v].times < b + 1)).astype(np.float32)
                            for v, _, (a, b) in picked])
        text = torch.from_numpy(store.text([s for _, s, _ in picked]).sentence)
        phi = head.phi(frames, text.unsqueeze(1))                            # (batch, T)
        bce = F.binary_cross_entropy(phi.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        loss = (bce * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    preds = P.predict(head, adapter.benchmark, adapter.eval_queries(), test, store.text, cfg.features.fps,
                      mode=cfg.wsra.moment_score)
    os.makedirs(out_dir, exist_ok=True)
    files = adapter.write_eval_files(out_dir, {v: f.duration for v, f in test.items()})
    url = os.path.join(out_dir, "predictions.json")
    with open(url, "w") as fh:
        json.dump(preds, fh)
    return P.evaluate(adapter.benchmark, files, url)[0]


KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "R5@0.3", "R5@0.5", "mIoU")


def random_export(out: str) -> str:
    import torch

    from pretrain.model import ModelConfig, build_model, save_export

    if not os.path.exists(os.path.join(out, "model.pt")):
        torch.manual_seed(0)
        save_export(build_model(ModelConfig(backbone="stg-tiny", embed_dim=128, local_heads=2, frames_in=4,
                                            frames_selected=2, max_words=12)), out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="pretrain export (default: a random stg-tiny export)")
    p.add_argument("--corpus", help="synthetic corpus folder (default: generate one under --out)")
    p.add_argument("--n-train", type=int, default=160)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--out", default="runs/bench-finetune-wsra")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0", help="comma-separated finetune seeds; figures are their means")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "finetune", "wsra_synthetic.yaml"))
    p.add_argument("--chance-seeds", type=int, default=5)
    p.add_argument("--ceiling", action="store_true", help="also train the supervised diagnostic (hidden truth)")
    p.add_argument("overrides", nargs="*", help="FinetuneConfig key=value overrides")
    args = p.parse_args(argv)

    from common import config as C
    from finetune import predict as P
    from finetune.config import FinetuneConfig, resolve
    from finetune.families import build_adapter
    from finetune.train import feature_store, prepare, run

    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    corpus = args.corpus
    if not corpus:
        from shards.synthetic import SyntheticConfig, generate

        corpus = os.path.join(args.out, "corpus")
        if not os.path.exists(os.path.join(corpus, "corpus.json")):
            generate(SyntheticConfig(out=corpus, n_train=args.n_train, n_test=args.n_test, workers=2))
    checkpoint = args.checkpoint or random_export(os.path.join(args.out, "random-export"))
    base = [f"checkpoint={checkpoint}", "dataset.kind=synthetic", f"dataset.root={corpus}",
            f"features.cache={os.path.join(args.out, 'features')}", f"max_steps={args.steps}",
            f"checkpoint_every={args.steps}", *args.overrides]
    seeds = [int(x) for x in args.seeds.split(",")]

    def config(seed: int, trained: bool):
        name = f"{'trained' if trained else 'untrained'}" + (f"-seed{seed}" if len(seeds) > 1 else "")
        return C.load(FinetuneConfig, args.config, base + [f"run={os.path.join(args.out, name)}", f"seed={seed}",
                                                           *([] if trained else ["train=false"])])

    trained_cfg = config(seeds[0], True)
    prep = prepare(resolve(trained_cfg))
    runs = [(run(config(s, True)), run(config(s, False))) for s in seeds]
    trained_runs, untrained_runs = [r[0] for r in runs], [r[1] for r in runs]
    trained = trained_runs[0]

    cfg = resolve(trained_cfg)
    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg)
    test = store.load_all(adapter.videos("test"))
    files = adapter.write_eval_files(os.path.join(args.out, "chance"), {v: f.duration for v, f in test.items()})
    chance_runs = []
    for s in range(args.chance_seeds):
        url = os.path.join(args.out, "chance", f"predictions-{s}.json")
        with open(url, "w") as f:
            json.dump(P.chance_predictions(adapter.benchmark, adapter.eval_queries(), test, s), f)
        chance_runs.append(P.evaluate(adapter.benchmark, files, url)[0])
    chance = {k: round(sum(r[k] for r in chance_runs) / len(chance_runs), 3) for k in chance_runs[0]}

    def pick(m: dict) -> dict:
        return {k: round(m[k], 3) for k in KEYS if k in m}

    def mean(rs: list) -> dict:
        return {k: sum(r["metrics"][k] for r in rs) / len(rs) for k in KEYS}

    t_mean, u_mean = mean(trained_runs), mean(untrained_runs)

    out = {
        "benchmark": "finetune_wsra (synthetic corpus, charades_sta protocol)",
        "checkpoint": checkpoint, "corpus": corpus, "steps": trained["steps"],
        "train_videos": trained["train_videos"], "train_samples": trained["train_samples"],
        "eval_queries": trained["eval_queries"], "features": prep,
        "seeds": seeds, "trained": pick(t_mean), "untrained": pick(u_mean), "chance": pick(chance),
        "ratio_vs_chance": {k: round(t_mean[k] / max(chance[k], 1e-9), 3) for k in KEYS},
        "ratio_vs_untrained": {k: round(t_mean[k] / max(u_mean[k], 1e-9), 3) for k in KEYS},
        "per_seed": {str(s): {"trained": pick(t["metrics"]), "untrained": pick(u["metrics"])}
                     for s, (t, u) in zip(seeds, runs)},
        "loss_first_last": [trained["first_loss"], trained["last"].get("loss")],
        "last_losses": {k: round(v, 4) for k, v in trained["last"].items() if k.startswith("loss")},
    }
    if args.ceiling:
        out["supervised_ceiling"] = pick(supervised_ceiling(cfg, os.path.join(args.out, "ceiling"), args.steps))
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
