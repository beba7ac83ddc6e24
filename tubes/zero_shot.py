"""The zero-shot STVG prediction of an export alone (docs/stvg.md): the span by Sec. 3.5 temporal detection over
the video's query pool, the tube whose region features are most like the query's words. The baselines experiment
(benchmarks/experiments/stvg_baselines.py) scores it; the untrained tube_sim head must pick the same tube
(tests/test_finetune_stvg.py)."""
from __future__ import annotations

import numpy as np
import torch

from grounding.inference import InferenceConfig, label_frames, segments_from_labels


def zero_shot_spans(model, glob: np.ndarray, frame_ids: np.ndarray, sentences: list[str], smooth: int = 1
                    ) -> list[tuple[int, int]]:
    """Sec. 3.5 temporal detection over the video's query pool: each query's longest run of frames."""
    with torch.no_grad():
        tg, _, _ = model.encode_text(model.tokenize(sentences))
    scores = glob @ tg.float().cpu().numpy().T
    labels, best = label_frames(scores, InferenceConfig(normalize="query", tau=0.0, smooth=smooth))
    runs = segments_from_labels(labels, frame_ids.astype(float), 1.0)
    out = []
    for q in range(len(sentences)):
        mine = [(e - s, s, e) for lab, s, e in runs if lab == q]
        if mine:
            _, s, e = max(mine)
            out.append((int(s), int(e)))
        else:  # the query never wins a frame: the frame where it comes closest
            f = int(frame_ids[int(np.argmax(scores[:, q] - scores.max(1)))])
            out.append((f, f + 1))
    return out


def tube_scores(model, vt, sentence: str, span: tuple[int, int]) -> np.ndarray:
    """Mean word-region cosine of each tube over the span's frames where it has a box."""
    with torch.no_grad():
        _, words, mask = model.encode_text(model.tokenize([sentence]))
    w = words[0][mask[0]].float().cpu().numpy()                        # (K, d)
    inside = (vt.proposals.frames >= span[0]) & (vt.proposals.frames < span[1])
    out = []
    for t in vt.tubes:
        pos = np.flatnonzero(inside & (t.index >= 0))
        if not len(pos):
            out.append(-np.inf)
            continue
        feats = vt.regions[pos, t.index[pos]]                            # (P, d)
        out.append(float((feats @ w.T).mean()))
    return np.asarray(out)
