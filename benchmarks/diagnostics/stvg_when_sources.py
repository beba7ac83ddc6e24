"""Where an export's *when* can come from on the synthetic STVG corpus: the frame features (does a frame's global
feature tell which verb is being done in it?) and the referred object's own tube (how far it looks from its rest
appearance, tubes/activity.py). Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_when_sources --corpus DIR --export E [--cache C] [--tubes 10] [--split test]

- `verb_auc`: per verb, the ROC area on the test split of a linear probe trained on the train split's frames to
  tell frames where that verb is done (to any object: the truth's spans and verbs) from the others; 0.5 = the frame
  features do not carry it.
- `truth_tube`: per query of `--split` (test unless said), the linked tube that overlaps the target most over the video (found with the
  truth: the spatial half given), its activity's ROC area for the query's frames (pooled and per query), and the
  m_tIoU of the best segment of its (smoothed) activity: what the activity span rule reaches when the tube is right
  (`activity_span_m_tIoU`, key "1": the rule, the best segment above the tube's mean); `decodes_m_tIoU`: the same
  tube's span by other parameter-free cuts of its activity (`otsu` / `q75`: the best segment above Otsu's threshold
  / the 0.75 quantile; `eiou_minmax`: the run of largest expected tIoU with the min-max scaled activity as each
  frame's probability), so a cut is judged on the split it would be chosen on (`--split train`) before the test
  split.
- `tube_choice`: how often the zero-shot tube choice over the whole video (mean word-region cosine,
  tubes/zero_shot.py) is that tube, alone and with each tube's peak activity added at weights 0.5-4
  (tubes/activity.py choose_tube: span.tube_weight).
A diagnostic of the features (docs/results/stvg.md), never a method: it reads the truth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from common import cli


def _features(corpus: str, export: str, cache: str, tubes: int):
    from finetune.config import load, resolve
    from finetune.families import build_adapter
    from finetune.train import feature_store, prepare

    cfg = resolve(load(None, ["head=fsm", "dataset.kind=synthetic_stvg", f"checkpoint={export}",
                              f"dataset.root={corpus}", f"features.cache={cache}", f"tubes.tubes={tubes}"]))
    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg, prepare(cfg, adapter)["model_key"])
    return {split: store.load_all(adapter.videos(split)) for split in ("train", "test")}


def _truth(corpus: str, split: str):
    vs = json.load(open(os.path.join(corpus, split, "truth", "vidstg.json")))
    parses = json.load(open(os.path.join(corpus, split, "truth", "parses.json")))
    return vs, parses


def truth_boxes(traj: dict, frames) -> np.ndarray:
    """(F, 4) x1 y1 x2 y2 of a truth trajectory ({frame: {"bbox": [x, y, w, h]}}) at `frames`, NaN where absent."""
    return np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] if (b := traj.get(str(f), {}).get("bbox")) else
                     [np.nan] * 4 for f in frames])


def best_tube(vt, traj: dict) -> int:
    """The linked tube of video features `vt` that follows a truth trajectory: the most mean IoU with it over the
    frames both hold (-1 when the video has no tube)."""
    from grounding.metrics.boxes import box_iou_aligned

    fr = vt.proposals.frames
    truth = truth_boxes(traj, fr)
    best, which = -1.0, -1
    for i, t in enumerate(vt.tubes):
        pos = np.searchsorted(fr, t.frames)
        ok = ~np.isnan(t.boxes[:, 0]) & ~np.isnan(truth[pos, 0])
        m = float(box_iou_aligned(t.boxes[ok], truth[pos][ok]).mean()) if ok.any() else 0.0
        if m > best:
            best, which = m, i
    return which


def queries_on_truth_tubes(feats: dict, corpus: str, split: str):
    """(query, its video's features, their frames, the truth's tube index) for each query of `split` whose video
    has a linked tube (best_tube)."""
    vs, _ = _truth(corpus, split)
    for q in vs["videos"]:
        vt = feats[q["original_video_id"]]
        which = best_tube(vt, vs["trajectories"][q["original_video_id"]][str(q["target_id"])])
        if which >= 0:
            yield q, vt, vt.proposals.frames, which


def arguments(description: str) -> argparse.ArgumentParser:
    """The STVG diagnostics' common arguments: --corpus, --export, --cache, --tubes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--corpus", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--cache", default="", help="region feature cache (default: the export's finetune cache)")
    p.add_argument("--tubes", type=int, default=10)
    return p


def check_inputs(a, split: str = "test") -> None:
    """One error line when the corpus has no `split` truth or the export no model config."""
    from common.errors import UserError

    for path, what in ((os.path.join(a.corpus, split, "truth", "vidstg.json"), "--corpus"),
                       (os.path.join(a.export, "model_config.json"), "--export")):
        if not os.path.isfile(path):
            raise UserError(f"{what} [{os.path.dirname(path) if what == '--export' else a.corpus}]: no {path}")


def verb_rows(feats: dict, corpus: str, split: str, verbs: list[str]):
    vs, parses = _truth(corpus, split)
    x, y = [], []
    for vid, vt in feats.items():
        fr = vt.proposals.frames
        lab = np.zeros((len(fr), len(verbs)), bool)
        for q in vs["videos"]:
            if q["original_video_id"] == vid:
                inside = (fr >= q["tube_start_frame"]) & (fr < q["tube_end_frame"])
                lab[inside, verbs.index(parses[q["video_id"]]["verb"])] = True
        x.append(vt.frames)
        y.append(lab)
    return np.concatenate(x), np.concatenate(y)


def verb_auc(feats: dict, corpus: str) -> dict:
    from benchmarks.diagnostics.stvg_when_probe import fit_probe
    from grounding.metrics.roc import auc

    verbs = sorted({p["verb"] for split in ("train", "test") for p in _truth(corpus, split)[1].values()})
    xtr, ytr = verb_rows(feats["train"], corpus, "train", verbs)
    xte, yte = verb_rows(feats["test"], corpus, "test", verbs)
    xtr, xte = torch.from_numpy(xtr).float(), torch.from_numpy(xte).float()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    probe = fit_probe((xtr - mu) / sd, torch.from_numpy(ytr).float(), hidden=0)
    with torch.no_grad():
        s = probe((xte - mu) / sd).numpy()
    return {v: round(auc(s[:, i], yte[:, i]), 4) for i, v in enumerate(verbs)
            if yte[:, i].any() and not yte[:, i].all()}


def decode_activity(act: np.ndarray, how: str) -> tuple[int, int]:
    """[a, b] feature-frame positions of a tube's span cut from its activity (`decodes` in the module docstring)."""
    from tubes.activity import best_segment, expected_iou_segment, otsu_threshold

    if how == "otsu":
        return best_segment(act, otsu_threshold(act))
    if how == "q75":
        return best_segment(act, float(np.quantile(act, 0.75)))
    if how == "eiou_minmax":
        lo, hi = float(np.min(act)), float(np.max(act))
        return expected_iou_segment((act - lo) / (hi - lo) if hi > lo else np.zeros_like(act))
    raise ValueError(how)


DECODES = ("otsu", "q75", "eiou_minmax")


def truth_tube(feats: dict, corpus: str, model, smooth=(1, 3, 5, 9), weights=(0.0, 0.5, 1.0, 2.0, 4.0),
               split: str = "test") -> dict:
    from grounding.metrics.roc import auc
    from grounding.metrics.stvg import temporal_iou
    from tubes.activity import best_segment, choose_tube, moving_mean, native_span, tube_peak
    from tubes.zero_shot import tube_scores

    pooled_s, pooled_y, per_query, tiou = [], [], [], {k: [] for k in smooth}
    decoded = {d: [] for d in DECODES}
    right = {w: 0 for w in weights}
    for q, vt, fr, which in queries_on_truth_tubes(feats, corpus, split):
        words = tube_scores(model, vt, q["caption"], (0, int(fr[-1]) + 1))
        peaks = np.array([tube_peak(a) for a in vt.tube_activities])
        for w in weights:
            right[w] += choose_tube(words, peaks, w) == which
        act = vt.tube_activities[which]
        inside = (fr >= q["tube_start_frame"]) & (fr < q["tube_end_frame"])
        pooled_s.append(act)
        pooled_y.append(inside)
        if inside.any() and not inside.all():
            per_query.append(auc(act, inside))
        truth = (q["tube_start_frame"], q["tube_end_frame"])
        for k in smooth:
            tiou[k].append(temporal_iou(truth, native_span(fr, *best_segment(moving_mean(act, k)))))
        for d in DECODES:
            decoded[d].append(temporal_iou(truth, native_span(fr, *decode_activity(act, d))))
    return {"queries": len(pooled_s), "auc_pooled": round(auc(np.concatenate(pooled_s), np.concatenate(pooled_y)), 4),
            "auc_per_query_mean": round(float(np.mean(per_query)), 4),
            "activity_span_m_tIoU": {str(k): round(100 * float(np.mean(v)), 2) for k, v in tiou.items()},
            "decodes_m_tIoU": {d: round(100 * float(np.mean(v)), 2) for d, v in decoded.items()},
            "tube_choice": {f"tube_weight_{w:g}": round(100 * right[w] / max(len(pooled_s), 1), 2) for w in weights}}


def main(argv=None) -> int:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--split", default="test", choices=("test", "train"), help="the split truth_tube reads")
    a = p.parse_args(argv)
    check_inputs(a, a.split)
    feats = _features(os.path.abspath(a.corpus), os.path.abspath(a.export), a.cache and os.path.abspath(a.cache),
                      a.tubes)
    from pretrain.export_ref import Export

    model = Export.of(os.path.abspath(a.export)).load_model().eval()
    out = {"benchmark": "stvg_when_sources", "corpus": a.corpus, "export": a.export,
           "verb_auc": verb_auc(feats, a.corpus),
           "truth_tube": truth_tube(feats[a.split], a.corpus, model, split=a.split)}
    out["verb_auc_mean"] = round(float(np.mean(list(out["verb_auc"].values()))), 4)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
