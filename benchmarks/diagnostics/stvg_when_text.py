"""Which text input lets a learnt *when* find the query's frames on the referred object's own tube: the sentence's
words, the parsed verb's text feature, or the verb as a one-hot. Prints one JSON object.

    python -m benchmarks.diagnostics.stvg_when_text --corpus DIR --export E [--cache C] [--epochs 30]

Per query, the linked tube that follows the referred object (found with the truth: the spatial half given); per
frame of it, its unit region feature r and its change from the tube's rest (r - the tube's median: fsm.when's
visual input, tubes/activity.py's rest). A scorer `<MLP([r, r - rest]), g(text)>` is trained on the train split
(binary cross-entropy: inside the query's span or not) and its best segment (tubes.activity.best_segment) scored
by m_tIoU on the test split, for three text inputs g reads:
- `words`: the sentence's word features (the export's text tower), attention-pooled by a learnt weight;
- `verb_text`: the parsed verb (finetune/query_parse.py) encoded alone by the export's text tower;
- `verb_onehot`: the parsed verb as a one-hot over the train split's verbs (what fsm.when's hashed embedding is).
Beside them, the parameter-free activity span on the same tube (tubes/activity.py). A diagnostic, never a method:
it reads the truth. The figures: docs/results/stvg.md.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from common import cli


def _rows(feats, corpus: str, split: str, model, text: str, verbs: list[str]):
    from benchmarks.diagnostics.stvg_when_sources import queries_on_truth_tubes
    from finetune.query_parse import parser_of
    from tubes.activity import _rows as tube_rows

    parse = parser_of("rules")
    out = []
    for q, vt, fr, which in queries_on_truth_tubes(feats, corpus, split):
        p, idx = tube_rows(vt.tubes[which], fr)
        r = np.asarray(vt.regions[p, idx], np.float32)
        r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        rest = np.median(r, 0)
        rest /= max(np.linalg.norm(rest), 1e-12)
        verb = parse(q["caption"]).action or ""
        if text == "verb_onehot":
            w = torch.zeros(1, len(verbs) + 1)
            w[0, verbs.index(verb) if verb in verbs else len(verbs)] = 1.0
        else:
            with torch.no_grad():
                _, words, mask = model.encode_text(model.tokenize([verb if text == "verb_text" else q["caption"]]))
            w = words[0][mask[0]].float()
        inside = (fr[p] >= q["tube_start_frame"]) & (fr[p] < q["tube_end_frame"])
        out.append((torch.from_numpy(np.c_[r, r - rest]), w, torch.from_numpy(inside.astype(np.float32)), fr, p,
                    (q["tube_start_frame"], q["tube_end_frame"]), 1.0 - r @ rest))
    return out


def _tiou(frames, p, scores, truth) -> float:
    from tubes.activity import best_segment, native_span, standardise

    full = np.interp(np.arange(len(frames)), p, scores)
    a, b = native_span(frames, *best_segment(standardise(full)))
    return max(0, min(b, truth[1]) - max(a, truth[0])) / (max(b, truth[1]) - min(a, truth[0]))


def learnt(train, test, epochs: int, seed: int = 0) -> float:
    """m_tIoU (percent) on `test` of the scorer trained on `train` for `epochs` passes (batches of 8 queries)."""
    torch.manual_seed(seed)
    dv, dt = train[0][0].shape[1], train[0][1].shape[1]
    vis = torch.nn.Sequential(torch.nn.Linear(dv, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    txt, att = torch.nn.Linear(dt, 64), torch.nn.Linear(dt, 1)
    bias = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([*vis.parameters(), *txt.parameters(), *att.parameters(), bias], 3e-3, weight_decay=1e-4)

    def score(x, w):
        a = torch.softmax(att(w)[:, 0], 0)          # which words matter (the verb), learnt
        return vis(x) @ txt((a[:, None] * w).sum(0)) / 8 + bias

    for ep in range(epochs):
        perm = np.random.default_rng(seed + ep).permutation(len(train))
        for i in range(0, len(perm), 8):
            loss = sum(F.binary_cross_entropy_with_logits(score(train[j][0], train[j][1]), train[j][2])
                       for j in perm[i:i + 8]) / len(perm[i:i + 8])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return round(100 * float(np.mean([_tiou(fr, p, score(x, w).numpy(), t) for x, w, _, fr, p, t, _ in test])), 2)


def main(argv=None) -> int:
    from benchmarks.diagnostics.stvg_when_sources import _features, _truth, arguments, check_inputs
    from common.errors import UserError
    from pretrain.export_ref import Export

    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    a = p.parse_args(argv)
    if a.epochs < 1:
        raise UserError("--epochs must be >= 1")
    check_inputs(a, "train")
    corpus = os.path.abspath(a.corpus)
    feats = _features(corpus, os.path.abspath(a.export), a.cache and os.path.abspath(a.cache), a.tubes)
    model = Export.of(os.path.abspath(a.export)).load_model().eval()
    verbs = sorted({q["verb"] for q in _truth(corpus, "train")[1].values()})
    out = {"benchmark": "stvg_when_text", "corpus": a.corpus, "export": a.export, "epochs": a.epochs,
           "m_tIoU": {}}
    for text in ("words", "verb_text", "verb_onehot"):
        train = _rows(feats["train"], corpus, "train", model, text, verbs)
        test = _rows(feats["test"], corpus, "test", model, text, verbs)
        if text == "words":
            out["queries"] = {"train": len(train), "test": len(test)}
            out["m_tIoU"]["activity"] = round(100 * float(np.mean([_tiou(fr, p, act, t)
                                                                   for *_, fr, p, t, act in test])), 2)
        out["m_tIoU"][text] = learnt(train, test, a.epochs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
