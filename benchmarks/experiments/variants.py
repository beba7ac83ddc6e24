"""The same model on other synthetic variants: does what it learnt hold beyond the corpus it was trained on?

    python -m benchmarks.experiments.variants --export runs/demo/pretrain/export --test runs/demo/corpus/test \
        [--out runs/variants] [--videos 40] [--only seed longer more_objects smaller_objects] [--tau 0] \
        [--calibrate runs/demo/corpus/train --calibrate-videos 60]

Issue 18's last target: "the same model on other synthetic variants (another seed, longer videos, more objects,
smaller objects; generate them with the generator's own knobs) within 10% of the in-distribution figures". Each
variant is the in-distribution corpus's own generator config (the `config.yaml` that `shards.synthetic` echoes next
to the test split) with one thing changed, and only its test split is generated (`--videos` videos, under --out):

  seed             seed + 1: other scenes and timelines from the same distribution
  longer           min_seconds and max_seconds doubled: the same kind of steps, twice the background around them
  more_objects     every scene holds the most objects the vocabulary allows (min = max = min(nouns, colours))
  smaller_objects  object sizes x 0.6 (at the demo's 32 px input a default object is ~8 px, a small one ~5 px)

Every split (the in-distribution one included, so the ratios compare like with like) is scored as `make demo`
scores its test split (cluster.demo.score: grounding.predict over each video's pool, `grounding.evaluate
groundingyoutube`, pointing with the true step as the query). Prints ONE JSON object: each split's figures, each
variant's ratio to the in-distribution figure, and `within_10pct` (|ratio - 1| <= 0.10; a ratio is null where the
in-distribution figure is 0). `action_x_chance` is the per-frame action accuracy over its pool chance, the fair
comparison where a variant changes the pools. `targets`: the in-distribution figures against issue 18's targets
(per-frame action accuracy >= 75, mAP@0.1:0.5 >= 28, mAP@0.5 >= 14, pointing >= 70) and whether every variant holds
within 10%. With `--calibrate TRAIN` every split is decoded with the settings grounding.calibrate chooses on TRAIN's
hidden truth (never on a test split), the same overrides for all. Bad input: one `error:` line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import cli
from common.errors import UserError
from grounding.variants import TOLERANCE, VARIANTS, ratios, targets, variant_overrides, with_chance_ratio


def load_base_config(test: str):
    from common import config as C
    from shards.synthetic import SyntheticConfig

    echo = os.path.join(os.path.dirname(os.path.abspath(test.rstrip("/"))), "config.yaml")
    if not os.path.isfile(echo):
        raise UserError(f"no generator config next to the test split: {echo} (shards.synthetic writes it; "
                        "the variants are that config with one knob changed)")
    return C.load(SyntheticConfig, echo, [])


def check_inputs(export: str, test: str) -> None:
    if not os.path.isfile(os.path.join(export, "model.pt")):
        raise UserError(f"--export {export}: no model.pt (an export folder of pretraining is needed)")
    for f in ("videos", os.path.join("truth", "ground_seg.json")):
        if not os.path.exists(os.path.join(test, f)):
            raise UserError(f"--test {test}: not a synthetic test split (no {f})")


def generate_variant(base, name: str, out: str, videos: int) -> tuple[str, dict]:
    """Write (or reuse, when complete) the variant's test split under out/name; returns (split dir, knobs)."""
    import dataclasses

    from shards.synthetic import generate

    knobs = variant_overrides(name, base)
    cfg = dataclasses.replace(base, **knobs, out=os.path.join(out, name), n_train=0, n_test=videos,
                              workers=min(2, max(1, videos)))
    split = os.path.join(cfg.out, "test")
    done = os.path.join(cfg.out, "corpus.json")
    if not (os.path.exists(done) and json.load(open(done)).get("config", {}).get("n_test") == videos
            and all(json.load(open(done))["config"].get(k) == v for k, v in knobs.items())):
        generate(cfg.validate())
    return split, knobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, help="pretraining export folder (model.pt)")
    p.add_argument("--test", required=True, help="the in-distribution test split (its corpus' config.yaml is the base)")
    p.add_argument("--out", default="runs/variants", help="where the variants' test splits and predictions go")
    p.add_argument("--videos", type=int, default=40, help="test videos per variant")
    p.add_argument("--only", nargs="+", default=list(VARIANTS), help=f"variants to run (of {', '.join(VARIANTS)})")
    p.add_argument("--tau", type=float, default=0.0, help="background threshold, as the demo's (DemoConfig.tau)")
    p.add_argument("--calibrate", metavar="TRAIN", help="a split with hidden truth (the corpus' train split): "
                                                        "decode every split with the settings chosen on it")
    p.add_argument("--calibrate-videos", type=int, default=60)
    args = p.parse_args(argv)
    if args.videos < 1:
        raise UserError(f"--videos must be >= 1, got {args.videos}")
    if args.calibrate and not os.path.exists(os.path.join(args.calibrate, "truth", "ground_seg.json")):
        raise UserError(f"--calibrate {args.calibrate}: not a split with hidden truth (no truth/ground_seg.json)")
    if args.calibrate_videos < 1:
        raise UserError(f"--calibrate-videos must be >= 1, got {args.calibrate_videos}")
    unknown = [v for v in args.only if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    check_inputs(args.export, args.test)
    base = load_base_config(args.test)
    for name in args.only:
        variant_overrides(name, base)  # a variant the base cannot make fails before anything is generated

    from cluster.demo import score
    from pretrain import load_model

    model = load_model(args.export)
    calibration, overrides, seconds = None, [], {}
    if args.calibrate:
        from grounding.calibrate import calibrate, encode_split
        from grounding.inference import InferenceConfig

        t = time.time()
        cal_base = InferenceConfig(tau=args.tau)
        cal = calibrate(*encode_split(model, args.calibrate, args.calibrate_videos, cal_base), cal_base)
        overrides = cal["overrides"]
        calibration = {"split": os.path.abspath(args.calibrate), "videos": cal["videos"], "overrides": overrides,
                       "objective": cal["objective"], "train": {"chosen": cal["best"], "paper": cal["paper"]}}
        seconds["calibrate"] = round(time.time() - t, 1)
    t0 = time.time()
    pdir = os.path.join(args.out, "predictions")
    os.makedirs(pdir, exist_ok=True)
    splits = {"in_distribution": {"test": os.path.abspath(args.test), "knobs": {}}}
    rows = {"in_distribution": with_chance_ratio(score(model, args.test, pdir, "in_distribution", args.tau,
                                                       overrides))}
    seconds["in_distribution"] = round(time.time() - t0, 1)
    for name in args.only:
        t = time.time()
        split, knobs = generate_variant(base, name, args.out, args.videos)
        rows[name] = with_chance_ratio(score(model, split, pdir, name, args.tau, overrides))
        splits[name] = {"test": os.path.abspath(split), "knobs": knobs}
        seconds[name] = round(time.time() - t, 1)
    report = {name: {"ratio": ratios(rows["in_distribution"], rows[name])} for name in args.only}
    outside = sorted({f"{n}:{k}" for n in args.only for k, r in report[n]["ratio"].items()
                      if r["within_10pct"] is False})
    within = {n: {k: r["within_10pct"] for k, r in report[n]["ratio"].items()} for n in args.only}
    print(json.dumps({
        "benchmark": "variants", "export": os.path.abspath(args.export), "videos_per_variant": args.videos,
        "tau": args.tau, "calibration": calibration, "tolerance": TOLERANCE, "splits": splits,
        "targets": targets(rows["in_distribution"], within),
        "figures": {n: {k: round(v, 2) for k, v in r.items()} for n, r in rows.items()},
        "ratios": {n: {k: r["ratio"] for k, r in report[n]["ratio"].items()} for n in args.only},
        "within_10pct": within,
        "all_within_10pct": not outside, "outside_10pct": outside,
        "undefined": sorted(f"{n}:{k}" for n in args.only for k, r in report[n]["ratio"].items()
                            if r["within_10pct"] is None),
        "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
