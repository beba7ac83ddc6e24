"""WINNER's Fig. 4 on the synthetic STVG corpus: over training, how strongly the subject's node and the interfering
noun's node (the same noun later in the sentence: "the red cube left of the blue cube", the corpus's same_noun
queries) pick the true tube. Prints one JSON object.

  python -m benchmarks.experiments.winner_correlation --corpus DIR --export RUN/export [--steps 150 --every 25 --seed 0]
      [--variant full="" --variant base="winner.dsa=false winner.svhu=false"] [KEY=VALUE ...]

Each variant trains the WINNER head of configs/finetune/winner_synthetic.yaml (plus the overrides) with the
finetune's own weak batches (finetune.train's StvgBatcher: no truth) and plain torch Adam in this process (no
DeepSpeed or Ray: the analysis needs the head between steps, not a run folder). Every `--every` steps, on the test
split's same_noun queries: Eq. 15's scores of a node over the video's linked tubes cropped to the true span,
softmax over the tubes at Eq. 18's temperature (`winner.temperature`); the correlation score of a node with a tube
is that probability (the paper's definition is in its missing appendix), top1_* the share of queries whose node
ranks that tube first. The true tube is the linked tube of best mean IoU with the target's boxes over the
span; the reference tube likewise for the reference object (what the interfering noun names). Reported per step:
mean over queries of subject->target (the paper's correct correlation), interferer->target (its spurious one),
and, for reading them, subject->reference, interferer->reference and the chance level 1 / (tubes in the span).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CONFIG = os.path.join(ROOT, "configs", "finetune", "winner_synthetic.yaml")


def _mean_iou(tube, truth, frames) -> float:
    from tubes.linking import pairwise_iou

    ious = []
    for f in frames:
        a, b = tube.box_at(f), truth.box_at(f)
        if a is None or b is None or not np.all(np.isfinite(a)):
            ious.append(0.0)
            continue
        ious.append(float(pairwise_iou(np.asarray(a, np.float32)[None], np.asarray(b, np.float32)[None])[0, 0]))
    return float(np.mean(ious)) if ious else 0.0


def probe_set(corpus: str, test_feats: dict, tokenizer) -> list[dict]:
    """The test split's same_noun queries with: the subject and interfering noun's word rows, the true span's
    feature frames, the target's and the reference's best linked tube."""
    from finetune.stvg_features import token_spans
    from grounding.readers.stvg import read_vidstg, xywh
    from grounding.tube import Tube

    parses = json.load(open(os.path.join(corpus, "test", "truth", "parses.json")))
    vidstg = json.load(open(os.path.join(corpus, "test", "truth", "vidstg.json")))
    trajectories = vidstg["trajectories"]
    out = []
    for q in read_vidstg(os.path.join(corpus, "test", "truth", "vidstg.json")):
        p = parses.get(q.key)
        if not p or p["kind"] != "same_noun" or q.video not in test_feats:
            continue
        noun = p["parse"]["subject"]["noun"]
        words = [q.sentence[a:b].lower() for a, b in token_spans(tokenizer, q.sentence, 64)]
        at = [i for i, w in enumerate(words) if w == noun]
        if len(at) < 2:
            continue
        vt = test_feats[q.video]
        frames = [f for f in range(*q.tube)]
        ref = trajectories[q.video].get(str(p["reference"]))
        if ref is None:
            continue
        ref_tube = Tube.from_boxes({int(f): xywh(b, f"reference {f}") for f, b in ref.items()
                                    if q.tube[0] <= int(f) < q.tube[1]})
        # trajectories hold x, y, w, h boxes: the reader converts the target's; convert the reference's the same way
        ref_tube = Tube(ref_tube.frames, np.concatenate([ref_tube.boxes[:, :2], ref_tube.boxes[:, :2] +
                                                         ref_tube.boxes[:, 2:]], 1))
        target = int(np.argmax([_mean_iou(t, q.boxes, frames) for t in vt.tubes]))
        reference = int(np.argmax([_mean_iou(t, ref_tube, frames) for t in vt.tubes]))
        ids = vt.proposals.frames
        out.append({"key": q.key, "video": q.video, "sentence": q.sentence, "qtype": q.qtype,
                    "subject": at[0], "interferer": at[-1], "span": q.tube,
                    "inside": torch.from_numpy((ids >= q.tube[0]) & (ids < q.tube[1])),
                    "target": target, "reference": reference})
    return out


@torch.no_grad()
def correlations(head, probes, test_feats, text_of, tokenizer) -> dict:
    from finetune.stvg_batches import text_batch, video_batch

    head.eval()
    names = ("subject_target", "interferer_target", "subject_reference", "interferer_reference")
    rows = {k: [] for k in names + tuple("top1_" + n for n in names) + ("chance",)}
    for p in probes:
        vt = test_feats[p["video"]]
        video = video_batch([vt])
        weight = p["inside"][None, : video.mask.shape[1]]
        scores, chart = head.node_scores(video, text_batch(text_of([p["sentence"]]), [p["sentence"]], tokenizer),
                                         weight)
        ok = scores[0, 0] > -1e3
        logits = scores[0].masked_fill(~ok[None], -float("inf"))
        prob = torch.softmax(logits / head.cfg.temperature, -1)         # the temperature Eq. 18 trains with
        best = logits.argmax(-1)
        s, i = chart.offset[1] + p["subject"], chart.offset[1] + p["interferer"]
        for name, node, tube in (("subject_target", s, p["target"]), ("interferer_target", i, p["target"]),
                                 ("subject_reference", s, p["reference"]),
                                 ("interferer_reference", i, p["reference"])):
            rows[name].append(float(prob[node, tube]))
            rows["top1_" + name].append(float(best[node] == tube))
        rows["chance"].append(1.0 / max(int(ok.sum()), 1))
    head.train()
    return {k: round(float(np.mean(v)), 4) for k, v in rows.items()}


def run_variant(name: str, overrides: list[str], args) -> dict:
    from finetune import config as fc
    from finetune.families import build_adapter
    from finetune.heads import build_head
    from finetune.stvg_batches import StvgBatcher
    from finetune.stvg_features import tokenizer_of
    from finetune.train import feature_store, prepare, train_videos

    cfg = fc.resolve(fc.load(CONFIG, [f"checkpoint={args.export}", f"dataset.root={args.corpus}", "run=unused",
                                      f"seed={args.seed}", *args.overrides, *overrides]))
    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg, prepare(cfg, adapter)["model_key"])
    train_feats = store.load_all(train_videos(cfg, adapter))
    test_feats = store.load_all(adapter.videos("test"))
    tokenizer = tokenizer_of(cfg.checkpoint)
    probes = probe_set(args.corpus, test_feats, tokenizer)
    torch.manual_seed(cfg.seed)
    head = build_head("winner", next(iter(train_feats.values())).frames.shape[1], cfg)
    batcher = StvgBatcher(cfg, adapter.train_samples(), train_feats, store.text_store.text, tokenizer)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    curve, losses, t0 = [], [], time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            curve.append({"step": step, **correlations(head, probes, test_feats, store.text, tokenizer)})
        if step == args.steps:
            break
        batch, _, _ = batcher.batch(step)
        out = head.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return {"overrides": overrides, "queries": len(probes),
            "qtypes": {t: sum(p["qtype"] == t for p in probes) for t in ("declarative", "interrogative")},
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
            "seconds": round(time.time() - t0, 1), "curve": curve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help='a model: name and space-separated overrides (default: full="" and '
                        'base="winner.dsa=false winner.svhu=false", the paper\'s base model)')
    p.add_argument("overrides", nargs="*", help="KEY=VALUE for every variant")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        print("error: --steps and --every must be >= 1", file=sys.stderr)
        return 2
    variants = args.variant or ["full=", "base=winner.dsa=false winner.svhu=false"]
    out = {"corpus": args.corpus, "export": args.export, "steps": args.steps, "seed": args.seed, "variants": {}}
    for v in variants:
        name, _, rest = v.partition("=")
        out["variants"][name] = run_variant(name, rest.split(), args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
