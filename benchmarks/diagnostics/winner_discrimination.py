"""Is there a weak signal for WINNER to learn from? For the content words of training batches (stop words, relation
words and wh-words left out), the rank of the sentence's own video among the batch's videos by Eq. 17's score
(max over a video's tubes of the word's node score): 0 = own video best, (B - 1) / 2 = chance. Also the rank of the
own video by the clip NCE's score. For the untrained head (with and without SVHU) and any trained head.pt given.
Prints one JSON object.

  python -m benchmarks.diagnostics.winner_discrimination --corpus DIR --export RUN/export [--head RUN/head.pt ...]
      [--videos 24 --batches 6]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CONFIG = os.path.join(ROOT, "configs", "finetune", "winner_synthetic.yaml")
SKIP = {"the", "is", "?", "what", "which", "of", "left", "right", "above", "below", "next", "to", "thing"}


@torch.no_grad()
def ranks(head, batcher, batches: int, first_step: int) -> dict:
    from finetune.heads.winner import token_words

    head.eval()
    own, other, word_rank, clip_rank = [], [], [], []
    for step in range(first_step, first_step + batches):
        batch, _, _ = batcher.batch(step)
        b = batch.video.frames.shape[0]
        tubes, tm, _, _, frames, seg = head._video(batch.video)
        q, v = torch.arange(b).repeat_interleave(b), torch.arange(b).repeat(b)
        enc = head.encode(batch.text, tubes, tm, frames, seg, q, v)
        s = head.node_tube_scores(enc.nodes, tubes[v], tm[v]).max(-1).values.view(b, b, -1)
        c = enc.clip_scores.view(b, b, -1).max(-1).values
        for i in range(b):
            clip_rank.append(int((c[i] > c[i, i]).sum()))
            words = token_words(batch.text.sentences[i], batch.text.token_spans[i])[:s.shape[-1]]
            for k, w in enumerate(words):
                if w in SKIP:
                    continue
                row = s[i, :, k]
                own.append(float(row[i]))
                other.append(float(row[torch.arange(b) != i].mean()))
                word_rank.append(int((row > row[i]).sum()))
    return {"content_words": len(own), "own_video_score": round(float(np.mean(own)), 4),
            "other_videos_score": round(float(np.mean(other)), 4),
            "own_video_rank": round(float(np.mean(word_rank)), 3),
            "clip_own_video_rank": round(float(np.mean(clip_rank)), 3),
            "chance_rank": (b - 1) / 2}


def main(argv=None) -> int:
    from finetune import config as fc
    from finetune.families import build_adapter
    from finetune.heads import build_head
    from finetune.stvg_batches import StvgBatcher
    from finetune.stvg_features import tokenizer_of
    from finetune.train import feature_store, prepare, train_videos

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--head", nargs="*", default=[], help="trained head.pt files (their run's config.yaml is read)")
    p.add_argument("--videos", type=int, default=24, help="training videos the batches are drawn from")
    p.add_argument("--batches", type=int, default=6)
    args = p.parse_args(argv)
    base = [f"checkpoint={args.export}", f"dataset.root={args.corpus}", "run=unused",
            f"dataset.max_train_videos={args.videos}"]
    cfg = fc.resolve(fc.load(CONFIG, base))
    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg, prepare(cfg, adapter)["model_key"])
    feats = store.load_all(train_videos(cfg, adapter))
    batcher = StvgBatcher(cfg, adapter.train_samples(), feats, store.text_store.text, tokenizer_of(cfg.checkpoint))
    dim = next(iter(feats.values())).frames.shape[1]
    out = {"videos": args.videos, "batch_size": cfg.batch_size, "untrained": {}, "trained": {}}
    for svhu in ("true", "false"):
        torch.manual_seed(0)
        head = build_head("winner", dim, fc.load(CONFIG, base + [f"winner.svhu={svhu}"]))
        out["untrained"][f"svhu={svhu}"] = ranks(head, batcher, args.batches, 0)
    for path in args.head:
        run_cfg = fc.load(os.path.join(os.path.dirname(path), "config.yaml"), [])
        head = build_head("winner", dim, run_cfg)
        head.load_state_dict(torch.load(path))
        out["trained"][path] = ranks(head, batcher, args.batches, 10_000)   # draws its run never made
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
