"""STVG heads against the baselines and ceilings, in one run: every head finetuned over seeds on the synthetic STVG
corpus, scored by grounding's vidstg evaluator, next to benchmarks/stvg.py's rows for the same export. Prints one
JSON object (scores in percent; per head the mean and standard deviation over seeds, overall and per sentence type).

  python -m benchmarks.stvg_heads --corpus runs/stvg/corpus --export RUN/export --out runs/stvg/heads \\
      --head zero_shot_head configs/finetune/tube_sim_synthetic.yaml train=false \\
      --head tube_sim configs/finetune/tube_sim_synthetic.yaml \\
      --head winner configs/finetune/winner_synthetic.yaml \\
      --head winner_no_dsa configs/finetune/winner_synthetic.yaml winner.dsa=false \\
      --seeds 0 1 2 [--set max_steps=300 ...]

`--head NAME CONFIG [KEY=VALUE ...]`: a row, its finetune config and that row's overrides; `--set` applies to every
row. The rows x seeds are finetune/sweep.py's jobs, each a `finetune.train.run` in this process (one at a time: the
seeds share the cores; each feature set read from the cache once) into OUT/NAME/seedS; a run that already finished
there (summary.json with metrics) is read, not re-run, so an interrupted benchmark continues where it stopped. `beats_zero_shot` compares each row's mean m_vIoU per sentence
type with the baseline zero_shot row (Sec. 3.5 span + best word-region tube of the same export).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from common.errors import UserError  # noqa: E402

METRICS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")
QTYPES = ("", "declarative_", "interrogative_")


@contextlib.contextmanager
def stdout_to_stderr():
    """DeepSpeed's op build and logs write to stdout (also from C): the one JSON object must stay alone there."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_rows(rows: list[tuple[str, str, list[str]]], seeds_of, args, common: list[str]) -> dict[str, list[dict]]:
    """{row name: its runs' summaries over its seeds (`seeds_of(i)` for row i)}: finetune/sweep.py's jobs, in process."""
    from finetune import sweep

    grid = [job for i, row in enumerate(rows) for job in sweep.jobs([row], seeds_of(i), args.out, common)]

    def done(job, summary):
        print(json.dumps({"row": job.row, "seed": job.seed, "error": summary.get("error")}), file=sys.stderr,
              flush=True)

    with stdout_to_stderr():
        summaries = sweep.run_local(grid, done)
    out: dict[str, list[dict]] = {}
    for job, summary in zip(grid, summaries):
        out.setdefault(job.row, []).append(summary)
    return out


def percent(metrics: dict) -> dict:
    """finetune's eval.json holds the evaluator's figures already in percent."""
    return {k: round(v, 2) for k, v in metrics.items() if isinstance(v, (int, float))}


def aggregate(runs: list[dict]) -> dict:
    ok = [percent(r["metrics"]) for r in runs if r.get("metrics")]
    keys = [q + m for q in QTYPES for m in METRICS if ok and q + m in ok[0]]
    return {"seeds_done": len(ok),
            "mean": {k: round(float(np.mean([r[k] for r in ok])), 2) for k in keys},
            "std": {k: round(float(np.std([r[k] for r in ok])), 2) for k in keys}}


def input_error(corpus: str, export: str) -> str | None:
    """Why the corpus or the export cannot be used (checked before any run starts), or None."""
    truth = os.path.join(corpus, "test", "truth", "vidstg.json")
    if not os.path.exists(truth):
        return f"--corpus [{corpus}]: no test/truth/vidstg.json (python -m shards.synthetic --out DIR mode=stvg)"
    if not os.path.exists(os.path.join(export, "model_config.json")):
        return f"--export [{export}]: not a pretrain export (it holds model.pt and model_config.json)"
    return None


def summarise(seeds: list[int], runs: list[dict]) -> dict:
    """A row of the output: the mean/std over its seeds and each seed's run."""
    return {**aggregate(runs),
            "runs": [{"seed": s, "steps": r.get("steps"), "first_loss": r.get("first_loss"), "last": r.get("last"),
                      "seconds": r.get("seconds"), "error": r.get("error"), "exit": r.get("exit"),
                      "metrics": percent(r.get("metrics") or {})} for s, r in zip(seeds, runs)]}


def beats_zero_shot(zero_shot: dict, rows: dict) -> dict:
    """Per row and sentence type: its mean m_vIoU above the baseline zero_shot row's."""
    return {name: {qt.rstrip("_") or "all": h["mean"].get(qt + "m_vIoU", -1) > zero_shot.get(qt + "m_vIoU", 101)
                   for qt in QTYPES} for name, h in rows.items() if h["seeds_done"]}


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
    p.add_argument("--no-baselines", action="store_true", help="skip benchmarks/stvg.py's rows")
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
        from benchmarks import stvg as baselines

        b = baselines.measure(baselines.arguments().parse_args(["--corpus", args.corpus, "--export", args.export]),
                              linking=False)
        out["baselines"] = b["rows"]
        out["queries"] = b["queries"]
    common = [f"checkpoint={args.export}", f"dataset.root={args.corpus}", *args.set,
              *([f"features.cache={args.cache}"] if args.cache else [])]
    rows = [(name, os.path.abspath(config), overrides) for name, config, *overrides in args.head]
    try:
        runs = run_rows(rows, lambda i: args.seeds, args, common)
    except UserError as e:   # a row's config that cannot be meant: nothing has run
        print(f"error: {e}", file=sys.stderr)
        return 2
    heads = {name: {"config": config, "overrides": overrides, **summarise(args.seeds, runs[name])}
             for name, config, *overrides in args.head}
    out["heads"] = heads
    if "baselines" in out:
        out["beats_zero_shot"] = beats_zero_shot(out["baselines"]["zero_shot"], heads)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    failed = [r for h in heads.values() for r in h["runs"] if r["error"]]
    if heads and len(failed) == sum(len(h["runs"]) for h in heads.values()):
        # nothing was measured: the JSON above holds each run's error; the exit status says so too (2: every
        # finetune refused its input, as finetune.train does for bad input)
        print(f"error: every finetune run failed (first: {failed[0]['error']})", file=sys.stderr)
        return 2 if all(r.get("exit") == 2 for r in failed) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
