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
- zero_shot_true_span: the zero-shot tube choice given the true span (the spatial half alone);
- ceiling_true_span / ceiling_predicted_span: the best of the M linked tubes against the truth with the true span
  and with the zero-shot span (the most a tube-selection head can reach).
Without --export a randomly initialised stg-micro export (seed 0) is used, like the tests' fixtures: its
zero-shot row measures the pipeline, not a pretrained model; the README/docs name the export of every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from common import cli
from grounding import metrics as M
from grounding.evaluate import evaluate
from grounding.readers.stvg import read_vidstg
from tubes.linking import NEG, link_scores, link_tubes, pairwise_iou
from tubes.config import TubeConfig
from tubes.pipeline import video_tubes
from tubes.proposals import synthetic
from tubes.purity import purity
from tubes.regions import RegionCache
from tubes.zero_shot import tube_scores, zero_shot_spans


def random_export(folder: str) -> str:
    from pretrain.model import ModelConfig, build_model, save_export

    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12, pretrained=None)), folder)
    return folder


def prediction(vt, tube_idx: int, span: tuple[int, int]) -> dict:
    """The tube on the span's proposal frames (its first/last box held outside its extent), as the file holds it."""
    return vt.tubes[tube_idx].with_span(span, vt.proposals.frames).to_json(digits=None)


def best_tube(vt, q, span) -> int:
    frames = M.sample_frame_ids(q.span[0], q.span[1], q.video_fps)
    best, arg = -1.0, 0
    for m in range(len(vt.tubes)):
        p = vt.tubes[m].with_span(span, vt.proposals.frames)
        v = M.stvg_query_metrics(frames, q.tube, span, q.boxes, p)["vIoU"]
        if v > best:
            best, arg = v, m
    return arg


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


def check(args: argparse.Namespace) -> None:
    """What the benchmark refuses before any work, each as one UserError line."""
    from common.errors import UserError

    if not os.path.isfile(os.path.join(args.corpus, "corpus.json")):
        raise UserError(f"--corpus [{args.corpus}]: not a synthetic corpus (no corpus.json; make one with "
                        f"python -m shards.synthetic --out DIR mode=stvg)")
    splits = sorted(d for d in os.listdir(args.corpus) if os.path.isdir(os.path.join(args.corpus, d)))
    if args.split not in splits:
        raise UserError(f"--split [{args.split}]: {args.corpus} has no such split (it has {', '.join(splits)})")
    if not os.path.isfile(os.path.join(args.corpus, args.split, "truth", "vidstg.json")):
        raise UserError(f"--corpus [{args.corpus}]: not an STVG corpus (no {args.split}/truth/vidstg.json; make one "
                        f"with python -m shards.synthetic --out DIR mode=stvg)")
    for name in ("tubes", "smooth"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} [{getattr(args, name)}]: must be >= 1")


def measure(args: argparse.Namespace, linking: bool = True) -> dict:
    """Every row of the module docstring on `args.split` (scores in percent), tube purity and (with `linking`)
    the linking times: the JSON object main prints."""
    from pretrain.model import load_model

    check(args)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tmp = tempfile.mkdtemp(prefix="stvg-bench-")
    export = args.export or random_export(os.path.join(tmp, "export"))
    model = load_model(export).to("cuda" if torch.cuda.is_available() else "cpu")
    ann = os.path.join(args.corpus, args.split, "truth", "vidstg.json")
    queries = read_vidstg(ann)
    truth = json.load(open(ann))
    source = synthetic(args.corpus, args.split)
    cache = RegionCache(args.cache or os.path.join(tmp, "cache"), export, source.name)
    cfg = TubeConfig(tubes=args.tubes).validate()
    rng = np.random.default_rng(args.seed)
    by_video: dict[str, list] = {}
    for q in queries:
        by_video.setdefault(q.video, []).append(q)
    preds = {k: {} for k in ("random", "random_true_span", "zero_shot", "zero_shot_true_span", "ceiling_true_span",
                             "ceiling_predicted_span")}
    pur_all, pur_obj, pur_iou = [], [], []
    t0 = time.perf_counter()
    for vid, qs in by_video.items():
        meta = next(v for v in truth["videos"] if v["original_video_id"] == vid)
        path = os.path.join(args.corpus, args.split, meta["video_path"])
        vt = video_tubes(model, vid, path, source.video(vid), meta["width"], meta["height"], cfg, cache)
        a, b = purity(vt.tubes, vt.proposals.frames, truth["trajectories"][vid])
        pur_all.append(a)
        pur_obj.append(b)
        pr = vt.proposals
        blind = link_tubes(pr.frames, np.zeros((*pr.valid.shape, 1), np.float32), pr.boxes, pr.valid, cfg.tubes,
                           cfg.alpha, cfg.max_gap, cfg.gap_discount, cfg.min_iou)
        pur_iou.append(purity(blind, pr.frames, truth["trajectories"][vid])[1])
        spans = zero_shot_spans(model, vt.frames, vt.proposals.frames, [q.sentence for q in qs], args.smooth)
        n = int(meta["frame_count"])
        for q, span in zip(qs, spans):
            s = int(rng.integers(0, n))
            preds["random"][q.key] = prediction(vt, int(rng.integers(len(vt.tubes))), (s, int(rng.integers(s + 1, n + 1))))
            preds["random_true_span"][q.key] = prediction(vt, int(rng.integers(len(vt.tubes))), q.tube)
            preds["zero_shot"][q.key] = prediction(vt, int(np.argmax(tube_scores(model, vt, q.sentence, span))), span)
            preds["zero_shot_true_span"][q.key] = prediction(
                vt, int(np.argmax(tube_scores(model, vt, q.sentence, q.tube))), q.tube)
            preds["ceiling_true_span"][q.key] = prediction(vt, best_tube(vt, q, q.tube), q.tube)
            preds["ceiling_predicted_span"][q.key] = prediction(vt, best_tube(vt, q, span), span)
    wall = time.perf_counter() - t0
    rows = {}
    for name, pr in preds.items():
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(pr, f)
        scores, _ = evaluate("vidstg", ann, path)
        rows[name] = {k: round(100 * v, 2) for k, v in scores.items()}
    corpus = json.load(open(os.path.join(args.corpus, "corpus.json")))
    return {"corpus": args.corpus, "split": args.split, "queries": len(queries), "videos": len(by_video),
            "export": args.export or "random-init stg-micro (seed 0)", "tubes_per_video": args.tubes,
            "smooth": args.smooth, "mix": corpus.get("stvg", {}).get("mix"), "rows": rows,
            "tube_purity": {"all_tubes": round(float(np.mean(pur_all)), 4),
                            "first_n_objects_tubes": round(float(np.mean(pur_obj)), 4),
                            "first_n_objects_tubes_iou_only": round(float(np.mean(pur_iou)), 4)},
            "linking_seconds": linking_times() if linking else None, "wall_seconds": round(wall, 2)}


def main(argv=None) -> int:
    print(json.dumps(measure(arguments().parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
