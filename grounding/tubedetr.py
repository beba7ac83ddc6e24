"""The project's vidstg/hcstvg prediction file as TubeDETR's evaluator takes it, and back.

TubeDETR's `VidSTGEvaluator.evaluate(predictions, video_predictions)` (and HC-STVG's) reads two dicts:
- `predictions`: `{"<query id>_<frame>": {"boxes": [[x1, y1, x2, y2]]}}`, one box for every frame it samples of the
  query's frame span (docs/evaluation.md), ground-truth tube frames included;
- `video_predictions`: `{"<query id>": {"sted": [start, end], "qtype": "declarative"|"interrogative"}}` (HC-STVG:
  no sentence types; its evaluator reads `sted` only, `qtype` is null).
Our file (`{"<query id>": {"sted", "boxes": {frame: box}}}`) holds boxes inside `sted`; a sampled frame outside it
gets the tube's nearest box (what a tube shows there; TubeDETR's vIoU counts only frames inside both spans, its
gt_vIoU every ground-truth frame). JSON keys are strings: TubeDETR's file numbers queries with integers, so cast
the keys of `video_predictions` with int() before handing it to its evaluator.

    python -m grounding.tubedetr --annotations test.json --predictions predictions.json --out DIR [--benchmark hcstvg]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from common import cli, fsio
from grounding.metrics import sample_frame_ids
from grounding.readers import read_hcstvg, read_stvg_predictions, read_vidstg


def to_tubedetr(predictions_url: str, queries) -> tuple[dict, dict]:
    """(predictions, video_predictions) for the queries (grounding.readers.StvgQuery) that have a prediction."""
    preds = read_stvg_predictions(predictions_url)
    frames_out, videos_out = {}, {}
    for q in queries:
        p = preds.get(q.key)
        if p is None:
            continue
        videos_out[q.key] = {"sted": list(p.span), "qtype": q.qtype}
        boxed = list(p)
        if not boxed:   # a span without boxes: TubeDETR's evaluator has nothing to score spatially
            continue
        for f in sample_frame_ids(q.span[0], q.span[1], q.video_fps):
            f = int(f)
            box = p.box_at(f)
            if box is None:
                box = p[boxed[int(np.argmin([abs(b - f) for b in boxed]))]]
            frames_out[f"{q.key}_{f}"] = {"boxes": [[round(float(c), 2) for c in box]]}
    return frames_out, videos_out


def write(predictions_url: str, queries, out_dir: str) -> dict[str, str]:
    frames, videos = to_tubedetr(predictions_url, queries)
    paths = {"predictions": fsio.join(out_dir, "tubedetr_predictions.json"),
             "video_predictions": fsio.join(out_dir, "tubedetr_video_predictions.json")}
    fsio.write_json_atomic(paths["predictions"], frames)
    fsio.write_json_atomic(paths["video_predictions"], videos)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grounding.tubedetr", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--annotations", required=True, help="the annotation the predictions answer (vidstg or hcstvg)")
    p.add_argument("--predictions", required=True, help="our prediction file (docs/evaluation.md)")
    p.add_argument("--out", required=True, help="folder for tubedetr_predictions.json, tubedetr_video_predictions.json")
    p.add_argument("--benchmark", choices=("vidstg", "hcstvg"), default="vidstg")
    p.add_argument("--boxes", help="vidstg: the trajectories file, for raw annotation files")
    p.add_argument("--debug", action="store_true", help="tracebacks for expected errors too")
    args = p.parse_args(argv)
    queries = read_hcstvg(args.annotations) if args.benchmark == "hcstvg" else read_vidstg(args.annotations, args.boxes)
    fsio.makedirs(args.out)
    paths = write(args.predictions, queries, args.out)
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
