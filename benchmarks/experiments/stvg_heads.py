"""STVG heads against the baselines and ceilings, in one run: every head finetuned over seeds on the synthetic STVG
corpus, scored by grounding's vidstg evaluator, next to benchmarks/experiments/stvg_baselines.py's rows for the
same export. Prints one JSON object (scores in percent; per head the mean and standard deviation over seeds, overall and per sentence type).

  python -m benchmarks.experiments.stvg_heads --corpus runs/stvg/corpus --export RUN/export --out runs/stvg/heads \\
      --head zero_shot_head configs/finetune/tube_sim_synthetic.yaml train=false \\
      --head tube_sim configs/finetune/tube_sim_synthetic.yaml \\
      --head winner configs/finetune/winner_synthetic.yaml \\
      --head winner_no_dsa configs/finetune/winner_synthetic.yaml winner.dsa=false \\
      --seeds 0 1 2 [--set max_steps=300 ...]

`--head NAME CONFIG [KEY=VALUE ...]`: a row, its finetune config and that row's overrides; `--set` applies to every
row. Each finetune is `python -m finetune.train` in a child process (one at a time: the seeds share the cores) into
OUT/NAME/seedS; a row whose run already finished there (summary.json with metrics) is read, not re-run, so an
interrupted benchmark continues where it stopped. `beats_zero_shot` compares each row's mean m_vIoU per sentence
type with the baseline zero_shot row (Sec. 3.5 span + best word-region tube of the same export).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from finetune.stvg_rows import beats_zero_shot, input_error, summarise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def finetune(name: str, config: str, overrides: list[str], seed: int, args) -> dict:
    """One finetune run (or the finished one already in its folder): its summary."""
    run = os.path.join(args.out, name, f"seed{seed}")
    done = os.path.join(run, "summary.json")
    if os.path.exists(done):
        summary = json.load(open(done))
        if summary.get("metrics"):
            return summary
    cmd = [sys.executable, "-m", "finetune.train", "--config", config, f"checkpoint={args.export}",
           f"dataset.root={args.corpus}", f"run={run}", f"seed={seed}", *args.set, *overrides]
    if args.cache:
        cmd.append(f"features.cache={args.cache}")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "benchmark.log"), "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not os.path.exists(done):
        tail = open(os.path.join(run, "benchmark.log")).read().strip().splitlines()[-1:]
        return {"error": f"exit {proc.returncode}: {tail[0] if tail else ''}", "command": " ".join(cmd)}
    return json.load(open(done))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="synthetic STVG corpus (python -m shards.synthetic mode=stvg)")
    p.add_argument("--export", required=True, help="pretrained export folder the heads and baselines start from")
    p.add_argument("--out", required=True, help="folder of the finetune runs (OUT/NAME/seedS)")
    p.add_argument("--head", nargs="+", action="append", default=[], metavar="NAME CONFIG [KEY=VALUE]",
                   help="a row: its name, finetune config and overrides (repeat for more rows)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], help="overrides for every row (e.g. max_steps=300)")
    p.add_argument("--cache", default="", help="feature cache (default: the finetunes' own default)")
    p.add_argument("--no-baselines", action="store_true", help="skip benchmarks/experiments/stvg_baselines.py's rows")
    args = p.parse_args(argv)
    for row in args.head:
        if len(row) < 2 or not os.path.exists(row[1]):
            print(f"error: --head needs NAME CONFIG [KEY=VALUE ...], and the config must exist: {row}",
                  file=sys.stderr)
            return 2
    args.corpus, args.export, args.out = (os.path.abspath(x) for x in (args.corpus, args.export, args.out))
    problem = input_error(args.corpus, args.export)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    t0 = time.time()
    out = {"corpus": args.corpus, "export": args.export, "seeds": args.seeds, "set": args.set}
    if not args.no_baselines:
        from benchmarks.experiments import stvg_baselines as baselines

        b = baselines.measure(baselines.arguments().parse_args(["--corpus", args.corpus, "--export", args.export]),
                              linking=False)
        out["baselines"] = b["rows"]
        out["queries"] = b["queries"]
    heads = {}
    for name, config, *overrides in args.head:
        runs = [finetune(name, os.path.abspath(config), overrides, s, args) for s in args.seeds]
        heads[name] = {"config": config, "overrides": overrides, **summarise(args.seeds, runs)}
    out["heads"] = heads
    if "baselines" in out:
        out["beats_zero_shot"] = beats_zero_shot(out["baselines"]["zero_shot"], heads)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
