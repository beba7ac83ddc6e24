"""VCMA's rows in one process: the head over seeds and the Table 3 / Table 4 variants, each a `finetune.train.run`
on the synthetic STVG corpus, with the features loaded from the cache once for all of them (a separate process per
run, as benchmarks/experiments/stvg_heads.py does, reloads 160 videos' regions and tubes each time: minutes on
the shared 2 cores). Prints one JSON object in stvg_heads' layout (per row: mean and std over seeds, overall and per sentence
type), plus the baselines and `beats_zero_shot`.

  python -m benchmarks.experiments.vcma_rows --corpus /work/stvg/corpus --export /work/stvg/pretrain/export \\
      --out /work/runs-vcma/rows --config configs/finetune/vcma_synthetic.yaml --seeds 0 1 2 \\
      --row vcma --row contrastive_only vcma.losses=contrastive --row reconstruction_only vcma.losses=reconstruction \\
      [--variant-seeds 0] [--baselines compute|none|FILE]

`--row NAME [KEY=VALUE ...]`: a row and its overrides of the config; the first row runs over `--seeds`, the others
over `--variant-seeds` (default: the same). A run whose folder OUT/NAME/seedS already holds a summary with metrics
is read, not re-run. `--baselines compute` runs benchmarks/experiments/stvg_baselines.py's rows (random,
zero-shot, ceilings) for the same export here; FILE reads them from the JSON line of an earlier
`benchmarks.experiments.stvg_heads` run on the same corpus and export (they do not depend on the head).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from finetune.stvg_rows import beats_zero_shot, input_error, summarise


def _memoised_features():
    """finetune.train reads the cache through feature_store(...).load_all; keep what it loaded for the next run."""
    import finetune.train as T

    make, loaded = T.feature_store, {}

    def feature_store(cfg, key=None):
        store = make(cfg, key)
        load = store.load_all

        def load_all(videos):
            k = (store.key, tuple(sorted(videos)))
            if k not in loaded:
                loaded[k] = load(videos)
            return {v: loaded[k][v] for v in videos if v in loaded[k]}

        store.load_all = load_all
        return store

    T.feature_store = feature_store


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


def one(name, overrides, seed, args) -> dict:
    from common import config as cfglib
    from finetune.config import FinetuneConfig
    from finetune.train import run

    folder = os.path.join(args.out, name, f"seed{seed}")
    done = os.path.join(folder, "summary.json")
    if os.path.exists(done) and json.load(open(done)).get("metrics"):
        return json.load(open(done))
    cfg = cfglib.load(FinetuneConfig, args.config, [f"checkpoint={args.export}", f"dataset.root={args.corpus}",
                                                     f"run={folder}", f"seed={seed}", *args.set, *overrides])
    try:
        with stdout_to_stderr():
            return run(cfg)
    except Exception as e:  # noqa: BLE001 - one failed row must not hide the others
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/finetune/vcma_synthetic.yaml")
    p.add_argument("--row", nargs="+", action="append", default=[], metavar="NAME [KEY=VALUE]")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variant-seeds", nargs="+", type=int, default=None)
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--baselines", default="none", help="compute | none | FILE (an earlier stvg_heads JSON line)")
    args = p.parse_args(argv)
    if not args.row:
        print("error: --row NAME [KEY=VALUE ...] is required (at least one row)", file=sys.stderr)
        return 2
    args.corpus, args.export, args.out = (os.path.abspath(x) for x in (args.corpus, args.export, args.out))
    problem = input_error(args.corpus, args.export)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    t0 = time.time()
    out = {"corpus": args.corpus, "export": args.export, "config": args.config, "set": args.set}
    if args.baselines == "compute":
        from benchmarks.experiments import stvg_baselines as baselines

        b = baselines.measure(baselines.arguments().parse_args(["--corpus", args.corpus, "--export", args.export]),
                              linking=False)
        out["baselines"], out["queries"] = b["rows"], b["queries"]
    elif args.baselines != "none":
        line = [x for x in open(args.baselines) if x.startswith("{") and '"baselines"' in x][-1]
        earlier = json.loads(line)
        if (earlier["corpus"], earlier["export"]) != (args.corpus, args.export):
            print(f"error: --baselines [{args.baselines}]: another corpus or export", file=sys.stderr)
            return 2
        out["baselines"], out["baselines_from"] = earlier["baselines"], args.baselines
    _memoised_features()
    rows = {}
    for i, (name, *overrides) in enumerate(args.row):
        seeds = args.seeds if i == 0 or args.variant_seeds is None else args.variant_seeds
        runs = [one(name, overrides, s, args) for s in seeds]
        rows[name] = {"overrides": overrides, "seeds": seeds, **summarise(seeds, runs)}
        print(json.dumps({"row": name, "mean": rows[name]["mean"], "seeds_done": rows[name]["seeds_done"]}),
              file=sys.stderr, flush=True)
    out["heads"] = rows
    if "baselines" in out:
        out["beats_zero_shot"] = beats_zero_shot(out["baselines"]["zero_shot"], rows)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
