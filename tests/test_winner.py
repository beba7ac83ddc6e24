"""The WINNER head (finetune/heads/winner.py): its equations on hand-worked numbers, the batched chart against one
sentence at a time, and a weak finetune under Ray that writes evaluator output and resumes (the fixtures of
tests/test_finetune_stvg.py: tiny corpus, random export, a few steps). Whether it beats the zero-shot row is for
benchmarks (docs/winner.md)."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch
from test_finetune_stvg import cfg_for, corpus, export, weak_corpus  # noqa: F401  (module fixtures)

from common import config as C
from finetune.config import FinetuneConfig, load
from finetune.heads.winner import WinnerConfig
from finetune.heads.base import TextBatch, VideoBatch
from finetune.heads.winner import (Chart, Merge, WinnerHead, context, inside, interfering, outside, phrase_hinge,
                                   subject_of, word_nce)


def _merge(weight_in, weight_out) -> Merge:
    m = Merge(2, 2)
    with torch.no_grad():
        m.inp.weight.copy_(torch.tensor(weight_in, dtype=torch.float32))
        m.inp.bias.zero_()
        m.out.weight.copy_(torch.tensor(weight_out, dtype=torch.float32))
        m.out.bias.zero_()
    return m


def test_eqs_1_to_4_on_three_words():
    """Leaves w0 = (1, 0), w1 = (0, 1), w2 = (1, 1); w = I; MLP([x, y]) = (x + y)/2 + relu(x0 + y0, x1 - y1).
    (0,1): MLP = (.5, .5) + relu(1, -1) = (1.5, .5), c = w0.w1 = 0.  (1,2): (.5, 1) + relu(1, 0) = (1.5, 1), c = 1.
    Root, split after w0: c = w0.(1.5, 1) + 0 + 1 = 2.5, r = (1.25, .5) + relu(2.5, -1) = (3.75, .5);
    split after w1: c = (1.5, .5).w2 + 0 + 0 = 2, r = (1.25, .75) + relu(2.5, -.5) = (3.75, .75).
    softmax(2.5, 2) = (p, 1 - p), p = 1 / (1 + e^-.5) = .62246: root r = (3.75, .5p + .75(1 - p)), c = 2.5p + 2(1 - p).
    """
    chart = Chart(3)
    merge = _merge([[1, 0, 1, 0], [0, 1, 0, -1]], [[1, 0], [0, 1]])
    leaves = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    feats, scores = (x.detach() for x in inside(chart, leaves, merge, torch.eye(2)))
    at = lambda i, length: chart.offset[length] + i  # noqa: E731
    p = 1 / (1 + math.exp(-0.5))
    expected = {(0, 1): ([1, 0], 0), (1, 1): ([0, 1], 0), (2, 1): ([1, 1], 0), (0, 2): ([1.5, 0.5], 0),
                (1, 2): ([1.5, 1.0], 1), (0, 3): ([3.75, 0.5 * p + 0.75 * (1 - p)], 2.5 * p + 2 * (1 - p))}
    for (i, length), (r, c) in expected.items():
        torch.testing.assert_close(feats[0, at(i, length)], torch.tensor(r, dtype=torch.float32))
        assert float(scores[0, at(i, length)]) == pytest.approx(c, abs=1e-6)
    assert chart.p == 6 and p == pytest.approx(0.62246, abs=1e-5)


def test_interfering_node_filter_and_context():
    """Two words and their phrase; correlations with 3 tubes (a 4th, absent tube holds a huge value that must not
    count): leaf0 (1, 0, 0), leaf1 (0, 0, 1), root (1, .2, 0). Eq. 6's mean (2/3, .2/3, 1/3), |mean| = .7483.
    Eq. 7 raw cosines: leaf0 .891, leaf1 .445, root .891 -> with delta = .5 only leaf1 interferes.
    Centred over the tubes (our default) the mean is (.311, -.289, -.022): leaf1's cosine is -.06 < 0."""
    chart = Chart(2)
    a = torch.tensor([[[1.0, 0.0, 0.0, 50.0], [0.0, 0.0, 1.0, 50.0], [1.0, 0.2, 0.0, 50.0]]])   # leaf0, leaf1, root
    tube_mask = torch.tensor([[True, True, True, False]])
    valid = chart.valid(torch.tensor([2]))
    raw = interfering(a, valid, tube_mask, 0.5, center=False)
    assert raw.tolist() == [[False, True, False]]
    assert interfering(a, valid, tube_mask, 0.0, center=True).tolist() == [[False, True, False]]
    assert interfering(a, valid, tube_mask, 0.9, center=False).tolist() == [[True, True, True]]
    assert interfering(a, chart.valid(torch.tensor([1])), tube_mask, 0.5, False).tolist() == [[False, False, False]]
    # Eq. 8's context: the related nodes (the leaves' ancestor, the root's descendants) that do not interfere
    ctx = context(chart, a, valid & ~raw)
    torch.testing.assert_close(ctx[0, 0], a[0, 2])          # leaf0 <- root
    torch.testing.assert_close(ctx[0, 1], a[0, 2])          # leaf1 <- root
    torch.testing.assert_close(ctx[0, 2], a[0, 0])          # root <- leaf0 only (leaf1 interferes)
    assert not bool(chart.related[0, 1])                    # siblings are not related


def test_eq18_word_nce_on_hand_numbers():
    """Two sentences of one word; s[q, v] = [[.9, .1], [.3, .5]]: -log e^.9/(e^.9 + e^.1) = log(1 + e^-.8) = .3711,
    log(1 + e^-.2) = .5981, mean .4846; at temperature .5 the gaps double."""
    s = torch.tensor([[[0.9], [0.1]], [[0.3], [0.5]]])
    allowed = torch.ones(2, 2, dtype=torch.bool)
    ok = torch.ones(2, 1)
    assert float(word_nce(s, allowed, ok, 1.0)) == pytest.approx(0.48461, abs=1e-4)
    assert float(word_nce(s, allowed, ok, 0.5)) == pytest.approx(
        (math.log1p(math.exp(-1.6)) + math.log1p(math.exp(-0.4))) / 2, abs=1e-5)
    # a video of the same group is no negative: with it disallowed only the own video is left (loss 0)
    only_own = torch.eye(2, dtype=torch.bool)
    assert float(word_nce(s, only_own, ok, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_eq20_phrase_hinge_on_hand_numbers():
    """One phrase node per sentence, gamma = .5, d[q, v] = [[.8, .6], [.2, .5]].
    q0: pos .8; V' = v1: relu(.6 - .8 + .5) = .3; n' (sentence 1 in video 0) d[1, 0] = .2: relu(-.1) = 0 -> .3.
    q1: pos .5; V' = v0: relu(.2 - .5 + .5) = .2; n' (sentence 0 in video 1) d[0, 1] = .6: relu(.6) = .6 -> .8.
    Mean .55. A negative sentence without the span does not count."""
    d = torch.tensor([[[0.8], [0.6]], [[0.2], [0.5]]])
    negative = ~torch.eye(2, dtype=torch.bool)
    valid = torch.ones(2, 1, dtype=torch.bool)
    assert float(phrase_hinge(d, negative, valid, valid, 0.5)) == pytest.approx(0.55, abs=1e-6)
    valid1 = torch.tensor([[True], [False]])                 # sentence 1 lacks the span: q0's n' term is gone
    assert float(phrase_hinge(d, negative, valid1, valid1, 0.5)) == pytest.approx(0.3, abs=1e-6)


def _random_text(lengths, k, d, gen):
    mask = torch.arange(k)[None] < torch.tensor(lengths)[:, None]
    words = torch.randn(len(lengths), k, d, generator=gen) * mask[..., None]
    return TextBatch(torch.randn(len(lengths), d, generator=gen), words, mask)


def test_batched_tree_equals_one_sentence_at_a_time():
    """inside/outside and the whole SVHU encode over a batch of pairs (sentences of 4, 2 and 3 words, padded to 4,
    each read against another video's tubes) give every span of each sentence what the sentence alone gives."""
    gen = torch.Generator().manual_seed(0)
    d, m = 6, 3
    cfg = C.load(FinetuneConfig, None, ["winner.hidden=5", "winner.delta=-0.2"]).winner
    head = WinnerHead(d, cfg)
    with torch.no_grad():                                    # a non-trivial tree (the MLPs start at the mean)
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    lengths = [4, 2, 3]
    text = _random_text(lengths, 4, d, gen)
    tubes = torch.nn.functional.normalize(torch.randn(2, m, d, generator=gen), dim=-1)
    tube_mask = torch.tensor([[True, True, False], [True, True, True]])
    frames = torch.nn.functional.normalize(torch.randn(2, 10, d, generator=gen), dim=-1)
    seg = head._segments(VideoBatch(frames, torch.arange(10)[None] < torch.tensor([[7], [10]])))
    q_idx, v_idx = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 0])
    batched = head.encode(text, tubes, tube_mask, frames, seg, q_idx, v_idx)
    big = Chart(4)
    for row, (q, v) in enumerate(zip(q_idx.tolist(), v_idx.tolist())):
        n = lengths[q]
        alone = TextBatch(text.sentence[q:q + 1], text.words[q:q + 1, :n], text.word_mask[q:q + 1, :n])
        one = head.encode(alone, tubes[v:v + 1], tube_mask[v:v + 1], frames[v:v + 1], seg[v:v + 1],
                          torch.tensor([0]), torch.tensor([0]))
        small = Chart(n)
        for length in range(1, n + 1):
            for i in range(n - length + 1):
                a, b = big.offset[length] + i, small.offset[length] + i
                torch.testing.assert_close(batched.nodes[row, a], one.nodes[0, b])
                torch.testing.assert_close(batched.cb[row, a], one.cb[0, b])
                torch.testing.assert_close(batched.cu[row, a], one.cu[0, b])
        torch.testing.assert_close(batched.clip_scores[row], one.clip_scores[0])
        torch.testing.assert_close(batched.clip_pick[row], one.clip_pick[0])
        assert not bool(batched.valid[row, big.offset[n] + 1:].any()) if n < 4 else True
    # the outside pass alone on the language tree: the same per sentence too
    leaves = torch.randn(3, 4, d, generator=gen) * text.word_mask[..., None]
    fb, cb = inside(big, leaves, head.merge_b, head.w_b)
    fu, cu = outside(big, torch.tensor(lengths), fb, cb, head.merge_u, head.w_u, head.root)
    for q, n in enumerate(lengths):
        small = Chart(n)
        sb, sc = inside(small, leaves[q:q + 1, :n], head.merge_b, head.w_b)
        su, scu = outside(small, torch.tensor([n]), sb, sc, head.merge_u, head.w_u, head.root)
        for length in range(1, n + 1):
            for i in range(n - length + 1):
                a, b = big.offset[length] + i, small.offset[length] + i
                torch.testing.assert_close(fu[q, a], su[0, b])
                torch.testing.assert_close(cu[q, a], scu[0, b])
        torch.testing.assert_close(fu[q, big.root(torch.tensor([n]))[0]], head.root)   # the root starts there


def test_subject_node_of_a_sentence():
    assert subject_of("the red cube left of the blue cube is cut".split()) == (1, 2)
    assert subject_of("which cube is cut ?".split()) == (1, 1)
    assert subject_of("what red thing is cut ?".split()) == (1, 2)
    assert subject_of("what is cut left of the blue bowl ?".split()) is None


def test_winner_config_refuses_impossible_values():
    for bad, field in (("winner.delta=2", "winner.delta"), ("winner.subject=verb", "winner.subject"),
                       ("winner.temperature=0", "winner.temperature"), ("winner.gamma=-1", "winner.gamma")):
        with pytest.raises(C.ConfigError, match=field):
            load(None, ["checkpoint=x", "head=winner", "dataset.kind=synthetic_stvg",
                                          "dataset.root=y", bad])


# the paper's head, and with the weak when-score (winner.when: every sentence of each batch video as its labels,
# its own learning rate, the span decoded from it along the tube where it peaks)
@pytest.mark.parametrize("variant", [[], ["winner.when=true", "span.rule=when", "span.tube_weight=1"]],
                         ids=["paper", "when"])
def test_winner_finetune_under_ray_writes_evaluator_output_and_resumes(ray_cluster, export, weak_corpus,  # noqa: F811
                                                                       tmp_path, variant):
    from cluster.finetune import run_finetunes

    cache, run = str(tmp_path / "cache"), str(tmp_path / "run")
    args = ["head=winner", "winner.segments=4", *variant]
    first = run_finetunes(cfg_for(export, weak_corpus, cache, run, *args), ray_cluster)
    assert [j.get("error") for j in first["jobs"]] == [None] and first["jobs"][0]["steps"] == 2
    second = run_finetunes(cfg_for(export, weak_corpus, cache, run, *args, "max_steps=4"), ray_cluster)
    job = second["jobs"][0]
    assert job.get("error") is None and job["steps"] == 4
    logs = sorted(glob.glob(os.path.join(job["run"], "logs", "*.jsonl")))
    lines = [[json.loads(x) for x in open(f) if x.strip()] for f in logs]
    assert sorted([x["step"] for x in f] for f in lines) == [[1, 2], [3, 4]]      # resumed after step 2
    assert all("word_nce" in x and "phrase_hinge" in x and "clip_nce" in x for f in lines for x in f)
    if variant:
        assert all("when_mil" in x and "when_swap_margin" in x for f in lines for x in f)
    ev = json.load(open(os.path.join(job["run"], "eval.json")))
    assert ev["benchmark"] == "vidstg" and ev["counts"]["missing_predictions"] == 0
    preds = json.load(open(os.path.join(job["run"], "predictions.json")))
    assert preds and all(p["sted"][0] < p["sted"][1] and len(p["boxes"]) == p["sted"][1] - p["sted"][0]
                         for p in preds.values())
    state = torch.load(os.path.join(job["run"], "head.pt"))
    assert not torch.equal(state["word_proj"], torch.eye(state["word_proj"].shape[0]))   # it trained
    assert any(k.startswith("when_score.") for k in state) == bool(variant)


def test_a_video_without_tubes_neither_positive_nor_negative():
    """A training video with no proposal anywhere (so no tube) must not put its NEG tube scores into the word NCE
    or the phrase hinge (it made them ~3,000 each): they stay of the order of log B."""
    from finetune.heads.base import TrainBatch, VideoBatch
    from finetune.heads.stvg import TubeGeometry

    torch.manual_seed(0)
    b, t, n, m, d, k = 3, 8, 4, 5, 16, 5
    regions, rmask = torch.randn(b, t, n, d), torch.ones(b, t, n, dtype=torch.bool)
    tid, tmask = torch.randint(0, m, (b, t, n)), torch.ones(b, m, dtype=torch.bool)
    tid[1], tmask[1], rmask[1] = -1, False, False
    geo = TubeGeometry(boxes=torch.rand(b, t, n, 4), scores=torch.rand(b, t, n),
                       frame_ids=torch.arange(t)[None].repeat(b, 1), times=torch.arange(t)[None].float().repeat(b, 1),
                       tube_ids=tid, tube_mask=tmask, fps=torch.ones(b), size=torch.full((b, 2), 100.0))
    video = VideoBatch(torch.randn(b, t, d), torch.ones(b, t, dtype=torch.bool), regions, rmask, geo)
    text = TextBatch(torch.randn(b, d), torch.randn(b, k, d), torch.ones(b, k, dtype=torch.bool))
    head = WinnerHead(d, WinnerConfig())
    out = head.loss(TrainBatch(video, text, groups=torch.arange(b)))
    assert torch.isfinite(out["loss"]) and out["word_nce"] < 10 and out["phrase_hinge"] < 10
