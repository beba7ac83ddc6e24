"""Does FSM's when-score choose the referred object's tube? For a trained `fsm.when` run, how often the linked tube
the head's boxes follow most (its pointer's picks, the tube `fsm.when` takes its span on) is the truth's tube, how
often the tube whose when-score is highest over its busiest quarter of frames (tubes.activity.tube_peak) is, and
their standardised sum at a few weights. Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_when_tube --run RUN

RUN: a finished STVG finetune run of the fsm head with fsm.when=true (config.yaml, head.json, head.pt; its feature
cache). The truth's tube: the linked tube with the most mean IoU with the target over the video. A tube's peak:
tubes.activity.tube_peak of its when-score (the mean of its top quarter of frames). A diagnostic (it reads the
test truth), never a method: docs/results/stvg.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from common import cli

WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def main(argv=None) -> int:
    from benchmarks.diagnostics.stvg_when_sources import best_tube
    from common.errors import UserError
    from finetune.predict import _by_video
    from finetune.repredict import load_run, run_config
    from finetune.stvg_batches import text_batch, video_batch
    from finetune.stvg_features import tokenizer_of
    from tubes.activity import standardise, tube_peak

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    a = p.parse_args(argv)
    cfg = run_config(os.path.abspath(a.run), [])
    if cfg.head != "fsm" or not cfg.fsm.when or cfg.dataset.kind != "synthetic_stvg":
        raise UserError(f"--run [{a.run}]: not an fsm run with fsm.when=true on the synthetic STVG corpus")
    r = load_run(os.path.abspath(a.run), cfg)
    head = r.head.eval()
    prep, tok = r.spec.text_prep(r.spec.section(cfg)), tokenizer_of(cfg.checkpoint)
    vs = json.load(open(os.path.join(cfg.dataset.root, "test", "truth", "vidstg.json")))
    truth = {v["video_id"]: v for v in vs["videos"]}
    hits = {"pointer": 0, "when_peak": 0, **{f"sum_{w:g}": 0 for w in WEIGHTS}}
    n = 0
    with torch.no_grad():
        for vid, qs in _by_video(r.queries, r.videos).items():
            vt = r.videos[vid]
            sentences = [q.sentence for q in qs]
            v = video_batch([vt] * len(qs))
            _, prob, *_, choice, when = head._forward(v, text_batch(r.store.text(sentences), sentences, tok, prep))
            sel = torch.sigmoid(prob).mean(-1).argmax(1)                    # Eqs. 12-13's query
            for i, q in enumerate(qs):
                right = best_tube(vt, vs["trajectories"][vid][str(truth[q.key]["target_id"])])
                ids = v.geometry.tube_ids[i]
                picked = ids.gather(1, choice[i, sel[i]].argmax(-1)[:, None])[:, 0]
                m = len(vt.tubes)
                votes = np.array([float((picked == k).float().mean()) for k in range(m)])
                w = when[i]
                peaks = np.array([tube_peak(w.masked_fill(ids != k, float("-inf")).amax(1).clamp_min(float(w.min()))
                                            .numpy()) for k in range(m)])
                n += 1
                hits["pointer"] += int(np.argmax(votes) == right)
                hits["when_peak"] += int(np.argmax(peaks) == right)
                for wt in WEIGHTS:
                    hits[f"sum_{wt:g}"] += int(np.argmax(standardise(votes) + wt * standardise(peaks)) == right)
    print(json.dumps({"benchmark": "stvg_when_tube", "run": a.run, "queries": n,
                      "right_tube_percent": {k: round(100 * v / max(n, 1), 2) for k, v in hits.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
