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
row. The rows x seeds are finetune/sweep.py's jobs, each a `finetune.train.run` in this process (one at a time: the
seeds share the cores; each feature set read from the cache once) into OUT/NAME/seedS; a run that already finished
there (summary.json with metrics) is read, not re-run, so an interrupted benchmark continues where it stopped. `beats_zero_shot` compares each row's mean m_vIoU per sentence
type with the baseline zero_shot row (Sec. 3.5 span + best word-region tube of the same export),
`beats_zero_shot_activity` with the zero_shot_activity row (the zero-shot tube with its activity's span).

`--span-rules activity mix:0.5 ...`: span rules act at prediction time only (docs/stvg.md "The span rule"), so each
head row's finished runs are also predicted under each rule (finetune/repredict.py, no training) as rows
`NAME+RULE`; `RULE:W` sets span.weight, `RULE/K` span.smooth, `RULE@T` span.tube_weight (e.g. `mix:0.5/5`,
`activity@0`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from common.errors import UserError
from finetune.stvg_rows import beats_zero_shot, input_error, span_overrides, summarise



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


def repredicted(run: dict, out: str, name: str, overrides: list[str]) -> dict:
    """A finished run's figures under other span.* settings (finetune/repredict.py), as a run summary."""
    from finetune.repredict import repredict

    if not run.get("metrics"):
        return {"error": run.get("error") or "the run did not finish"}
    folder = os.path.join(out, name, f"seed{run['seed']}")
    try:
        with stdout_to_stderr():
            r = repredict(folder, overrides, os.path.join(folder, "span-" + "-".join(o.split("=", 1)[1]
                                                                                     for o in overrides)))
    except UserError as e:
        return {"error": str(e)}
    return {"metrics": r["metrics"], "steps": run.get("steps")}


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
    p.add_argument("--span-rules", nargs="*", default=[], metavar="RULE[:WEIGHT][/SMOOTH][@TUBE_WEIGHT]",
                   help="also predict each head row's runs under these span rules (no training)")
    args = p.parse_args(argv)
    for row in args.head:
        if len(row) < 2 or not os.path.exists(row[1]):
            print(f"error: --head needs NAME CONFIG [KEY=VALUE ...], and the config must exist: {row}",
                  file=sys.stderr)
            return 2
    try:
        rules = [span_overrides(r) for r in args.span_rules]
    except ValueError as e:
        print(f"error: --span-rules: {e}", file=sys.stderr)
        return 2
    args.corpus, args.export, args.out = (os.path.abspath(x) for x in (args.corpus, args.export, args.out))
    problem = input_error(args.corpus, args.export)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    t0 = time.time()
    out = {"corpus": args.corpus, "export": args.export, "seeds": args.seeds, "set": args.set}
    if not args.no_baselines:
        from tubes import baselines

        # the baselines' region features beside the finetunes' (a re-run reads them, as it reads finished runs)
        b = baselines.measure(args.corpus, export=args.export,
                              cache=os.path.join(args.cache, "baselines") if args.cache else "")
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
    trained = list(heads.items())   # the rules' rows come from these runs only
    for (rule, overrides) in rules:
        for name, h in trained:
            again = [repredicted(r, args.out, name, overrides) for r in h["runs"]]
            heads[f"{name}+{rule}"] = {"config": h["config"], "overrides": h["overrides"] + overrides,
                                       "repredicted_from": name, **summarise(args.seeds, again)}
    out["heads"] = heads
    if "baselines" in out:
        out["beats_zero_shot"] = beats_zero_shot(out["baselines"]["zero_shot"], heads)
        if "zero_shot_activity" in out["baselines"]:
            out["beats_zero_shot_activity"] = beats_zero_shot(out["baselines"]["zero_shot_activity"], heads)
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
