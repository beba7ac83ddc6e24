"""VCMA's rows in one process: the head over seeds and the Table 3 / Table 4 variants, each a `finetune.train.run`
on the synthetic STVG corpus through finetune/sweep.py (as benchmarks/experiments/stvg_heads.py), the features loaded from the
cache once for all of them. Prints one JSON object in stvg_heads' layout (per row: mean and std over seeds, overall and per sentence
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
import json
import os
import sys
import time

from benchmarks.experiments.stvg_heads import run_rows
from common.errors import UserError
from finetune.stvg_rows import beats_zero_shot, input_error, summarise


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
        from tubes import baselines

        b = baselines.measure(args.corpus, export=args.export)
        out["baselines"], out["queries"] = b["rows"], b["queries"]
    elif args.baselines != "none":
        line = [x for x in open(args.baselines) if x.startswith("{") and '"baselines"' in x][-1]
        earlier = json.loads(line)
        if (earlier["corpus"], earlier["export"]) != (args.corpus, args.export):
            print(f"error: --baselines [{args.baselines}]: another corpus or export", file=sys.stderr)
            return 2
        out["baselines"], out["baselines_from"] = earlier["baselines"], args.baselines
    def seeds_of(i):
        return args.seeds if i == 0 or args.variant_seeds is None else args.variant_seeds

    common = [f"checkpoint={args.export}", f"dataset.root={args.corpus}", *args.set]
    try:
        runs = run_rows([(name, args.config, overrides) for name, *overrides in args.row], seeds_of, args, common)
    except UserError as e:   # a row's config that cannot be meant: nothing has run
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = {}
    for i, (name, *overrides) in enumerate(args.row):
        rows[name] = {"overrides": overrides, "seeds": seeds_of(i), **summarise(seeds_of(i), runs[name])}
    out["heads"] = rows
    if "baselines" in out:
        out["beats_zero_shot"] = beats_zero_shot(out["baselines"]["zero_shot"], rows)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
