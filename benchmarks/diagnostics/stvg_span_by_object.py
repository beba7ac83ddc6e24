"""Is a prediction's span wrong because its tube is on the wrong object? For each vidstg prediction file on the
synthetic STVG test split: the share of queries whose predicted boxes follow the referred object (mean IoU with
its box over the predicted frames >= --iou; the corpus's trajectories give every object's box in every frame), and
m_tIoU over those queries and over the rest, and the median ratio of predicted to true span length. Prints one
JSON object.

    python -m benchmarks.diagnostics.stvg_span_by_object --corpus DIR NAME=PREDICTIONS.json [NAME=...]

A diagnostic (docs/results/stvg.md "Where the span is lost"): it reads the truth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from common import cli
from common.errors import UserError
from grounding.metrics.boxes import box_iou_aligned


def split_by_object(truth: dict, preds: dict, iou: float) -> dict:
    on, off, ratio = [], [], []
    for q in truth["videos"]:
        p = preds.get(q["video_id"])
        if p is None:
            continue
        traj = truth["trajectories"][q["original_video_id"]][str(q["target_id"])]
        frames = [f for f in p["boxes"] if f in traj]
        hit = False
        if frames:
            pb = np.array([p["boxes"][f] for f in frames], float)
            tb = np.array([traj[f]["bbox"] for f in frames], float)
            tb[:, 2:] += tb[:, :2]
            hit = float(box_iou_aligned(pb, tb).mean()) >= iou
        (s, e), (ts, te) = p["sted"], (q["tube_start_frame"], q["tube_end_frame"])
        t = max(0, min(e, te) - max(s, ts)) / max(max(e, te) - min(s, ts), 1)
        (on if hit else off).append(t)
        ratio.append((e - s) / max(te - ts, 1))
    n = len(on) + len(off)
    mean = (lambda v: round(100 * float(np.mean(v)), 2) if v else None)  # noqa: E731
    return {"queries": n, "on_object_share": round(len(on) / max(n, 1), 4), "m_tIoU_on_object": mean(on),
            "m_tIoU_off_object": mean(off), "m_tIoU": mean(on + off),
            "median_length_ratio": round(float(np.median(ratio)), 2) if ratio else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("files", nargs="+", metavar="NAME=PREDICTIONS")
    a = p.parse_args(argv)
    ann = os.path.join(a.corpus, a.split, "truth", "vidstg.json")
    if not os.path.isfile(ann):
        raise UserError(f"--corpus [{a.corpus}]: no {a.split}/truth/vidstg.json (an STVG corpus, mode=stvg)")
    truth = json.load(open(ann))
    out = {"benchmark": "stvg_span_by_object", "corpus": a.corpus, "iou": a.iou, "rows": {}}
    for item in a.files:
        name, _, path = item.partition("=")
        if not path or not os.path.isfile(path):
            raise UserError(f"[{item}]: NAME=PREDICTIONS.json with an existing file")
        out["rows"][name] = split_by_object(truth, json.load(open(path)), a.iou)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
