"""Can a when-score be learnt from weak labels? The weak when-score (finetune/heads/when_score.py: WhenScore trained
by mil_loss, what winner.when adds to WINNER) trained alone on the train split's (video, sentence) pairs of the
synthetic STVG corpus (no span, no box), then judged on the test split along the truth's own tube (the spatial half
given), beside the tube's activity (the span rule WINNER uses now). Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_weak_when --corpus DIR --export E [--cache C] [--steps 1500]
        [--videos 8] [--queries 1] [--no-said] [--lr 3e-3] [--topk 0.125] [--words target] [--prior 0] [--seed 0]

- `when_span_m_tIoU`: the run of largest expected tIoU under the score's sigmoid along the truth's tube (span.rule=
  when's decoding; `when_segment_m_tIoU`: the best segment of the standardised score, which needs no calibration),
  against `activity_span_m_tIoU` (the activity rule on the same tube);
- `auc_per_query_mean`: the score's ROC area for the query's frames along that tube, per query (the activity's
  beside it);
- `peak_tube_right`: how often the tube where the score peaks is the truth's (which object, from the words);
- `train`: the loss and the positive-minus-negative margin of the multiple-instance score over the last 50 steps.
A diagnostic (it reads the test truth to score), never a method; the training reads no truth.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from common import cli


def _train_pairs(corpus: str) -> dict[str, list[str]]:
    """{video: its sentences} of the train split's visible queries (the weak pairs)."""
    out: dict[str, list[str]] = {}
    for q in json.load(open(os.path.join(corpus, "train", "queries.json"))):
        out.setdefault(q["video"], []).append(q["sentence"])
    return out


def train(feats: dict, pairs: dict, a) -> tuple[torch.nn.Module, object, dict]:
    from finetune.heads.when_score import SaidSentences, VerbIds, WhenScore
    from finetune.heads.winner import WinnerConfig
    from finetune.stvg_batches import video_batch

    section = WinnerConfig(when=True, when_words=a.words, when_topk=a.topk)
    prep = VerbIds(section)
    vids = sorted(v for v in pairs if v in feats)
    dim = feats[vids[0]].regions.shape[-1]
    torch.manual_seed(a.seed)
    score = WhenScore(dim, section.when_dim, section.when_vocab, a.words == "target", a.prior)
    opt = torch.optim.Adam(score.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    log = []
    for _ in range(a.steps):
        rows, sentences, groups, every, owners = [], [], [], [], []
        for g, v in enumerate(rng.choice(len(vids), min(a.videos, len(vids)), replace=False)):
            said = pairs[vids[v]]
            for i in rng.choice(len(said), min(a.queries, len(said)), replace=False):
                rows.append(feats[vids[v]]), sentences.append(said[i]), groups.append(g)
            every += said
            owners += [g] * len(said)
        vb = video_batch(rows, max_frames=a.max_frames, tubes=a.tubes)
        parsed = prep(sentences, None, None)
        geo = vb.geometry
        ok = (geo.tube_ids >= 0) & vb.region_mask & vb.mask[..., None]
        # --said: every sentence of each batch video is a text with its exact labels (winner.when's TrainBatch.said)
        said = SaidSentences(prep(every, None, None), torch.tensor(owners)) if a.said else None
        loss, parts = score.mil_loss(vb.regions, geo.tube_ids, geo.tube_mask.shape[1], ok, vb.mask,
                                     torch.tensor(groups), parsed, a.topk, geo.activity, said)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append({"loss": float(loss.detach()), **{k: float(x) for k, x in parts.items()}})
    tail = log[-50:]
    return score, prep, {k: round(float(np.mean([x[k] for x in tail if k in x])), 4) for k in tail[-1]}


@torch.no_grad()
def judge(score, prep, feats: dict, corpus: str) -> dict:
    from benchmarks.diagnostics.stvg_when_sources import queries_on_truth_tubes
    from finetune.heads.when_score import along_tube, tube_segment
    from finetune.stvg_batches import tube_ids, video_batch
    from grounding.metrics.roc import auc
    from grounding.metrics.stvg import temporal_iou
    from tubes.activity import activity_span, native_span

    when_t, seg_t, act_t, when_auc, act_auc, peak = [], [], [], [], [], []
    for q, vt, fr, which in queries_on_truth_tubes(feats, corpus, "test"):
        vb = video_batch([vt])
        geo = vb.geometry
        w = score(vb.regions, geo.tube_ids, geo.tube_mask.shape[1], prep([q["caption"]], None, None),
                  activity=geo.activity)[0]
        ids = torch.from_numpy(tube_ids(vt))
        truth = (q["tube_start_frame"], q["tube_end_frame"])
        when_t.append(temporal_iou(truth, native_span(fr, *tube_segment(w, ids, which, "iou"))))
        seg_t.append(temporal_iou(truth, native_span(fr, *tube_segment(w, ids, which, "segment"))))
        act_t.append(temporal_iou(truth, activity_span(vt.tube_activities[which], fr)))
        along = along_tube(w, ids, which).numpy()
        inside = (fr >= truth[0]) & (fr < truth[1])
        if inside.any() and not inside.all():
            when_auc.append(auc(along, inside))
            act_auc.append(auc(vt.tube_activities[which], inside))
        on = ids >= 0
        peak.append(int(ids[on][int(w[on].argmax())]) == which)
    pct = lambda x: round(100 * float(np.mean(x)), 2)   # noqa: E731
    return {"queries": len(when_t), "when_span_m_tIoU": pct(when_t), "when_segment_m_tIoU": pct(seg_t),
            "activity_span_m_tIoU": pct(act_t),
            "auc_per_query_mean": round(float(np.mean(when_auc)), 4),
            "activity_auc_per_query_mean": round(float(np.mean(act_auc)), 4), "peak_tube_right": pct(peak)}


def main(argv=None) -> int:
    from benchmarks.diagnostics.stvg_when_sources import _features, arguments, check_inputs

    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--videos", type=int, default=8, help="videos per step")
    p.add_argument("--queries", type=int, default=1, help="rows (sentences) per video per step")
    p.add_argument("--no-said", dest="said", action="store_false",
                   help="the texts are the rows' sentences only, not every sentence of each batch video")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--topk", type=float, default=0.125)
    p.add_argument("--words", default="target", choices=("verb", "target"))
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", type=float, default=0.0, help="weight of the region activity added to the logits")
    a = p.parse_args(argv)
    check_inputs(a, "train")
    check_inputs(a, "test")
    if a.steps < 1 or a.videos < 2 or a.queries < 1 or not 0 < a.topk <= 1 or a.lr <= 0:
        print("error: --steps >= 1, --videos >= 2, --queries >= 1, 0 < --topk <= 1, --lr > 0", file=sys.stderr)
        return 2
    t0 = time.time()
    feats = _features(os.path.abspath(a.corpus), os.path.abspath(a.export), a.cache and os.path.abspath(a.cache),
                      a.tubes)
    score, prep, log = train(feats["train"], _train_pairs(a.corpus), a)
    out = {"benchmark": "stvg_weak_when", "corpus": a.corpus, "export": a.export, "steps": a.steps,
           "videos": a.videos, "queries": a.queries, "said": a.said, "lr": a.lr, "topk": a.topk, "words": a.words, "seed": a.seed, "prior": a.prior,
           "train": log, "test": judge(score, prep, feats["test"], a.corpus), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
