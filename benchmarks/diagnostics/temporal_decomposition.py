"""Where the temporal signal is lost: one run of a pretrained export on the synthetic test split, decomposed.

    python -m benchmarks.diagnostics.temporal_decomposition --checkpoint runs/demo/pretrain/export \
        --test runs/demo/corpus/test \
        [--shards runs/demo/shards --config configs/pretrain/demo32.yaml] [--smooth 1,3,5] \
        [--calibrate runs/demo/corpus/train --calibrate-videos 100] [--calibrate-box runs/demo/corpus/train] \
        [inference.key=value ...]

Prints one JSON object:
- `frames`: per-frame action accuracy on the annotated seconds (argmax over the video's actions, no background),
  and its verb-only / object-only parts, next to the pool chance; for each `--smooth` window.
- `map`: GroundingYouTube video mAP of (a) the model's prediction, (b) the true spans with the model's heatmap boxes
  (time perfect: what space alone costs), (c) the model's spans with the true boxes (space perfect: what time alone
  costs), (d) both true (the protocol's ceiling, ~100).
- `calibration` (with --calibrate): tau chosen on the *train* split's hidden truth (grounding.inference.
  calibrate_tau: the per-frame accuracy with background, maximised), then used for every tau-dependent figure.
- `box_calibration` (with --calibrate-box): inference.box_threshold chosen on the *train* split's hidden boxes
  (grounding.inference.calibrate_box_threshold: mean IoU of the heatmap boxes of the true step), then used for
  every box of the run.
- `background`: with the inference tau, the share of background seconds predicted as background and of action
  seconds predicted as background.
- `batches` (with --shards): in the batches the training loader yields with the config's data settings, the share
  of each clip's in-batch negatives that come from its own video.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def _pred_entry(step: str, box=None, point=None, score: float = 1.0) -> dict:
    e: dict = {"step": step, "score": float(score)}
    if box is not None:
        e["box"] = [float(v) for v in box]
    if point is not None:
        e["point"] = [float(v) for v in point]
    return e


def run(model, test: str, cfg, smooths: list[int]) -> dict:
    import torch

    from grounding import protocols
    from grounding.inference import (InferenceConfig, label_frames, locate, spatial_heatmaps, temporal_scores)
    from grounding.metrics import actions
    from grounding.predict import decode
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from grounding.readers.predictions import SecondPrediction

    truth = read_groundingyoutube(test)
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5]
    model.eval()
    per_smooth = {w: {"truth": [], "pred": []} for w in smooths}
    pools = []
    variants = {"model": {}, "true_spans_model_boxes": {}, "model_spans_true_boxes": {}, "true_spans_true_boxes": {}}
    bg = {"bg_seconds": 0, "bg_as_bg": 0, "action_seconds": 0, "action_as_bg": 0}
    with torch.no_grad():
        for vid, v in sorted(truth.items()):
            clip = decode(vid, os.path.join(test, "videos", f"{vid}.mp4"), 1.0, model.image_size)
            pool = [s for s in v.pool if s != "background"]
            scores = temporal_scores(model, clip.frames, pool, source=cfg.scores)
            secs = np.rint(clip.times).astype(int)
            boxed = {int(t): i for i, t in enumerate(secs) if int(t) in v.boxes and v.boxes[int(t)][0] is not None}
            for w in smooths:
                labels, _ = label_frames(scores, InferenceConfig(tau=-np.inf, normalize=cfg.normalize, smooth=w,
                                                                 decode=cfg.decode))
                for t, i in boxed.items():
                    per_smooth[w]["truth"].append(v.boxes[t][0])
                    per_smooth[w]["pred"].append(pool[labels[i]])
            pools += [len(pool)] * len(boxed)
            labels, best = label_frames(scores, cfg)
            in_action = {t for a, b, _ in v.segments for t in range(a, b + 1)}
            for i, t in enumerate(secs):
                if int(t) in in_action:
                    bg["action_seconds"] += 1
                    bg["action_as_bg"] += int(labels[i] < 0)
                else:
                    bg["bg_seconds"] += 1
                    bg["bg_as_bg"] += int(labels[i] < 0)
            # heatmap boxes of every (frame, description) the variants need: predicted steps and true steps
            need: dict[str, list[int]] = {}
            for i, lab in enumerate(labels):
                if lab >= 0:
                    need.setdefault(pool[lab], []).append(i)
            for t, i in boxed.items():
                need.setdefault(v.boxes[t][0], []).append(i)
            located: dict[tuple[str, int], tuple] = {}
            for step, idx in need.items():
                idx = sorted(set(idx))
                for i, h in zip(idx, spatial_heatmaps(model, clip.frames[idx], step)):
                    located[(step, i)] = locate(h, clip.geometry, cfg.box_threshold)
            out = {k: {} for k in variants}
            for i, t in enumerate(secs):
                key = str(int(t))
                if key in out["model"]:
                    continue
                step = pool[labels[i]] if labels[i] >= 0 else "background"
                true_step = v.boxes[int(t)][0] if int(t) in boxed else None
                true_box = v.boxes[int(t)][1] if true_step else None
                point, box = located.get((step, i), (None, None))
                out["model"][key] = _pred_entry(step, box, point, best[i])
                # model spans, true boxes: the true box where the predicted step is the true one, else none
                out["model_spans_true_boxes"][key] = _pred_entry(step, true_box if step == true_step else None,
                                                                 point, best[i])
                if true_step:
                    tp, tb = located[(true_step, i)]
                    out["true_spans_model_boxes"][key] = _pred_entry(true_step, tb, tp)
                    centre = ((true_box[0] + true_box[2]) / 2, (true_box[1] + true_box[3]) / 2)
                    out["true_spans_true_boxes"][key] = _pred_entry(true_step, true_box, centre)
            for k in variants:
                variants[k][vid] = out[k]

    def score(preds: dict) -> dict:
        parsed = {vid: {int(t): SecondPrediction(e["step"], e["score"], e.get("point"), e.get("box"))
                        for t, e in secs.items()} for vid, secs in preds.items()}
        m, _ = protocols.groundingyoutube(truth, parsed, thresholds)
        return {k: round(100 * m[k], 2) for k in ("mAP@0.1", "mAP@0.3", "mAP@0.5", "mAP@0.1:0.5", "IoU+Point")}

    frames = {}
    for w, d in per_smooth.items():
        frames[f"smooth={w}"] = {"action_acc": round(100 * actions.frame_accuracy(d["truth"], d["pred"]), 2),
                                 "verb_acc": round(100 * actions.frame_accuracy(d["truth"], d["pred"], actions.verb), 2),
                                 "object_acc": round(100 * actions.frame_accuracy(d["truth"], d["pred"], actions.obj), 2)}
    return {"frames": frames, "action_chance": round(100 * actions.pool_chance(pools), 2),
            "annotated_seconds": len(pools),
            "map": {k: score(p) for k, p in variants.items()},
            "background": {"tau": cfg.tau, "normalize": cfg.normalize, "smooth": cfg.smooth,
                           "bg_predicted_bg": round(100 * bg["bg_as_bg"] / max(1, bg["bg_seconds"]), 2),
                           "action_predicted_bg": round(100 * bg["action_as_bg"] / max(1, bg["action_seconds"]), 2),
                           **bg}}


def calibrate(model, split: str, cfg, videos: int) -> dict:
    from grounding.inference import calibrate_tau, normalize_scores, temporal_scores
    from grounding.predict import decode
    from grounding.readers.groundingyoutube import read_groundingyoutube

    truth = read_groundingyoutube(split)
    scores, labels = [], []
    for vid, v in sorted(truth.items())[:videos]:
        pool = [s for s in v.pool if s != "background"]
        clip = decode(vid, os.path.join(split, "videos", f"{vid}.mp4"), 1.0, model.image_size)
        secs = np.rint(clip.times).astype(int)
        in_action = {t for a, b, _ in v.segments for t in range(a, b + 1)}
        keep, lab = [], []
        for i, t in enumerate(secs):
            if int(t) in v.boxes and v.boxes[int(t)][0] in pool:
                keep.append(i)
                lab.append(pool.index(v.boxes[int(t)][0]))
            elif int(t) not in in_action:
                keep.append(i)
                lab.append(-1)
        # standardised over the whole video as inference does, then the labelled frames kept
        scores.append(normalize_scores(temporal_scores(model, clip.frames, pool, source=cfg.scores),
                                       cfg.normalize)[keep])
        labels.append(np.asarray(lab))
    from grounding.inference import InferenceConfig

    tau, acc = calibrate_tau(scores, labels, InferenceConfig(normalize="none", smooth=1))
    return {"split": split, "videos": len(scores), "tau": round(tau, 4), "train_frame_acc_with_bg": round(100 * acc, 2)}


def calibrate_boxes(model, split: str, videos: int) -> dict:
    """inference.box_threshold chosen on the split's hidden boxes: heatmaps of each annotated second's true step
    (grounding.inference.calibrate_box_threshold, mean box IoU maximised)."""
    from grounding.inference import calibrate_box_threshold, spatial_heatmaps
    from grounding.predict import decode
    from grounding.readers.groundingyoutube import read_groundingyoutube

    truth = read_groundingyoutube(split)
    heats, geoms, boxes = [], [], []
    for vid, v in sorted(truth.items())[:videos]:
        clip = decode(vid, os.path.join(split, "videos", f"{vid}.mp4"), 1.0, model.image_size)
        by_step: dict = {}
        for i, t in enumerate(np.rint(clip.times).astype(int)):
            if int(t) in v.boxes:
                step, box = v.boxes[int(t)]
                by_step.setdefault(step, []).append((i, box))
        for step, items in by_step.items():
            for (_, box), h in zip(items, spatial_heatmaps(model, clip.frames[[i for i, _ in items]], step)):
                heats.append(h)
                geoms.append(clip.geometry)
                boxes.append(box)
    thr, iou = calibrate_box_threshold(heats, geoms, boxes)
    return {"split": split, "videos": min(videos, len(truth)), "frames": len(heats), "box_threshold": thr,
            "train_mean_box_iou": round(100 * iou, 2)}


def batch_composition(shards: str, config: str, overrides: list[str], batches: int = 50) -> dict:
    """Share of in-batch negatives from the clip's own video, in the batches the training loader yields."""
    from common import config as C
    from pretrain import data
    from pretrain.config import PretrainConfig

    cfg = C.load(PretrainConfig, config, [f"data.shards={shards}", *overrides])
    d = cfg.data
    loader = data.RankLoader(data.read_manifest(shards), micro_batch=d.micro_batch, batches_per_epoch=10**9,
                             seed=cfg.seed, rank=0, shuffle_buffer=d.shuffle_buffer, clips_per_video=d.clips_per_video)
    same, videos = [], []
    for _ in range(batches):
        vids = [data.video_of(k) for k in loader.next()["keys"]]
        n = len(vids)
        same += [(sum(v == u for u in vids) - 1) / (n - 1) for v in vids]
        videos.append(len(set(vids)))
    return {"micro_batch": d.micro_batch, "shuffle_buffer": d.shuffle_buffer, "clips_per_video": d.clips_per_video,
            "batches": batches, "same_video_negative_share": round(100 * float(np.mean(same)), 2),
            "videos_per_batch": round(float(np.mean(videos)), 2)}


def main() -> int:
    from common import config as C
    from grounding.inference import InferenceConfig
    from pretrain.model import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test", default="runs/demo/corpus/test")
    p.add_argument("--shards", help="shard set for the batch-composition figures")
    p.add_argument("--config", default=os.path.join(ROOT, "configs/pretrain/demo32.yaml"))
    p.add_argument("--data", nargs="*", default=[], help="data.key=value overrides for the batch figures")
    p.add_argument("--smooth", default="1,3,5")
    p.add_argument("--calibrate", help="train split folder whose hidden truth picks tau")
    p.add_argument("--calibrate-videos", type=int, default=100)
    p.add_argument("--calibrate-box", help="train split folder whose hidden boxes pick inference.box_threshold")
    p.add_argument("overrides", nargs="*", help="InferenceConfig key=value (tau, normalize, smooth, ...)")
    args = p.parse_args()
    cfg = C.load(InferenceConfig, None, [o.removeprefix("inference.") for o in args.overrides])
    model = load_model(args.checkpoint)
    out = {"benchmark": "temporal_decomposition", "checkpoint": args.checkpoint, "test": args.test}
    if args.calibrate:
        if cfg.smooth != 1:
            raise SystemExit("error: --calibrate picks tau for inference.smooth=1 only")
        out["calibration"] = calibrate(model, args.calibrate, cfg, args.calibrate_videos)
        cfg.tau = out["calibration"]["tau"]
    if args.calibrate_box:
        out["box_calibration"] = calibrate_boxes(model, args.calibrate_box, args.calibrate_videos)
        cfg.box_threshold = out["box_calibration"]["box_threshold"]
    out.update(run(model, args.test, cfg, [int(w) for w in args.smooth.split(",")]))
    if args.shards:
        out["batches"] = batch_composition(args.shards, args.config, args.data)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
