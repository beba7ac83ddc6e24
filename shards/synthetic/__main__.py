"""python -m shards.synthetic --out DIR [--config YAML] [key=value ...]: write the corpus, print a JSON summary
(its last line) with the counts and the seconds spent per video."""
from __future__ import annotations

import json
import sys

from common import cli
from common.config import load, parser
from common.errors import UserError
from shards.synthetic.config import SyntheticConfig
from shards.synthetic.encode import EncodeError
from shards.synthetic.generate import generate


def main(argv: list[str] | None = None) -> int:
    p = parser(SyntheticConfig, "Generate the synthetic instructional-video corpus with hidden ground truth.")
    p.prog = "python -m shards.synthetic"
    p.add_argument("--out", help="output folder (local path or fsspec URL); same as out=DIR")
    args = p.parse_args(argv)
    cfg = load(SyntheticConfig, args.config, args.overrides)
    if args.out:
        cfg.out = args.out  # set directly: a key=value override would parse the path as YAML
    try:
        summary = generate(cfg.validate())
    except EncodeError as e:
        raise UserError(str(e)) from None
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
