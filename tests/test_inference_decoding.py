"""Decoding switches of temporal inference (grounding/inference.py): where a frame's scores come from
(inference.scores) and the one-run-per-description decoding (inference.decode=once), on hand-made numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.inference import InferenceConfig, label_frames, segment_once


def test_once_decoding_changes_only_the_stray_frames():
    # A on frames 0-3, B on 4-8; frame 1 flips to B and frame 6 to A: per-frame decoding keeps both flips,
    # one run per description removes them and keeps the boundary
    s = np.array([[2, 0], [0, 1], [2, 0], [2, 0], [0, 2], [0, 2], [3, 0], [0, 2], [0, 2]], dtype=float)
    frame, _ = label_frames(s, InferenceConfig(normalize="none", tau=-np.inf))
    once, best = label_frames(s, InferenceConfig(normalize="none", tau=-np.inf, decode="once"))
    assert frame.tolist() == [0, 1, 0, 0, 1, 1, 0, 1, 1]
    assert once.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert best.tolist() == [2, 0, 2, 2, 2, 2, 0, 2, 2]        # the score of the run's description
    # a sequence that already is one run per description is left as it is, in any order of the runs
    clean = s[[4, 5, 7, 0, 2, 3]]
    assert segment_once(clean).tolist() == [1, 1, 1, 0, 0, 0]
    # a description that wins nowhere gets no run; tau still marks background inside a run
    three = np.hstack([s, np.full((9, 1), -5.0)])
    assert 2 not in segment_once(three).tolist()
    bg, _ = label_frames(s, InferenceConfig(normalize="none", tau=1.0, decode="once"))
    assert bg.tolist() == [0, -1, 0, 0, 1, 1, -1, 1, 1]
    # pools over once_max_pool fall back to per-frame decoding
    wide, _ = label_frames(s, InferenceConfig(normalize="none", tau=-np.inf, decode="once", once_max_pool=1))
    assert wide.tolist() == frame.tolist()
    with pytest.raises(Exception, match="decode"):
        InferenceConfig(decode="viterbi").validate()


def test_word_region_frame_scores_switch():
    """inference.scores: word_region is the word-region score of each frame's regions (by hand from the
    encoders), both is the sum of the per-description standardised global and word-region scores."""
    from grounding.inference import normalize_scores, temporal_scores
    from pretrain import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                    frames_selected=2, max_words=6)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pool = ["cut the red cube", "stir the blue bowl"]
    with torch.no_grad():
        _, regions, _ = model.encode_frames(model.preprocess_frames(torch.from_numpy(frames)[None]))
        _, words, mask = model.encode_text(model.tokenize(pool))
    want = np.zeros((3, 2))
    for f in range(3):
        for q in range(2):
            k = int(mask[q].sum())
            want[f, q] = (words[q, :k] @ regions[0, f].t()).amax(-1).mean().item()
    got = temporal_scores(model, frames, pool, batch=2, source="word_region")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    glob = temporal_scores(model, frames, pool)
    np.testing.assert_allclose(temporal_scores(model, frames, pool, source="both"),
                               normalize_scores(glob, "query") + normalize_scores(want, "query"), rtol=1e-3, atol=1e-4)
    with pytest.raises(Exception, match="scores"):
        InferenceConfig(scores="local").validate()


def test_once_decoding_is_the_best_contiguous_labelling_of_every_small_case():
    """Against brute force over every labelling of a few frames in which each description's frames are contiguous."""
    import itertools

    import numpy as np

    from grounding.inference import segment_once

    def runs_ok(labels):
        seen, prev = set(), None
        for x in labels:
            if x != prev and x in seen:
                return False
            seen.add(x)
            prev = x
        return True

    rng = np.random.default_rng(0)
    for n, p in [(1, 2), (4, 2), (5, 3), (6, 3), (6, 4)]:
        for _ in range(5):
            scores = rng.normal(size=(n, p))
            best = max(scores[np.arange(n), list(lab)].sum()
                       for lab in itertools.product(range(p), repeat=n) if runs_ok(lab))
            got = segment_once(scores)
            assert runs_ok(list(got))
            assert np.isclose(scores[np.arange(n), got].sum(), best)
