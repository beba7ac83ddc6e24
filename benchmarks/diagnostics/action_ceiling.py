"""How much *when* the pretraining encoder can hold at all: the same image tower trained with per-frame labels.

    python -m benchmarks.diagnostics.action_ceiling --shards runs/demo/shards --corpus runs/demo/corpus [--steps 800] \
        [--batch 64] [--config configs/pretrain/demo32.yaml] [model.key=value ...]

A diagnostic, not a method: the train split's hidden per-second truth (the step whose box is annotated at that
second) labels the shard frames that fall on an action; the model's image tower + f gets three linear heads (verb,
colour, noun) trained with cross entropy. On the test split each annotated second's frame takes the action of its
video's pool with the highest verb + colour + noun log-probability: the per-frame action accuracy of a model that
was *told* what happens, at the same resolution and size. Far above the self-supervised figure: the objective (or
the data it sees) is what loses the temporal signal; near it: resolution or capacity is the cap. Prints one JSON
object with the curve and the pool chance of the same run.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def labelled_frames(shards: str, truth_dir: str):
    """(frames (n, H, W, 3) uint8, steps [n]) for every shard frame whose second carries a true step."""
    from shards.reader import read_samples

    boxes = json.load(open(os.path.join(truth_dir, "GroundingYouTubeBox.json")))
    frames, steps, seen = [], [], set()
    for sample in read_samples(sorted(glob.glob(os.path.join(shards, "*.tar")))):
        clip, meta = sample["frames"], sample["json"]
        vid = meta["video_id"]
        for i, t in enumerate(meta["frame_times"][: meta["valid_frames"]]):
            sec = str(int(round(t)))
            entry = boxes.get(vid, {}).get(sec)
            if entry and (vid, sec) not in seen:
                seen.add((vid, sec))
                frames.append(clip[i])
                steps.append(entry["step"])
    return np.stack(frames), steps


def decoded_frames(corpus_split: str, size: int):
    """The same labelled frames decoded from the split's mp4s at `size` (for resolutions the shards lack)."""
    from grounding.predict import decode

    boxes = json.load(open(os.path.join(corpus_split, "truth", "GroundingYouTubeBox.json")))
    frames, steps = [], []
    for vid, secs in sorted(boxes.items()):
        if not secs:
            continue
        clip = decode(vid, os.path.join(corpus_split, "videos", f"{vid}.mp4"), 1.0, size)
        for i, t in enumerate(np.rint(clip.times).astype(int)):
            entry = secs.get(str(int(t)))
            if entry:
                frames.append(clip.frames[i])
                steps.append(entry["step"])
    return np.stack(frames), steps


def main() -> int:
    import torch
    import torch.nn.functional as F

    from common import config as C
    from grounding.metrics import actions
    from grounding.predict import decode
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from pretrain.config import PretrainConfig
    from pretrain.model import build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="runs/demo/shards")
    p.add_argument("--corpus", default="runs/demo/corpus")
    p.add_argument("--config", default=os.path.join(ROOT, "configs/pretrain/demo32.yaml"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--evals", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="model.key=value")
    args = p.parse_args()

    cfg = C.load(PretrainConfig, args.config, [f"data.shards={args.shards}", *args.overrides])
    torch.manual_seed(args.seed)
    model = build_model(cfg.model)
    if model.image_size == int(json.load(open(os.path.join(args.shards, "manifest.json")))["config"]["size"]):
        frames, steps = labelled_frames(args.shards, os.path.join(args.corpus, "train", "truth"))
    else:  # e.g. model.backbone=stg-micro64 on 32 px shards
        frames, steps = decoded_frames(os.path.join(args.corpus, "train"), model.image_size)
    verbs = sorted({actions.verb(s) for s in steps})
    colours = sorted({actions.obj(s).split(" ")[0] for s in steps})
    nouns = sorted({actions.obj(s).split(" ")[-1] for s in steps})

    def parts(step: str) -> tuple[int, int, int]:
        o = actions.obj(step).split(" ")
        return verbs.index(actions.verb(step)), colours.index(o[0]), nouns.index(o[-1])

    labels = torch.tensor([parts(s) for s in steps])
    d = cfg.model.embed_dim
    heads = torch.nn.ModuleList([torch.nn.Linear(d, len(verbs)), torch.nn.Linear(d, len(colours)),
                                 torch.nn.Linear(d, len(nouns))])
    params = [*model.backbone.parameters(), *model.f.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))

    truth = read_groundingyoutube(os.path.join(args.corpus, "test"))
    clips = {vid: decode(vid, os.path.join(args.corpus, "test", "videos", f"{vid}.mp4"), 1.0, model.image_size)
             for vid in sorted(truth)}

    def logits(x: torch.Tensor):
        g, _, _ = model.encode_frames(x.unsqueeze(0))
        return [h(g[0]).log_softmax(-1) for h in heads]

    def evaluate() -> dict:
        model.eval()
        tr, pr, pools = [], [], []
        with torch.no_grad():
            for vid, v in truth.items():
                clip = clips[vid]
                pool = [s for s in v.pool if s != "background" and all(
                    w in vocab for w, vocab in zip((actions.verb(s), actions.obj(s).split(" ")[0],
                                                    actions.obj(s).split(" ")[-1]), (verbs, colours, nouns)))]
                lv, lc, ln = logits(torch.from_numpy(clip.frames))
                for i, t in enumerate(np.rint(clip.times).astype(int)):
                    if int(t) in v.boxes and v.boxes[int(t)][0] is not None and pool:
                        score = [lv[i, parts(s)[0]] + lc[i, parts(s)[1]] + ln[i, parts(s)[2]] for s in pool]
                        tr.append(v.boxes[int(t)][0])
                        pr.append(pool[int(np.argmax([float(x) for x in score]))])
                        pools.append(len([s for s in v.pool if s != "background"]))
        model.train()
        return {"action_acc": round(100 * actions.frame_accuracy(tr, pr), 2),
                "verb_acc": round(100 * actions.frame_accuracy(tr, pr, actions.verb), 2),
                "object_acc": round(100 * actions.frame_accuracy(tr, pr, actions.obj), 2),
                "action_chance": round(100 * actions.pool_chance(pools), 2), "frames": len(tr)}

    rng = np.random.default_rng(args.seed)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(frames), args.batch, replace=False)
        out = logits(torch.from_numpy(frames[idx]))
        loss = sum(F.nll_loss(o, labels[idx, j]) for j, o in enumerate(out))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, args.steps // args.evals) == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(float(loss), 4), **evaluate(),
                          "seconds": round(time.time() - t0, 1)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "action_ceiling", "train_frames": len(frames), "image_size": model.image_size,
                      "backbone": cfg.model.backbone, "steps": args.steps, "batch": args.batch, "curve": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
