"""Fast learning probe: the pretraining model trained in one process on a decoded shard set, with test pointing
and per-frame action accuracy measured along the way; prints one JSON object (the curve, chance in the same run).

    python -m benchmarks.diagnostics.learning_probe --shards runs/demo/shards --test runs/demo/corpus/test \
        [--steps 1000] [--batch 32] [--lr 1e-3] [--clips-per-video 1] [--evals 5] [model.key=value ...]

`model.mil_windows=1` gives each clip the MIL-NCE bag of its neighbouring ASR windows' captions, built as the
loader builds it (pretrain.data.neighbour_captions).

No Ray, no DeepSpeed, no loader: batches are drawn at random from all clips held in memory (or `--clips-per-video
k`: B/k videos with k clips each, so that same-video negatives appear), so a model/loss question is answered in
minutes (docs/results/pretraining.md). Model settings: configs/pretrain/demo32.yaml's `model`
section plus overrides. Pointing: the heatmap peak of the true step's query on each annotated second at 1 fps;
action accuracy: the argmax over the video's action pool of the per-description standardised global similarity on
the annotated seconds (chance: the mean of 1 / pool size).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def load_clips(shards: str):
    import numpy as np

    from shards.reader import read_samples

    frames, captions, videos, spans = [], [], [], []
    for s in read_samples(sorted(glob.glob(os.path.join(shards, "*.tar")))):
        frames.append(s["frames"])
        captions.append(s["json"]["caption"])
        videos.append(s["json"]["video_id"])
        spans.append((float(s["json"]["asr_start"]), float(s["json"]["asr_end"])))
    return np.stack(frames), captions, np.asarray(videos), np.asarray(spans)


def mine_pseudo_positives(model, frames, captions, videos, k: int, tau: float, search_k: int = 64) -> dict:
    """The demo's mining on the clips in memory: clip embeddings as index.embed makes them (mean of the frames'
    global features; caption g(EOT)), an exact FAISS inner-product index, and index.mining.mine_block (other
    video, caption cosine > tau). {clip row: [neighbour rows]} plus the counts."""
    import faiss
    import numpy as np
    import torch

    model.eval()
    vec, txt = [], []
    with torch.no_grad():
        for i in range(0, len(frames), 256):
            g = model.encode_frames(model.preprocess_frames(torch.from_numpy(frames[i:i + 256])))[0]
            vec.append(torch.nn.functional.normalize(g.mean(1), dim=-1).numpy())
            txt.append(model.encode_text(model.tokenize(captions[i:i + 256]))[0].numpy())
    model.train()
    vec, txt = np.concatenate(vec).astype(np.float32), np.concatenate(txt).astype(np.float32)
    index = faiss.IndexFlatIP(vec.shape[1])
    index.add(vec)
    from index.mining import ArrayColumns, mine_block

    _, codes = np.unique(videos, return_inverse=True)
    columns = ArrayColumns(text=txt, video_codes=codes)
    table, counts = {}, {}
    for lo in range(0, len(vec), 512):
        qids = np.arange(lo, min(len(vec), lo + 512))
        rows, c = mine_block(index, vec[qids], txt[qids], codes[qids], columns, k, tau, search_k)
        for q, r in zip(qids.tolist(), rows):
            if r:
                table[q] = [n for n, _, _ in r]
        for key, v in c.items():
            counts[key] = counts.get(key, 0) + v
    return {"table": table, "counts": counts}


def evaluate(model, clips: dict, truth: dict, sources=("global",), decodes=("frame",)) -> dict:
    import numpy as np
    import torch

    from grounding.inference import InferenceConfig, label_frames, locate, spatial_heatmaps, temporal_scores
    from grounding.metrics import pointing_game

    every_frame = InferenceConfig(tau=-np.inf, normalize="query")  # best action per frame, no background
    model.eval()
    correct, points, boxes, chance = [], [], [], []
    other = {(s, d): [] for s in sources for d in decodes if (s, d) != ("global", "frame")}
    with torch.no_grad():
        for vid, clip in clips.items():
            v = truth[vid]
            pool = [s for s in v.pool if s != "background"]
            chance.append(1.0 / len(pool))
            labels, _ = label_frames(temporal_scores(model, clip.frames, pool), every_frame)
            raw = {s: temporal_scores(model, clip.frames, pool, source=s) for s in sources}
            more = {(s, d): label_frames(raw[s], InferenceConfig(tau=-np.inf, normalize="query", decode=d))[0]
                    for s, d in other}
            by_step: dict = {}
            for i, t in enumerate(np.rint(clip.times).astype(int)):
                if int(t) in v.boxes:
                    step, box = v.boxes[int(t)]
                    correct.append(pool[labels[i]] == step)
                    for s, lab in more.items():
                        other[s].append(pool[lab[i]] == step)
                    by_step.setdefault(step, []).append((i, box))
            for step, items in by_step.items():
                heat = spatial_heatmaps(model, clip.frames[[i for i, _ in items]], step)
                for (_, box), h in zip(items, heat):
                    points.append(locate(h, clip.geometry, 0.5)[0])
                    boxes.append(box)
    model.train()
    return {"pointing": round(pointing_game(points, boxes), 4), "action_acc": round(float(np.mean(correct)), 4),
            "action_chance": round(float(np.mean(chance)), 4),
            **{"_".join(["action_acc"] + [x for x in sd if x not in ("global", "frame")]): round(float(np.mean(c)), 4)
               for sd, c in other.items()}}


def main() -> int:
    import numpy as np
    import torch

    from common import config as C
    from grounding.predict import decode
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from pretrain.config import PretrainConfig
    from pretrain.model import build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="runs/demo/shards")
    p.add_argument("--test", default="runs/demo/corpus/test")
    p.add_argument("--config", default=os.path.join(ROOT, "configs/pretrain/demo32.yaml"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clips-per-video", type=int, default=1)
    p.add_argument("--evals", type=int, default=5)
    p.add_argument("--test-videos", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verb-swap", action="store_true",
                   help="verb-swapped captions as hard negatives (data.verb_swap with the synthetic verbs)")
    p.add_argument("--save", help="write the trained model as an export folder (for temporal_decomposition.py)")
    p.add_argument("--init", help="start from this export's weights (a second round)")
    p.add_argument("--pseudo-positives", action="store_true",
                   help="mine pseudo-positives with the starting weights (the demo's stage 4, in memory) and train "
                        "with L_crov; without it the same steps are the matched control")
    p.add_argument("--pp-tau", type=float, default=0.9, help="caption cosine gate of the mining (cluster.index's)")
    p.add_argument("--pp-k", type=int, default=5)
    p.add_argument("--scores", nargs="*", default=[], choices=["word_region", "both"],
                   help="also report action accuracy with these frame scores (inference.scores)")
    p.add_argument("--decodes", nargs="*", default=[], choices=["once"],
                   help="also report action accuracy with these decodings (inference.decode)")
    p.add_argument("--pp-dump", help="write the mined pairs (row, caption, neighbour captions) as JSON here")
    p.add_argument("overrides", nargs="*", help="model.key=value")
    args = p.parse_args()

    cfg = C.load(PretrainConfig, args.config, [f"data.shards={args.shards}", *args.overrides])
    torch.manual_seed(args.seed)
    model = build_model(cfg.model)
    if args.init:
        from pretrain.model import load_weights

        model.load_state_dict(load_weights(os.path.join(args.init, "model.pt")))
    frames, captions, videos, spans = load_clips(args.shards)
    mined = None
    if args.pseudo_positives:
        mined = mine_pseudo_positives(model, frames, captions, videos, args.pp_k, args.pp_tau)
        print(json.dumps({"mined": mined["counts"], "clips_in_table": len(mined["table"])}), file=sys.stderr)
        if args.pp_dump:
            with open(args.pp_dump, "w") as fh:
                json.dump({"counts": mined["counts"], "pairs": [
                    {"row": q, "video": str(videos[q]), "caption": captions[q],
                     "neighbours": [[int(n), str(videos[n]), captions[n]] for n in ns]}
                    for q, ns in mined["table"].items()]}, fh)
    by_video = {v: np.nonzero(videos == v)[0] for v in sorted(set(videos.tolist()))}
    bags = [[] for _ in captions]
    if cfg.model.mil_windows > 0:  # the loader's neighbour bags (pretrain.data.neighbour_captions), from memory
        from pretrain.data import neighbour_captions

        for rows in by_video.values():
            for i, bag in zip(rows, neighbour_captions([(*spans[i], captions[i]) for i in rows],
                                                       cfg.model.mil_windows, cfg.model.mil_shift)):
                bags[i] = bag
    names = list(by_video)
    truth = read_groundingyoutube(args.test)
    clips = {vid: decode(vid, os.path.join(args.test, "videos", f"{vid}.mp4"), 1.0, model.image_size)
             for vid in sorted(truth)[:args.test_videos]}
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=cfg.optim.weight_decay)
    warm = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps)
                                                                                   / max(1, args.steps)))))
    rng = np.random.default_rng(args.seed)
    sources, decodes = ("global", *args.scores), ("frame", *args.decodes)
    curve = [{"step": 0, **evaluate(model, clips, truth, sources, decodes)}]
    t0 = time.time()
    k = max(1, args.clips_per_video)
    for step in range(1, args.steps + 1):
        if k > 1:
            chosen = rng.choice(len(names), args.batch // k, replace=False)
            idx = np.concatenate([rng.choice(by_video[names[c]], k, replace=len(by_video[names[c]]) < k)
                                  for c in chosen])
        else:
            idx = rng.choice(len(frames), args.batch, replace=False)
        inputs = {"frames": torch.from_numpy(frames[idx]), "tokens": model.tokenize([captions[i] for i in idx])}
        if cfg.model.mil_windows > 0:
            from pretrain.data import mil_inputs

            inputs.update(mil_inputs([bags[i] for i in idx], [f"{videos[i]}__s0" for i in idx],
                                     spans[idx].tolist(), cfg.model.mil_windows, model.tokenize, "cpu"))
        if mined is not None:  # one of the clip's pseudo-positive captions, as pretrain.data attaches them
            chosen = [captions[int(rng.choice(mined["table"][i]))] if i in mined["table"] else None
                      for i in idx.tolist()]
            inputs["pp_tokens"] = model.tokenize([c or "" for c in chosen])
            inputs["pp_mask"] = torch.tensor([c is not None for c in chosen])
        if args.verb_swap:
            from pretrain.hard_negatives import verb_swapped
            from shards.synthetic.vocab import VERBS

            hard = [verb_swapped(captions[i], VERBS, step * 100_003 + j) for j, i in enumerate(idx)]
            inputs["hard_tokens"] = model.tokenize([h or "" for h in hard])
            inputs["hard_mask"] = torch.tensor([h is not None for h in hard])
        out = model(inputs)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        if step % max(1, args.steps // args.evals) == 0 or step == args.steps:
            curve.append({"step": step, **{k_: round(float(out[k_].detach()), 4) for k_ in
                                           ("loss", "loss_local", "loss_global", "logit_scale", "loss_crossvideo",
                                            "crossvideo_frac") if k_ in out},
                          **evaluate(model, clips, truth, sources, decodes), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
    if args.save:
        from pretrain.model import save_export

        save_export(model, args.save)
    print(json.dumps({"benchmark": "learning_probe", "shards": args.shards, "clips": len(frames),
                      "videos": len(names), "batch": args.batch, "clips_per_video": k, "lr": args.lr,
                      "overrides": args.overrides, "init": args.init,
                      "pseudo_positives": None if mined is None else {"tau": args.pp_tau, "k": args.pp_k,
                                                                      "clips_in_table": len(mined["table"]),
                                                                      **mined["counts"]},
                      "curve": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
