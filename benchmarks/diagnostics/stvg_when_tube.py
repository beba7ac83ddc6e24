"""Does FSM's when-score choose the referred object's tube? For a trained `fsm.when` run, how often the linked tube
the head's boxes follow most (its pointer's picks, the tube `fsm.when` takes its span on) is the truth's tube, how
often the tube where the when-score peaks is, and their standardised sum at a few weights. Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_when_tube --run RUN

RUN: a finished STVG finetune run of the fsm head with fsm.when=true (config.yaml, head.json, head.pt; its feature
cache). The truth's tube: the linked tube with the most mean IoU with the target over the video. A tube's peak:
tubes.activity.tube_peak of its when-score (the mean of its top quarter of frames). A diagnostic (it reads the
test truth), never a method: docs/results/stvg.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
import torch

from common import cli

WEIGHTS = (0.5, 1.0, 2.0, 4.0)


def main(argv=None) -> int:
    from common.errors import UserError
    from finetune import config as C
    from finetune.families import family_of
    from finetune.heads.registry import spec_of
    from finetune.stvg_batches import text_batch, video_batch
    from finetune.stvg_features import tokenizer_of
    from finetune.train import check_dataset
    from benchmarks.diagnostics.stvg_when_sources import best_tube
    from tubes.activity import standardise, tube_peak

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    a = p.parse_args(argv)
    for name in ("config.yaml", "head.json", "head.pt"):
        if not os.path.isfile(os.path.join(a.run, name)):
            raise UserError(f"--run [{a.run}]: no {name} (a finished finetune run)")
    cfg = C.resolve(C.load(os.path.join(a.run, "config.yaml"), []))
    if cfg.head != "fsm" or not cfg.fsm.when or cfg.dataset.kind != "synthetic_stvg":
        raise UserError(f"--run [{a.run}]: not an fsm run with fsm.when=true on the synthetic STVG corpus")
    spec, family = spec_of(cfg.head), family_of(cfg)
    adapter, _, queries = check_dataset(cfg)
    store = family.store(cfg, adapter)
    videos = store.load_all(adapter.videos("test"))
    head = spec.build(json.load(open(os.path.join(a.run, "head.json")))["dim"], cfg)
    head.load_state_dict(torch.load(io.BytesIO(open(os.path.join(a.run, "head.pt"), "rb").read()), map_location="cpu"))
    head.eval()
    prep, tok = spec.text_prep(spec.section(cfg)), tokenizer_of(cfg.checkpoint)
    vs = json.load(open(os.path.join(cfg.dataset.root, "test", "truth", "vidstg.json")))
    truth = {v["video_id"]: v for v in vs["videos"]}
    by_video: dict[str, list] = {}
    for q in queries:
        by_video.setdefault(q.video, []).append(q)
    hits = {"pointer": 0, "when_peak": 0, **{f"sum_{w:g}": 0 for w in WEIGHTS}}
    n = 0
    with torch.no_grad():
        for vid, qs in by_video.items():
            vt = videos[vid]
            sentences = [q.sentence for q in qs]
            v = video_batch([vt] * len(qs))
            boxes, prob, ls, le, *_, choice, when = head._forward(v, text_batch(store.text(sentences), sentences,
                                                                                 tok, prep))
            sel = torch.sigmoid(prob).mean(-1).argmax(1)
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
