"""How much *when* the frozen STVG features hold: a probe trained on the train split's truth to tell a frame inside
the referred span from one outside, scored on held-out train videos. Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_when_probe --config configs/finetune/fsm_synthetic.yaml \
        checkpoint=RUN/export dataset.root=DIR [--batches 150] [--held-out 5] [--fold 0] [key=value ...]

The rows are the FSM finetune's own batches (StvgBatcher over the region-feature cache, frames subsampled as in
training). Each frame's probe input: the frame's global feature, the proposal the pretrained word-region cosine
ranks first (the zero-shot pick) and their products with the sentence / the mean word; a linear probe and a
one-hidden-layer one, standardised inputs, Adam. Every 1 in `--held-out` training videos (by sorted id, from the
`--fold`-th) is held out (no row of it is trained on). An area under the ROC curve of 0.5 on held-out videos says no
head on these features can place a span better than the spans' length and position prior: the head's m_tIoU then
comes from that prior alone.
Beside them, untrained scores: the activity (TubeGeometry.activity, tubes/activity.py: how far a region looks from
its linked tube's median) of the zero-shot pick's region and of the tube that follows the referred object (found
with the truth: what the activity says when the tube is right), and the probes again with the pick's activity as
an input. Last, what fsm.when learns from: probes on the truth's tube's region feature, its change from the
tube's rest and the sentence's parsed verb (one-hot), the spatial half given.
And the spatial half not given: a when-score (finetune/when_probe.py: the module fsm.when and the weak heads
use) trained on the held-in rows' truth over every tube's regions (fsm.when_scope=video's loss: the truth's tube's
regions inside the span are the positives, every other region the negatives), its text the parsed verb, or the verb
plus the grounded entity's words (when_words=target); each held-out frame scored by its best region (which object
is acted on is the score's to find), and along the tube where the score peaks (the tube fsm.when_scope=video
chooses).
A diagnostic of the features (docs/fsm.md), never a method: it reads the train truth.
"""
from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import cli  # noqa: E402
from common import config as cfglib  # noqa: E402
from finetune.config import load, resolve  # noqa: E402
from finetune.heads.stvg import mean_unit_words  # noqa: E402
from finetune.when_probe import learnt_when_probe
from grounding.metrics.roc import auc


def truth_tubes(batch) -> torch.Tensor:
    """(B,) the linked tube that follows each row's referred object (the tube of the proposal that best overlaps
    the true box, by majority over the span's frames), -1 where none does."""
    from finetune.heads.fsm import pair_iou

    v, tg = batch.video, batch.targets
    geo = v.geometry
    iou = pair_iou(geo.boxes, tg.boxes[:, :, None, :]) * v.region_mask
    best = iou.argmax(-1)                                                # (B, T)
    tube = torch.gather(geo.tube_ids, 2, best[..., None])[..., 0]       # (B, T)
    out = torch.full((len(tube),), -1, dtype=torch.long)
    for i in range(len(tube)):
        ok = tg.box_mask[i] & (tube[i] >= 0)
        if ok.any():
            out[i] = int(torch.mode(tube[i][ok]).values)
    return out


def truth_tube_activity(batch, act: torch.Tensor) -> torch.Tensor:
    """(B, T) the activity of the truth's tube (truth_tubes) at every frame; a frame where that tube has no
    region gets the video's least activity."""
    on = batch.video.geometry.tube_ids == truth_tubes(batch)[:, None, None]
    return torch.where(on.any(-1), (act * on).sum(-1), act.flatten(1).min(1).values[:, None])


def truth_tube_change(batch) -> torch.Tensor:
    """(B, T, 2d) the truth's tube's region feature at every frame and its change from the tube's rest
    (finetune/heads/stvg.py tube_rest_delta: what fsm.when reads); 0 where the tube has no region."""
    from finetune.heads.stvg import tube_rest_delta

    v = batch.video
    geo = v.geometry
    r = F.normalize(v.regions, dim=-1)
    x = torch.cat([r, tube_rest_delta(v.regions, geo.tube_ids, geo.tube_mask.shape[1])], -1)
    m = truth_tubes(batch)[:, None, None]
    on = ((geo.tube_ids == m) & (m >= 0)).to(x.dtype)
    return torch.einsum("btn,btnk->btk", on, x)


def frame_rows(batch):
    """(features (n, 6d+3), inside the span (n,), row of the batch (n,), the truth's tube's change (n, 2d)) of a
    batch's valid frames: the last three feature columns are the zero-shot score, the activity of the zero-shot
    pick's region and of the truth's tube."""
    v, tg = batch.video, batch.targets
    s = F.normalize(batch.text.sentence, dim=-1)
    q = mean_unit_words(batch.text.words, batch.text.word_mask)
    f = F.normalize(v.frames, dim=-1)
    prior = torch.einsum("btnd,bd->btn", v.regions, q).masked_fill(~v.region_mask, -2.0)
    pick = prior.argmax(-1)
    reg = torch.gather(v.regions, 2, pick[..., None, None].expand(-1, -1, 1, v.regions.shape[-1]))[:, :, 0]
    fid = v.geometry.frame_ids
    inside = (fid >= tg.sted[:, :1]) & (fid < tg.sted[:, 1:])
    act = v.geometry.activity
    pick_act = torch.gather(act, 2, pick[..., None])
    feat = torch.cat([f * s[:, None], reg * q[:, None], f, reg, s[:, None].expand_as(f), prior.amax(-1, keepdim=True),
                      pick_act, truth_tube_activity(batch, act)[..., None]], -1)
    rows = torch.arange(len(fid))[:, None].expand_as(fid)
    m = v.mask
    return feat[m].numpy(), inside[m].numpy(), rows[m].numpy(), truth_tube_change(batch)[m].numpy()


def when_rows(batch, parse) -> dict:
    """What the learnt when-score probe needs of a batch: regions, tube ids, the regions it may score, the frames,
    the positives (the truth's tube's regions inside the span) and the sentences' parsed verbs (`parse`: VerbIds)."""
    v, tg = batch.video, batch.targets
    geo = v.geometry
    fid = geo.frame_ids
    inside = (fid >= tg.sted[:, :1]) & (fid < tg.sted[:, 1:]) & v.mask
    ok = (geo.tube_ids >= 0) & v.region_mask & v.mask[..., None]
    pos = (geo.tube_ids == truth_tubes(batch)[:, None, None]) & inside[..., None] & ok
    parsed = parse(batch.text.sentences, None, None)
    return {"regions": v.regions, "tube_ids": geo.tube_ids, "m": geo.tube_mask.shape[1], "ok": ok, "frames": v.mask,
            "inside": inside, "pos": pos, "parsed": parsed}


def fit_probe(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int = 400, seed: int = 0) -> torch.nn.Module:
    """A logistic probe (linear, or one hidden layer) on standardised inputs: y (n,) one label, (n, k) k labels."""
    torch.manual_seed(seed)
    d, k = x.shape[1], (1 if y.dim() == 1 else y.shape[1])
    m = torch.nn.Linear(d, k) if hidden == 0 else torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(),
                                                                        torch.nn.Linear(hidden, k))
    opt = torch.optim.Adam(m.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        out = m(x)
        loss = F.binary_cross_entropy_with_logits(out[:, 0] if y.dim() == 1 else out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def main(argv=None) -> int:
    from finetune.families import build_adapter
    from finetune.stvg_batches import StvgBatcher
    from finetune.stvg_features import tokenizer_of
    from finetune.train import feature_store, prepare, train_videos

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/finetune/fsm_synthetic.yaml")
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--held-out", type=int, default=5, help="hold out every n-th training video")
    p.add_argument("--fold", type=int, default=0, help="which videos are held out: the sorted ids fold, fold + n, ...")
    p.add_argument("--when-steps", type=int, default=1500, help="AdamW steps of the learnt when-score probe (0: none)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.batches < 1 or a.held_out < 2 or a.when_steps < 0 or not 0 <= a.fold < a.held_out:
        raise cfglib.ConfigError("--batches must be >= 1, --held-out >= 2, --when-steps >= 0 and --fold in "
                                 "[0, --held-out)")
    cfg = resolve(load(a.config, ["head=fsm", *a.overrides]))
    adapter = build_adapter(cfg.dataset)
    store = feature_store(cfg, prepare(cfg, adapter)["model_key"])
    feats = store.load_all(train_videos(cfg, adapter))
    batcher = StvgBatcher(cfg, adapter.train_samples(), feats, store.text_store.text, tokenizer_of(cfg.checkpoint),
                          truth=adapter.train_truth())
    held = set(sorted(feats)[a.fold::a.held_out])
    from finetune.heads.when_score import VerbIds
    from finetune.query_parse import CachedParser

    parse = CachedParser()   # FSM's own parser: VerbIds
    verb_ids = VerbIds(types.SimpleNamespace(when_vocab=1024, when_words="target"))
    verbs: dict[str, int] = {}
    xs, ys, hs, cs, vs, when, when_held = [], [], [], [], [], [], []
    for step in range(a.batches):
        batch, samples, _ = batcher.batch(step)
        x, y, r, c = frame_rows(batch)
        if a.when_steps:
            when.append(when_rows(batch, verb_ids))
            when_held.append(torch.tensor([s.video in held for s in samples]))
        xs.append(x)
        ys.append(y)
        cs.append(c)
        hs.append(np.array([samples[i].video in held for i in r], bool))
        vs.append(np.array([verbs.setdefault(parse(batch.text.sentences[i]).action or "", len(verbs)) for i in r]))
    x, y, te = np.concatenate(xs), np.concatenate(ys), np.concatenate(hs)
    # the truth's tube's region and change with the parsed verb (one-hot): the inputs fsm.when learns from
    change = np.concatenate([np.concatenate(cs), np.eye(len(verbs), dtype=np.float32)[np.concatenate(vs)]], 1)
    tr = ~te
    xt = torch.from_numpy(x)
    mu, sd = xt[tr].mean(0), xt[tr].std(0) + 1e-6
    xt, yt = (xt - mu) / sd, torch.from_numpy(y).float()
    out = {"benchmark": "stvg_when_probe", "frames": int(len(y)), "fold": a.fold, "held_out_frames": int(te.sum()),
           "inside_share": round(float(y.mean()), 4)}
    # the probes see what a head sees (not the truth's tube, the last column)
    for name, hidden, cols in (("linear", 0, slice(0, -2)), ("mlp64", 64, slice(0, -2)),
                               ("linear_with_activity", 0, slice(0, -1)), ("mlp64_with_activity", 64, slice(0, -1))):
        m = fit_probe(xt[tr][:, cols], yt[tr], hidden)
        with torch.no_grad():
            sc = m(xt[:, cols])[:, 0].numpy()
        out[f"auc_{name}_held_out"] = round(auc(sc[te], y[te]), 4)
        out[f"auc_{name}_train"] = round(auc(sc[tr], y[tr]), 4)
    ct = torch.from_numpy(change)
    cmu, csd = ct[tr].mean(0), ct[tr].std(0) + 1e-6
    ct = (ct - cmu) / csd
    for name, hidden in (("truth_tube_change_verb_linear", 0), ("truth_tube_change_verb_mlp64", 64)):
        m = fit_probe(ct[tr], yt[tr], hidden)
        with torch.no_grad():
            sc = m(ct)[:, 0].numpy()
        out[f"auc_{name}_held_out"] = round(auc(sc[te], y[te]), 4)
        out[f"auc_{name}_train"] = round(auc(sc[tr], y[tr]), 4)
    out["verbs_parsed"] = sorted(verbs)
    d = (x.shape[1] - 3) // 6
    out["auc_frame_sentence_cosine"] = round(auc(x[te, :d].sum(1), y[te]), 4)
    out["auc_zero_shot_region_score"] = round(auc(x[te, -3], y[te]), 4)
    out["auc_zero_shot_pick_activity"] = round(auc(x[te, -2], y[te]), 4)
    out["auc_truth_tube_activity"] = round(auc(x[te, -1], y[te]), 4)
    if a.when_steps:
        out.update(learnt_when_probe(when, when_held, a.when_steps))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
