"""STVG baselines and ceilings of an export on a synthetic STVG split (docs/stvg.md section 3): random spans and
tubes, the zero-shot span and tube (Sec. 3.5 temporal detection + best word-region tube), the zero-shot tube
chosen over the whole video with each tube's peak activity (tubes/activity.py) and its activity's span (the
heads' `span.rule=activity` with span.tube_weight=1), and the best linked tube given the true or the zero-shot
span, scored by grounding's vidstg evaluator. Library code shared by benchmarks/experiments/stvg_baselines.py
(which adds linking times) and the STVG demo (cluster/demo.py).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import torch

from grounding import metrics as M
from grounding.evaluate import evaluate
from grounding.readers.stvg import read_vidstg
from tubes.activity import activity_span, choose_tube, tube_peak
from tubes.config import TubeConfig
from tubes.linking import link_tubes
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


def check(corpus: str, split: str, tubes: int, smooth: int) -> None:
    """What measure refuses before any work, each as one UserError line (named by the benchmark's flags)."""
    from common.errors import UserError

    if not os.path.isfile(os.path.join(corpus, "corpus.json")):
        raise UserError(f"--corpus [{corpus}]: not a synthetic corpus (no corpus.json; make one with "
                        f"python -m shards.synthetic --out DIR mode=stvg)")
    splits = sorted(d for d in os.listdir(corpus) if os.path.isdir(os.path.join(corpus, d)))
    if split not in splits:
        raise UserError(f"--split [{split}]: {corpus} has no such split (it has {', '.join(splits)})")
    if not os.path.isfile(os.path.join(corpus, split, "truth", "vidstg.json")):
        raise UserError(f"--corpus [{corpus}]: not an STVG corpus (no {split}/truth/vidstg.json; make one "
                        f"with python -m shards.synthetic --out DIR mode=stvg)")
    for name, value in (("tubes", tubes), ("smooth", smooth)):
        if value < 1:
            raise UserError(f"--{name} [{value}]: must be >= 1")


def measure(corpus: str, split: str = "test", export: str = "", cache: str = "", tubes: int = 10, seed: int = 0,
            smooth: int = 1, predictions_dir: str | None = None) -> dict:
    """Every row of the module docstring on `split` (scores in percent) and tube purity, for `export` (default: a
    random-init stg-micro, seed 0). Region features are cached in `cache` (default: a temporary folder); each row's
    predictions file is written to predictions_dir (default: a temporary folder) as <row>.json."""
    check(corpus, split, tubes, smooth)
    if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="stvg-bench-") as tmp:
        return _measure(corpus, split, export, cache, tubes, seed, smooth, predictions_dir or tmp, tmp)


def _measure(corpus, split, export, cache, tubes, seed, smooth, predictions_dir, tmp) -> dict:
    from pretrain.export_ref import Export

    model_dir = export or random_export(os.path.join(tmp, "export"))
    model = Export.of(model_dir).load_model().to("cuda" if torch.cuda.is_available() else "cpu")
    ann = os.path.join(corpus, split, "truth", "vidstg.json")
    queries = read_vidstg(ann)
    truth = json.load(open(ann))
    source = synthetic(corpus, split)
    cache = RegionCache(cache or os.path.join(tmp, "cache"), model_dir, source.name)
    cfg = TubeConfig(tubes=tubes).validate()
    rng = np.random.default_rng(seed)
    by_video: dict[str, list] = {}
    for q in queries:
        by_video.setdefault(q.video, []).append(q)
    preds = {k: {} for k in ("random", "random_true_span", "zero_shot", "zero_shot_activity", "zero_shot_true_span",
                             "ceiling_true_span", "ceiling_predicted_span")}
    pur_all, pur_obj, pur_iou = [], [], []
    t0 = time.perf_counter()
    for vid, qs in by_video.items():
        meta = next(v for v in truth["videos"] if v["original_video_id"] == vid)
        path = os.path.join(corpus, split, meta["video_path"])
        vt = video_tubes(model, vid, path, source.video(vid), meta["width"], meta["height"], cfg, cache)
        a, b = purity(vt.tubes, vt.proposals.frames, truth["trajectories"][vid])
        pur_all.append(a)
        pur_obj.append(b)
        pr = vt.proposals
        blind = link_tubes(pr.frames, np.zeros((*pr.valid.shape, 1), np.float32), pr.boxes, pr.valid, cfg.tubes,
                           cfg.alpha, cfg.max_gap, cfg.gap_discount, cfg.min_iou)
        pur_iou.append(purity(blind, pr.frames, truth["trajectories"][vid])[1])
        spans = zero_shot_spans(model, vt.frames, vt.proposals.frames, [q.sentence for q in qs], smooth)
        peaks = [tube_peak(a) for a in vt.tube_activities]
        n = int(meta["frame_count"])
        for q, span in zip(qs, spans):
            s = int(rng.integers(0, n))
            preds["random"][q.key] = prediction(vt, int(rng.integers(len(vt.tubes))), (s, int(rng.integers(s + 1, n + 1))))
            preds["random_true_span"][q.key] = prediction(vt, int(rng.integers(len(vt.tubes))), q.tube)
            preds["zero_shot"][q.key] = prediction(vt, int(np.argmax(tube_scores(model, vt, q.sentence, span))), span)
            whole = choose_tube(tube_scores(model, vt, q.sentence, (0, n)), peaks, 1.0)
            preds["zero_shot_activity"][q.key] = prediction(vt, whole, activity_span(vt.tube_activities[whole],
                                                                                         vt.proposals.frames))
            preds["zero_shot_true_span"][q.key] = prediction(
                vt, int(np.argmax(tube_scores(model, vt, q.sentence, q.tube))), q.tube)
            preds["ceiling_true_span"][q.key] = prediction(vt, best_tube(vt, q, q.tube), q.tube)
            preds["ceiling_predicted_span"][q.key] = prediction(vt, best_tube(vt, q, span), span)
    wall = time.perf_counter() - t0
    rows = {}
    for name, pr in preds.items():
        path = os.path.join(predictions_dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(pr, f)
        scores, _ = evaluate("vidstg", ann, path)
        rows[name] = {k: round(100 * v, 2) for k, v in scores.items()}
    mix = json.load(open(os.path.join(corpus, "corpus.json"))).get("stvg", {}).get("mix")
    return {"corpus": corpus, "split": split, "queries": len(queries), "videos": len(by_video),
            "export": export or "random-init stg-micro (seed 0)", "tubes_per_video": tubes,
            "smooth": smooth, "mix": mix, "rows": rows,
            "tube_purity": {"all_tubes": round(float(np.mean(pur_all)), 4),
                            "first_n_objects_tubes": round(float(np.mean(pur_obj)), 4),
                            "first_n_objects_tubes_iou_only": round(float(np.mean(pur_iou)), 4)},
            "wall_seconds": round(wall, 2)}


