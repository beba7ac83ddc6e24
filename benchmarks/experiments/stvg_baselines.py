"""STVG baselines and ceilings on the synthetic STVG test split, scored by grounding's vidstg evaluator; plus tube
purity and how linking time grows with frames x proposals. Prints one JSON object.

  python -m shards.synthetic --out runs/stvg/corpus mode=stvg n_train=40 n_test=40
  python -m benchmarks.experiments.stvg_baselines --corpus runs/stvg/corpus [--export DIR] [--split test]

Rows (each: m_tIoU, m_vIoU, vIoU@0.3, vIoU@0.5, overall and per sentence type):
- random: a uniform random span and one of the M linked tubes at random; random_true_span: a random tube with the
  true span (the bar for the spatial half);
- zero_shot: the export alone. Span: Sec. 3.5 temporal detection (global frame-query similarity over the video's
  query pool, per-query standardisation, each frame takes its best query; the query's longest run). Tube: the
  linked tube whose region features are most similar to the query's words (mean word-region cosine over the span);
- zero_shot_activity: the zero-shot tube chosen over the whole video, its span the best segment of that tube's
  activity (tubes/activity.py; the heads' `span.rule=activity`);
- zero_shot_true_span: the zero-shot tube choice given the true span (the spatial half alone);
- ceiling_true_span / ceiling_predicted_span: the best of the M linked tubes against the truth with the true span
  and with the zero-shot span (the most a tube-selection head can reach).
Without --export a randomly initialised stg-micro export (seed 0) is used, like the tests' fixtures: its
zero-shot row measures the pipeline, not a pretrained model; the README/docs name the export of every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from common import cli
from tubes import baselines
from tubes.linking import NEG, link_scores, link_tubes, pairwise_iou


def _loop_link_scores(feats, boxes, valid, alpha, max_gap, min_iou):
    """The baseline: Eq. 4 with a Python loop over frame offsets, frames and box pairs."""
    out = []
    for k in range(1, max_gap + 2):
        s = np.full((len(feats) - k, feats.shape[1], feats.shape[1]), NEG, np.float32)
        for t in range(len(feats) - k):
            for i in np.flatnonzero(valid[t]):
                for j in np.flatnonzero(valid[t + k]):
                    a, b = feats[t, i], feats[t + k, j]
                    iou = float(pairwise_iou(boxes[t, i][None], boxes[t + k, j][None])[0, 0])
                    if iou > min_iou:
                        s[t, i, j] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) + alpha * iou
        out.append(s)
    return out


def linking_times(sizes=((50, 5), (100, 10), (200, 10), (200, 20), (400, 20), (400, 40)), m: int = 10,
                  d: int = 64) -> dict:
    """Seconds of link_tubes (M tubes) per (frames, proposals), and for one size the link-score computation
    against a per-box-pair loop computing the same scores (ratio = loop / batched)."""
    rng = np.random.default_rng(0)

    def case(f, n):
        feats = rng.normal(size=(f, n, d)).astype(np.float32)
        xy = rng.uniform(0, 100, size=(f, n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 40, size=(f, n, 2))], -1).astype(np.float32)
        return feats, boxes, rng.uniform(size=(f, n)) > 0.05

    rows = []
    for f, n in sizes:
        feats, boxes, valid = case(f, n)
        t0 = time.perf_counter()
        link_tubes(np.arange(f), feats, boxes, valid, m)
        rows.append({"frames": f, "proposals": n, "tubes": m, "seconds": round(time.perf_counter() - t0, 4)})
    feats, boxes, valid = case(100, 10)
    t0 = time.perf_counter()
    fast = link_scores(feats, boxes, valid, 0.5, 2, 0.3)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = _loop_link_scores(feats, boxes, valid, 0.5, 2, 0.3)
    t_slow = time.perf_counter() - t0
    same = all(np.allclose(a, b, atol=1e-4) for a, b in zip(fast, slow))
    return {"link_tubes": rows, "link_scores_100x10": {"batched_s": round(t_fast, 5), "pair_loop_s": round(t_slow, 4),
                                                      "speedup": round(t_slow / max(t_fast, 1e-9), 1),
                                                      "same_scores": same}}


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="synthetic STVG corpus (python -m shards.synthetic mode=stvg)")
    p.add_argument("--split", default="test")
    p.add_argument("--export", help="pretrained export folder (default: random-init stg-micro, seed 0)")
    p.add_argument("--cache", help="region-feature cache folder (default: a temporary one)")
    p.add_argument("--tubes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smooth", type=int, default=1, help="zero-shot: frames in the moving mean of each query's "
                   "scores before the per-frame argmax (odd; 1 = the paper's per-frame decision)")
    return p


def measure(args: argparse.Namespace, linking: bool = True) -> dict:
    """tubes.baselines.measure's rows and tube purity plus (with `linking`) the linking times: the JSON object main
    prints."""
    out = baselines.measure(args.corpus, args.split, args.export or "", args.cache or "", args.tubes, args.seed,
                            args.smooth)
    out["linking_seconds"] = linking_times() if linking else None
    return out


def main(argv=None) -> int:
    print(json.dumps(measure(arguments().parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
