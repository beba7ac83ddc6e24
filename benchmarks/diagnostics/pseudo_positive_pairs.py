"""What the mined pseudo-positives pair: statistics against the train split's hidden truth, and a picture.

    python -m benchmarks.diagnostics.pseudo_positive_pairs --dump PAIRS.json --shards runs/demo/shards \
        --truth runs/demo/corpus/train [--picture pairs.png --pictures 6]

PAIRS.json is `learning_probe.py --pseudo-positives --pp-dump PAIRS.json` (rows index the shard set's clips in
sorted-tar order, as the probe loads them). Prints one JSON object:
- `pairs`: mined (clip, neighbour) pairs; `same_caption`: the neighbour's caption is the clip's own text;
- by the clip's caption kind (key phrase naming verb + colour + noun, follow-up, unrelated talk): pair counts;
- `same_true_action`: the clip's window and the neighbour's window show the same hidden action (the action
  covering most of each window's seconds; "background" when none), next to the same share for random
  other-video pairs of the same clips (the baseline the mining must beat);
- `new_information`: pairs whose neighbour caption differs from the clip's own (the only ones L_crov can learn
  anything from: with a near-identical caption the term re-weights the clip's own positive).
The picture shows, per pair, the clip's frames above the neighbour's, with both captions and true actions.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import Counter

import numpy as np



def kind(caption: str) -> str:
    from shards.synthetic import vocab

    words = [w for w in caption.split() if w not in vocab.FILLERS]
    if any(w in vocab.COLOURS for w in words) and any(w in vocab.VERBS for w in words):
        return "key"
    return "unrelated" if " ".join(words) in vocab.UNRELATED_PHRASES else "follow"


def true_action(segments, start: float, end: float) -> str:
    """The step covering most whole seconds of [start, end) (inclusive integer segments), or background."""
    votes = Counter()
    for t in range(int(np.ceil(start)), int(np.ceil(end))):
        step = next((s for a, b, s in segments if a <= t <= b), "background")
        votes[step] += 1
    return votes.most_common(1)[0][0] if votes else "background"


def main() -> int:
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from shards.reader import read_samples

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump", required=True)
    p.add_argument("--shards", default="runs/demo/shards")
    p.add_argument("--truth", default="runs/demo/corpus/train")
    p.add_argument("--picture")
    p.add_argument("--pictures", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    dump = json.load(open(args.dump))
    truth = read_groundingyoutube(args.truth)
    metas, frames = [], []
    for s in read_samples(sorted(glob.glob(os.path.join(args.shards, "*.tar")))):
        metas.append(s["json"])
        frames.append(s["frames"])
    act = [true_action(truth[m["video_id"]].segments if m["video_id"] in truth else [], m["window_start"],
                       m["window_end"]) for m in metas]
    rng = np.random.default_rng(args.seed)
    videos = np.array([m["video_id"] for m in metas])
    stats: Counter = Counter()
    by_kind: Counter = Counter()
    random_same = []
    for e in dump["pairs"]:
        q = e["row"]
        for n, _, cap in e["neighbours"]:
            stats["pairs"] += 1
            stats["same_caption"] += cap == e["caption"]
            stats["same_true_action"] += act[q] == act[n]
            stats["same_true_action_not_background"] += act[q] == act[n] != "background"
            stats["new_information"] += cap != e["caption"]
            by_kind[kind(e["caption"])] += 1
            r = int(rng.integers(len(metas)))
            while videos[r] == videos[q]:
                r = int(rng.integers(len(metas)))
            random_same.append((act[q] == act[r], act[q] == act[r] != "background"))
    n = max(1, stats["pairs"])
    out = {"benchmark": "pseudo_positive_pairs", "dump": args.dump, "clips": len(metas),
           "clips_in_table": len(dump["pairs"]), "mining_counts": dump.get("counts"), "pairs": stats["pairs"],
           "same_caption": round(stats["same_caption"] / n, 4),
           "new_information": round(stats["new_information"] / n, 4),
           "same_true_action": round(stats["same_true_action"] / n, 4),
           "same_true_action_not_background": round(stats["same_true_action_not_background"] / n, 4),
           "same_true_action_random_pairs": round(float(np.mean([a for a, _ in random_same] or [0])), 4),
           "same_true_action_not_background_random_pairs": round(float(np.mean([b for _, b in random_same] or [0])),
                                                                 4),
           "clip_caption_kind": {k: round(v / n, 4) for k, v in by_kind.items()},
           "all_clips_caption_kind": {k: round(v / len(metas), 4) for k, v in
                                      Counter(kind(m["caption"]) for m in metas).items()}}
    if args.picture and dump["pairs"]:
        from PIL import Image, ImageDraw

        chosen = rng.choice(len(dump["pairs"]), min(args.pictures, len(dump["pairs"])), replace=False)
        scale, u = 3, frames[0].shape[0]
        h = frames[0].shape[1] * scale
        width, row_h = u * h + 8, 2 * h + 44
        img = Image.new("RGB", (max(width, 560), row_h * len(chosen)), "white")
        draw = ImageDraw.Draw(img)
        for j, c in enumerate(chosen):
            e = dump["pairs"][int(c)]
            q, (nb, _, cap) = e["row"], e["neighbours"][0]
            y = j * row_h
            for k, (r, label) in enumerate(((q, f"clip: '{e['caption']}'  [true: {act[q]}]"),
                                            (nb, f"mined: '{cap}'  [true: {act[nb]}]"))):
                draw.text((4, y + k * (h + 20)), label, fill="black")
                for f in range(u):
                    tile = Image.fromarray(frames[r][f]).resize((h, h), Image.NEAREST)
                    img.paste(tile, (4 + f * h, y + 12 + k * (h + 20)))
        img.save(args.picture)
        out["picture"] = args.picture
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
