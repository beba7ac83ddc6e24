"""Benchmark protocols: annotations (readers) + predictions -> metric fractions and counts.

Each function returns (metrics, counts): metrics are fractions in 0..1, counts are integers worth reporting
(queries evaluated, predictions missing, ground truth left out and why). A query or video without a
prediction is scored as an empty prediction.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from grounding import metrics as M
from grounding.readers import (
    BACKGROUND,
    CharadesQuery,
    DidemoQuery,
    GytVideo,
    InputError,
    PointingFrame,
    SecondPrediction,
    StvgQuery,
    labels_per_second,
)
from grounding.readers.predictions import check_keys
from grounding.tube import Tube

Result = tuple[dict[str, float], dict[str, int]]


def didemo(queries: Sequence[DidemoQuery], preds: dict[str, np.ndarray], url: str = "predictions") -> Result:
    missing = check_keys(preds, (q.key for q in queries), url, "annotation_ids")
    empty = np.zeros((0, 2), dtype=np.int64)
    scores = M.didemo_metrics([preds.get(q.key, empty) for q in queries], [q.times for q in queries])
    return scores, {"queries": len(queries), "missing_predictions": len(missing)}


def charades_sta(queries: Sequence[CharadesQuery], dropped: Sequence[tuple[str, str]], preds: dict[str, np.ndarray],
                 nms_thresh: float | None, iou_thresholds: Sequence[float], recalls: Sequence[int],
                 url: str = "predictions") -> Result:
    check_keys(preds, [q.key for q in queries] + [k for k, _ in dropped], url, "line numbers")
    for q in queries:  # 2D-TAN clips a moment's end to the video; one that starts after its end cannot be meant
        late = np.nonzero(preds.get(q.key, np.zeros((0, 2)))[:, 0] > q.duration)[0]
        if len(late):
            raise InputError(f"{url} [{q.key!r}][{late[0]}]: starts at {preds[q.key][late[0], 0]:g} s, after the "
                             f"end of video {q.video} ({q.duration:g} s)")
    missing = [q.key for q in queries if q.key not in preds]
    empty = np.zeros((0, 2))
    scores = M.charades_metrics(
        [preds.get(q.key, empty) for q in queries],
        np.array([[q.start, q.end] for q in queries]),
        durations=np.array([q.duration for q in queries]),
        iou_thresholds=iou_thresholds, recalls=recalls, nms_thresh=nms_thresh)
    return scores, {"queries": len(queries), "missing_predictions": len(missing), "dropped_lines": len(dropped)}


def stvg(queries: Sequence[StvgQuery], preds: dict[str, Tube], fps: float, max_frames: int,
         thresholds: Sequence[float], url: str = "predictions") -> Result:
    missing = check_keys(preds, (q.key for q in queries), url, "query ids")
    with_boxes = all(q.boxes is not None for q in queries)
    rows, qtypes = [], []
    for q in queries:
        p = preds.get(q.key, Tube.empty((0, 0)))
        if q.frames is not None:
            outside = [f for f in [p.sted[1] - 1, *p] if f >= q.frames]
            if outside:
                raise InputError(f"{url} [{q.key!r}]: frame {outside[0]} is outside video {q.video} "
                                 f"({q.frames} frames)")
        frames = M.sample_frame_ids(q.span[0], q.span[1], q.video_fps, fps, max_frames)
        try:
            rows.append(M.stvg_query_metrics(frames, q.tube, p.sted, q.boxes if with_boxes else None, p))
        except KeyError as e:
            raise InputError(f"{url} [{q.key!r}]: {e.args[0]}") from None
        except ValueError as e:
            raise InputError(f"annotation of query {q.key!r} (video {q.video}): {e}") from None
        qtypes.append(q.qtype)
    out = M.summarize_stvg(rows, thresholds)
    for qt in sorted({t for t in qtypes if t}):
        sub = M.summarize_stvg([r for r, t in zip(rows, qtypes) if t == qt], thresholds)
        out.update({f"{qt}_{k}": v for k, v in sub.items()})
    return out, {"queries": len(queries), "missing_predictions": len(missing), "with_boxes": int(with_boxes)}


def pointing_frames(frames: Sequence[PointingFrame], preds: dict[str, dict[int, SecondPrediction]],
                    url: str = "predictions", videos: Sequence[str] | None = None) -> Result:
    """videos: every annotated video (predictions may name them); default: the videos of the frames."""
    scored = sorted({f.video for f in frames})
    check_keys(preds, videos if videos is not None else scored, url, "videos")
    missing = [v for v in scored if v not in preds]
    pts = [preds.get(f.video, {}).get(f.second) for f in frames]
    has = np.array([p is not None and p.point is not None for p in pts])
    xy = np.array([p.point if h else (np.nan, np.nan) for p, h in zip(pts, has)], dtype=np.float64)
    acc = M.pointing_game(xy, np.array([f.box for f in frames]), has)
    return {"pointing_game": acc}, {"frames": len(frames), "frames_without_point": int((~has).sum()),
                                    "missing_predictions": len(missing)}


class _Vocab(dict):
    """Action name -> positive id; background is 0."""

    def id(self, name: str | None) -> int:
        if name is None or name == BACKGROUND:
            return 0
        return self.setdefault(name, len(self) + 1)


def _per_second_arrays(v: GytVideo, pv: dict[int, SecondPrediction], vocab: _Vocab):
    """Aligned (truth, prediction, pointing hit) over every second that is annotated or predicted. Truth: the
    boxed step, IGNORE inside a segment without a box, background elsewhere."""
    in_segment = {t for a, b, _ in v.segments for t in range(a, b + 1)}
    seconds = sorted(in_segment | set(v.boxes) | set(pv))
    g = np.zeros(len(seconds), dtype=np.int64)
    p = np.zeros(len(seconds), dtype=np.int64)
    h = np.zeros(len(seconds), dtype=bool)
    for i, t in enumerate(seconds):
        if t in v.boxes and v.boxes[t][0] is not None:
            g[i] = vocab.id(v.boxes[t][0])
        elif t in in_segment:
            g[i] = M.spatiotemporal.IGNORE
        pt = pv.get(t)
        if pt is not None:
            p[i] = vocab.id(pt.step)
            h[i] = t in v.boxes and pt.point is not None and bool(M.point_in_box(pt.point, v.boxes[t][1])[0])
    return g, p, h


def _truth_tubes(v: GytVideo) -> list[tuple[str, Tube]]:
    """One tube per annotated segment; seconds whose box belongs to another step (overlaps) or has no box are
    NaN (left out of the 3-D IoU). Segments with no box at all are not returned."""
    out = []
    for a, b, step in v.segments:
        secs = np.arange(a, b + 1)
        boxes = np.full((len(secs), 4), np.nan)
        for i, t in enumerate(secs.tolist()):
            if t in v.boxes and v.boxes[t][0] == step:
                boxes[i] = v.boxes[t][1]
        if len(secs) and not np.isnan(boxes).all():
            out.append((step, Tube(secs, boxes)))
    return out


def _predicted_tubes(v: GytVideo, pv: dict[int, SecondPrediction], vocab: _Vocab, url: str):
    """Runs of consecutive seconds with one predicted action; score = mean per-second score; a second without a
    box uses the whole frame. Yields (class id, score, tube, seconds without box)."""
    if not pv:
        return
    first = min(pv)
    lab = np.zeros(max(pv) - first + 1, dtype=np.int64)
    for t, sp in pv.items():
        lab[t - first] = vocab.id(sp.step)
    for cls, s, e in M.label_runs(lab):
        secs = np.arange(first + s, first + e)
        boxes = np.empty((len(secs), 4))
        unboxed = 0
        for i, t in enumerate(secs.tolist()):
            box = pv[t].box
            if box is None:
                if v.size is None:
                    raise InputError(f"{url} [{v.vid!r}][{t}]: no 'box' for video mAP and no frame size "
                                     f"(id2wh.json) to use the whole frame instead")
                box = [0.0, 0.0, float(v.size[0]), float(v.size[1])]
                unboxed += 1
            boxes[i] = box
        yield cls, float(np.mean([pv[t].score for t in secs.tolist()])), Tube(secs, boxes), unboxed


def groundingyoutube(videos: dict[str, GytVideo], preds: dict[str, dict[int, SecondPrediction]],
                     thresholds: Sequence[float], url: str = "predictions") -> Result:
    """IoU+Point, video mAP at each threshold and their mean, and the pointing game on the boxed seconds of every
    segment (docs/evaluation.md)."""
    missing = check_keys(preds, videos, url, "videos")
    vocab = _Vocab()
    arrays, dets, gts, frames = [], [], [], []
    counts = {"videos": len(videos), "missing_predictions": len(missing), "gt_tubes": 0, "pred_tubes": 0,
              "pred_seconds_without_box": 0}
    for vid, v in videos.items():
        pv = preds.get(vid, {})
        arrays.append(_per_second_arrays(v, pv, vocab))
        gts += [(vocab.id(step), vid, tube) for step, tube in _truth_tubes(v)]
        for cls, score, tube, unboxed in _predicted_tubes(v, pv, vocab, url):
            dets.append((cls, vid, score, tube))
            counts["pred_seconds_without_box"] += unboxed
        for i, (a, b, _) in enumerate(v.segments):  # as the official loader: every boxed second of each segment
            frames += [PointingFrame(vid, t, tuple(v.boxes[t][1]), i) for t in range(a, b + 1) if t in v.boxes]
    counts["gt_tubes"], counts["pred_tubes"] = len(gts), len(dets)
    counts["gt_tubes_without_boxes"] = sum(len(v.segments) for v in videos.values()) - len(gts)

    g, p, h = zip(*arrays)
    out = {"IoU+Point": M.iou_plus_point(g, p, h)}
    maps = M.video_map(dets, gts, thresholds)
    out.update({f"mAP@{t}": maps[t] for t in thresholds})
    out[f"mAP@{thresholds[0]}:{thresholds[-1]}"] = float(np.mean(list(maps.values())))
    pg, pg_counts = pointing_frames(frames, preds, url, list(videos))
    out.update(pg)
    counts["pointing_frames"] = pg_counts["frames"]
    out.update(_action_accuracy(videos, preds))
    return out, counts


def _action_accuracy(videos: dict[str, GytVideo], preds: dict[str, dict[int, SecondPrediction]]) -> dict:
    """Per-frame action accuracy on the boxed seconds (grounding/metrics/actions.py), with its pool chance."""
    from grounding.metrics import actions

    truth, pred, pools = [], [], []
    for vid, v in videos.items():
        pool = [s for s in v.pool if s != BACKGROUND] or sorted({s for _, _, s in v.segments})
        for t, (step, _) in sorted(v.boxes.items()):
            if step is None:
                continue
            p = preds.get(vid, {}).get(t)
            truth.append(step)
            pred.append(p.step if p is not None else None)
            pools.append(len(pool))
    if not truth:
        return {}
    return {"action_acc": actions.frame_accuracy(truth, pred),
            "action_acc_verb": actions.frame_accuracy(truth, pred, actions.verb),
            "action_acc_object": actions.frame_accuracy(truth, pred, actions.obj),
            "action_chance": actions.pool_chance(pools)}


def miningyoutube(intervals: dict[str, list[tuple[float, float, str]]],
                  preds: dict[str, dict[int, SecondPrediction]], url: str = "predictions") -> Result:
    missing = check_keys(preds, intervals, url, "videos")
    vocab = _Vocab()
    gts, ps = [], []
    for vid, ivs in intervals.items():
        pv = preds.get(vid, {})
        n = int(np.ceil(max((e for _, e, _ in ivs), default=0.0)))
        n = max(n, max(pv, default=-1) + 1, 1)
        g = labels_per_second(ivs, n, vocab.id)
        p = np.zeros(n, dtype=np.int64)
        for t, sp in pv.items():
            p[t] = vocab.id(sp.step)
        gts.append(g)
        ps.append(p)
    return M.frame_iou_iod(gts, ps), {"videos": len(intervals), "missing_predictions": len(missing)}
