"""python -m grounding.convert vidstg|hcstvg: released annotations -> TubeDETR's preprocessed files.

  python -m grounding.convert vidstg --annotations VIDSTG/train_annotations.json VIDSTG/test_annotations.json \\
      --vidor VIDOR/annotation --videos VIDOR/video --out DATA/vidstg          # -> train.json, test.json
  python -m grounding.convert hcstvg --annotations HCSTVG/anno_v2/train_v2.json HCSTVG/anno_v2/val_v2.json \\
      --videos HCSTVG/video --out DATA/hcstvg                                    # -> train_v2_proc.json, ...

A video or VidOR annotation file that is missing is refused with its name; --allow-missing leaves out its queries
instead, counts them and names the videos in the summary (the last line of stdout, one JSON object).
"""
from __future__ import annotations

import argparse
import json
import sys

from common import cli, fsio
from grounding.convert import hcstvg, vidstg
from grounding.convert.common import Missing, output_path, write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grounding.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("dataset", choices=("vidstg", "hcstvg"))
    p.add_argument("--annotations", nargs="+", required=True,
                   help="VidSTG *_annotations.json, or HC-STVG v1/v2 annotation files")
    p.add_argument("--vidor", help="vidstg: VidOR's annotation folder (training/ and validation/, any depth)")
    p.add_argument("--videos", required=True, help="the video folder (VidOR's video/, HC-STVG's video/; any depth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--allow-missing", action="store_true", help="count and leave out missing videos/annotations")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.add_argument("--debug", action="store_true", help="tracebacks for expected errors too")
    args = p.parse_args(argv)
    missing = Missing(args.allow_missing)
    if args.dataset == "vidstg":
        if not args.vidor:
            p.error("vidstg needs --vidor (VidOR's annotation folder)")
        outputs = vidstg.run(args.annotations, args.vidor, args.videos, missing)
    else:
        outputs = hcstvg.run(args.annotations, args.videos, missing)
    paths = {name: output_path(args.out, name + ".json", args.overwrite) for name in outputs}  # refuse before writing
    summary = {"dataset": args.dataset, "videos_root": fsio.filesystem(args.videos)[1] if fsio.is_local(args.videos)
               else args.videos, "files": {}}
    for name, data in outputs.items():
        write(paths[name], data)
        rows = data["videos"] if isinstance(data, dict) else data
        entry = {"path": paths[name], "queries": len(rows), "videos": len({r["original_video_id"] for r in rows})}
        if args.dataset == "vidstg":
            for qtype in ("declarative", "interrogative"):
                entry[qtype] = sum(r["qtype"] == qtype for r in rows)
        summary["files"][name] = entry
    summary.update(missing.report())
    if missing.dropped_queries:
        print(f"warning: {missing.dropped_queries} queries left out: {len(set(missing.videos))} videos and "
              f"{len(set(missing.annotations))} annotation files missing (listed in the summary)", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
