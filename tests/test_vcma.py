"""The VCMA head (finetune/heads/vcma.py, docs/vcma.md): Eqs. 6, 7, 10-11 on hand cases, gathered negatives equal
to one process, a causal relation decoder, EM steps that move only their own network under the real DeepSpeed
engine. The VCMA finetune under Ray (writes the evaluator's output, resumes, EM phases continue across the resume)
and the parser on a written truth/parses.json are in tests/test_finetune_stvg.py, on its module's tiny corpus,
export and feature cache (no second corpus)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from finetune.heads.vcma import VcmaConfig
from finetune.heads import vcma as V
from finetune.heads.base import TextBatch, TrainBatch, VideoBatch
from finetune.heads.stvg import TubeGeometry
from two_ranks import one_process, share, two_ranks


# --- Eq. 6 and Eq. 7 ------------------------------------------------------------------------------------------------
def test_eq6_spatial_softmax_over_a_frames_regions():
    phrases = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])                       # (B=1, E=2, D=2)
    regions = torch.tensor([[[[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]],          # frame 0: 3 regions, the last invalid
                             [[5.0, 5.0], [1.0, 1.0], [1.0, 1.0]]]])        # frame 1: no valid region
    mask = torch.tensor([[[True, True, False], [False, False, False]]])
    z, s = V.spatial_assignment(phrases, regions, mask)
    e = math.exp
    # phrase 0: scores (1, 2) over the two valid regions; phrase 1: (2, 0)
    assert z[0, 0, 0].tolist() == pytest.approx([e(1) / (e(1) + e(2)), e(2) / (e(1) + e(2)), 0.0])
    assert z[0, 1, 0].tolist() == pytest.approx([e(2) / (e(2) + 1), 1 / (e(2) + 1), 0.0])
    assert z[0, :, 1].abs().sum() == 0                                      # a frame without regions assigns nothing
    assert s[0, 1, 0, 0] == 2.0


def test_eq7_gaussian_temporal_assignment():
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    pos = V.positions(mask)
    assert pos[0].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert pos[1, :2].tolist() == pytest.approx([0.25, 0.75])                # t / T of the video's own frames
    c, s = torch.tensor([0.5, 0.25]), torch.tensor([0.25, 0.1])
    z = V.gaussian_assignment(c, s, pos)
    hand = lambda t, c, s: math.exp(-(t - c) ** 2 / (2 * s * s)) / math.sqrt(2 * math.pi * s)  # noqa: E731
    assert z[0].tolist() == pytest.approx([hand(t, 0.5, 0.25) for t in (0.125, 0.375, 0.625, 0.875)])
    assert z[1, :2].tolist() == pytest.approx([hand(0.25, 0.25, 0.1), hand(0.75, 0.25, 0.1)])


# --- Eqs. 10-11 -----------------------------------------------------------------------------------------------------
def test_eq10_eq11_against_a_hand_computation():
    # Q = 2 sentences (sentence 1 has one phrase), V = 2 videos, E = 2, T = 2 frames, N = 2 regions
    s = torch.tensor([[[[[1.0, 3.0], [0.5, 0.0]], [[2.0, 1.0], [4.0, 0.0]]],
                       [[[0.0, 1.0], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]],
                      [[[[0.2, 0.1], [0.0, 0.3]], [[1.0, 0.0], [0.0, 2.0]]],
                       [[[9.0, 9.0], [9.0, 9.0]], [[9.0, 9.0], [9.0, 9.0]]]]])  # (Q, E, V, T, N)
    rmask = torch.tensor([[[True, True], [True, True]], [[True, True], [True, False]]])   # video 1 frame 1: 1 region
    emask = torch.tensor([[True, True], [True, False]])
    fmask = torch.ones(2, 2, dtype=torch.bool)
    zt = torch.tensor([[[0.5, 1.0], [1.0, 0.25]], [[2.0, 0.0], [0.5, 0.5]]])            # (Q, V, T)
    # max over valid regions, per (q, e, v, t)
    best = {(0, 0, 0, 0): 3, (0, 0, 0, 1): 0.5, (0, 0, 1, 0): 2, (0, 0, 1, 1): 4,
            (0, 1, 0, 0): 1, (0, 1, 0, 1): 2, (0, 1, 1, 0): 1, (0, 1, 1, 1): 1,
            (1, 0, 0, 0): 0.2, (1, 0, 0, 1): 0.3, (1, 0, 1, 0): 1, (1, 0, 1, 1): 0}
    phrases = {0: (0, 1), 1: (0,)}
    literal = [[sum(zt[q, v, t].item() * sum(best[q, e, v, t] for e in phrases[q]) for t in range(2))
                for v in range(2)] for q in range(2)]
    got = V.match_scores(s, rmask, zt, emask, fmask, normalise=False)
    assert got.tolist() == [pytest.approx(r) for r in literal]
    normal = [[sum(zt[q, v, t].item() / zt[q, v].sum().item() * sum(best[q, e, v, t] for e in phrases[q])
                   / len(phrases[q]) for t in range(2)) for v in range(2)] for q in range(2)]
    assert V.match_scores(s, rmask, zt, emask, fmask, normalise=True).tolist() == [pytest.approx(r) for r in normal]
    tau = 0.5
    hand = sum(-math.log(math.exp(literal[i][i] / tau) / sum(math.exp(literal[i][j] / tau) for j in range(2)))
               for i in range(2)) / 2
    assert V.contrastive_loss(got, tau, torch.arange(2)).item() == pytest.approx(hand, rel=1e-5)
    # a column that is the same video under another row is no negative
    same = torch.tensor([[True, True], [True, True]])
    assert V.contrastive_loss(got, tau, torch.arange(2), same).item() == pytest.approx(0.0, abs=1e-6)


def _tiny_cfg(**kw) -> VcmaConfig:
    return VcmaConfig(dim=16, blocks=1, heads=2, dropout=0.0, vocab=64, **kw)


def _contrastive_on(rank, world, regions, frames, phrases):
    """Rank `rank`'s Eq. 11 on its rows; its videos are one frame shorter on rank 1 (the gather pads them)."""
    torch.manual_seed(0)
    head = V.VcmaHead(8, _tiny_cfg(prior=5.0))
    r, f, w = share(regions, rank, world), share(frames, rank, world), share(phrases, rank, world)
    fmask = torch.ones(r.shape[:2], dtype=torch.bool)
    if world == 1:
        fmask[2:, -1] = False
    else:
        r, f, fmask = (r[:, :-1], f[:, :-1], fmask[:, :-1]) if rank == 1 else (r, f, fmask)
    rmask = fmask[..., None].expand(*r.shape[:3]).clone()
    rmask[:, :, -1] = False
    # the encoded features stand in for the raw ones too (the prior's cosine needs only equal widths)
    a = {"regions": r, "frames": f, "q_text": w, "ph": {"emask": torch.tensor([[True, True]] * len(w)), "ent": w}}
    return head._contrastive(VideoBatch(f, fmask, r, rmask), a, None)


def test_contrastive_negatives_from_all_ranks_equal_one_process():
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(4, 5, 3, 16, generator=g), torch.randn(4, 5, 16, generator=g),
              torch.randn(4, 2, 16, generator=g)]
    loss, grads = two_ranks(_contrastive_on, params)
    ref_loss, ref_grads = one_process(_contrastive_on, params)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads, ref_grads, atol=1e-5, rtol=1e-4)
    assert grads.abs().sum() > 0


# --- Eq. 15 is causal -----------------------------------------------------------------------------------------------
def test_relation_decoder_loss_is_causal():
    torch.manual_seed(0)
    rec = V.Reconstructor(16, 2, 0.0, 2, 64).eval()
    memory, fmask = torch.randn(1, 6, 16), torch.ones(1, 6, dtype=torch.bool)
    words = torch.tensor([[5, 9, 13, 17]])
    later = words.clone()
    later[0, 2] = 40
    a, b = rec.token_nll(memory, fmask, words), rec.token_nll(memory, fmask, later)
    torch.testing.assert_close(a[0, :2], b[0, :2])                # words before the change: the same loss
    assert (a[0, 2:] - b[0, 2:]).abs().min() > 1e-6                # the changed word and the one after it differ
    earlier = words.clone()
    earlier[0, 0] = 40
    assert (rec.token_nll(memory, fmask, earlier)[0, 1:] - a[0, 1:]).abs().min() > 1e-6


# --- EM under the DeepSpeed engine ----------------------------------------------------------------------------------
def _batch(b=4, t=8, n=4, d=8, k=10):
    g = torch.Generator().manual_seed(0)
    regions = torch.nn.functional.normalize(torch.randn(b, t, n, d, generator=g), dim=-1)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = False
    rmask = mask[..., None].expand(b, t, n).clone()
    rmask[:, :, -1] = False
    ids = torch.arange(n).expand(b, t, n).clone().masked_fill(~rmask, -1)
    boxes = torch.rand(b, t, n, 4, generator=g) * 50
    boxes[..., 2:] += boxes[..., :2] + 1
    geo = TubeGeometry(boxes, torch.rand(b, t, n, generator=g), torch.arange(t).expand(b, t),
                       torch.arange(t).expand(b, t) / 5.0, ids, torch.ones(b, n, dtype=torch.bool),
                       torch.full((b,), 5.0), torch.tensor([[100.0, 100.0]] * b))
    sents = ["the red cube left of the blue bowl is cut", "what green thing is stirred?", "which ball is crushed?",
             "the cup below the purple ball is poured"][:b]
    spans = [[(m.start(), m.end()) for m in re.finditer(r"\w+", s)][:k] for s in sents]
    wmask = torch.zeros(b, k, dtype=torch.bool)
    for i, sp in enumerate(spans):
        wmask[i, :len(sp)] = True
    text = TextBatch(torch.randn(b, d, generator=g), torch.randn(b, k, d, generator=g), wmask, sents, spans)
    return TrainBatch(VideoBatch(torch.randn(b, t, d, generator=g), mask, regions, rmask, geo), text,
                      groups=torch.arange(b))


@pytest.mark.parametrize("when", [False, True])
def test_e_and_m_steps_change_only_their_own_parameters(tmp_path, when):
    """EM under the engine; with vcma.when its weak when-score (its own part, on the export's regions) learns in
    both phases and the phase's frozen network stays frozen."""
    from finetune.train import FinetuneModule
    from trainer.engine import build_engine, init_distributed
    from trainer.settings import TrainSettings

    torch.manual_seed(0)
    head = V.VcmaHead(8, _tiny_cfg(e_steps=1, m_steps=1, when=when, when_dim=8, when_vocab=64))
    module = FinetuneModule(head)
    init_distributed(single=True)
    s = TrainSettings(run=str(tmp_path), max_steps=3, micro_batch=4, deepspeed="configs/deepspeed/zero0.json",
                      lr=1e-2, weight_decay=0.1, precision="fp32")
    engine, _ = build_engine(module, s, 1)
    batch = _batch()
    groups = {"phi": head.phi_parameters(), "theta": head.theta_parameters(),
              "encoder": list(head.encoder.parameters())}
    if when:
        groups["when"] = list(head.when_score.parameters())
    moved_by = {}
    for step in range(3):                       # E, M, E: the third checks phi again after theta's Adam state
        before = {k: [p.detach().clone() for p in ps] for k, ps in groups.items()}
        out = engine({"batch": batch, "step": step})
        engine.backward(out["loss"])
        engine.step()
        moved_by[step] = {k: any(not torch.equal(a, p.detach()) for a, p in zip(before[k], ps))
                          for k, ps in groups.items()}
        frozen = "theta" if step % 2 == 0 else "phi"
        assert all(torch.equal(a, p.detach()) for a, p in zip(before[frozen], groups[frozen])), (step, frozen)
    also = {"when": True} if when else {}
    assert moved_by == {0: {"phi": True, "theta": False, "encoder": True, **also},
                        1: {"phi": False, "theta": True, "encoder": True, **also},
                        2: {"phi": True, "theta": False, "encoder": True, **also}}
    if when:
        assert {k for k in out if k.startswith("when_")} == {"when_mil", "when_margin", "when_swap_margin"}
    assert [head.phase_of(i) for i in range(4)] == ["E", "M", "E", "M"]
    assert V.VcmaHead(8, _tiny_cfg(e_steps=2, m_steps=3)).phase_of(4) == "M"
    assert {V.VcmaHead(8, _tiny_cfg(losses=x)).phase_of(i) for x, i in
            (("contrastive", 1), ("reconstruction", 0))} == {"E", "M"}


def test_tube_output_is_a_box_per_frame_of_the_target_phrase():
    torch.manual_seed(0)
    head = V.VcmaHead(8, _tiny_cfg()).eval()
    batch = _batch()
    with torch.no_grad():
        out = head.tube_output(batch.video, batch.text)
        zt, region = head._combined(batch.video, batch.text)
    assert out.boxes.shape == (4, 8, 4) and out.frame_scores.shape == (4, 8)
    best = region.masked_fill(~batch.video.region_mask, -1).argmax(-1)
    torch.testing.assert_close(out.boxes[0, 3], batch.video.geometry.boxes[0, 3, best[0, 3]])
    tube = V.VcmaHead(8, _tiny_cfg(box="tube")).eval()
    with torch.no_grad():
        assert tube.tube_output(batch.video, batch.text).region_scores.shape == (4, 8, 4)


@pytest.mark.parametrize("override,key", [("vcma.beta=1.5", "vcma.beta"), ("vcma.dim=30", "vcma.dim"),
                                          ("vcma.losses=rec", "vcma.losses"), ("vcma.temperature=0", "vcma.temperature"),
                                          ("vcma.e_steps=0", "vcma.e_steps"),
                                          ("deepspeed=configs/deepspeed/zero2.json", "zero2.json")])
def test_impossible_vcma_settings_are_one_config_error(override, key):
    from common import config as C
    from finetune import config as FC

    with pytest.raises(C.ConfigError) as e:   # the pure checks at load, the ZeRO stage with the run's first reads
        FC.check_inputs(FC.load(None, ["checkpoint=x", "dataset.kind=synthetic_stvg", "dataset.root=y", "head=vcma",
                                       override]))
    assert key in str(e.value) and "\n" not in str(e.value)



# --- phrases parsed at batching time -------------------------------------------------------------------------------
def _per_step_phrases(cfg: VcmaConfig, text: TextBatch) -> dict:
    """The reference: VcmaHead.phrases as it was before parsing moved to batching time (a loop over the queries at
    every step, each phrase's feature a words[rows].mean(0))."""
    import torch.nn.functional as F

    from finetune.query_parse import parser_of

    parse = parser_of(cfg.parser, cfg.spacy_model)
    b, dev = text.words.shape[0], text.words.device
    e_max, r_max, l_max = cfg.max_entities, cfg.max_relations, cfg.max_relation_words
    d_in = text.words.shape[-1]
    words = F.normalize(text.words, dim=-1)
    ent = torch.zeros(b, e_max, d_in, device=dev)
    rel = torch.zeros(b, r_max, d_in, device=dev)
    emask = torch.zeros(b, e_max, dtype=torch.bool, device=dev)
    rmask = torch.zeros(b, r_max, dtype=torch.bool, device=dev)
    subj = torch.zeros(b, r_max, dtype=torch.long, device=dev)
    obj = torch.full((b, r_max), -1, dtype=torch.long, device=dev)
    tokens = torch.zeros(b, r_max, l_max, dtype=torch.long, device=dev)
    target = torch.zeros(b, dtype=torch.long, device=dev)

    def mean_of(row, start, end):
        spans = text.token_spans[row] if text.token_spans else []
        k = [i for i, (a, z) in enumerate(spans) if a < end and z > start and bool(text.word_mask[row, i])]
        return words[row, k].mean(0) if k else F.normalize(text.sentence[row], dim=-1)

    for row, s in enumerate(text.sentences):
        p = parse(s)
        ents = p.entities[:e_max]
        if not ents:
            ent[row, 0], emask[row, 0] = F.normalize(text.sentence[row], dim=-1), True
            continue
        for i, e in enumerate(ents):
            ent[row, i], emask[row, i] = mean_of(row, e.start, e.end), True
        target[row] = p.target if p.target is not None and p.target < e_max else 0
        kept = [r for r in p.relations if r.subject < e_max and (r.object is None or r.object < e_max)][:r_max]
        for j, r in enumerate(kept):
            rel[row, j], rmask[row, j] = mean_of(row, r.start, r.end), True
            subj[row, j], obj[row, j] = r.subject, -1 if r.object is None else r.object
            ids = V.hashed_ids(r.predicate.split()[:l_max], cfg.vocab)
            tokens[row, j, :len(ids)] = torch.tensor(ids, device=dev)
    return {"ent": ent, "emask": emask, "rel": rel, "rmask": rmask, "subj": subj, "obj": obj,
            "tokens": tokens, "target": target}


VIDSTG_TEST = "/work/shared/benchmarks/vidstg/test_annotations.json"


def _vidstg_sentences(n: int = 12) -> list[str]:
    import json
    import os

    if not os.path.exists(VIDSTG_TEST):
        pytest.skip(f"{VIDSTG_TEST} is not on this machine")
    out = []
    for item in json.load(open(VIDSTG_TEST)):
        out += [c["description"] for c in item["captions"] + item["questions"]]
        if len(out) >= n:
            return out[:n]
    return out


@pytest.mark.parametrize("limits", [{}, {"max_entities": 2, "max_relations": 1, "max_relation_words": 2}])
def test_batch_time_parse_gives_the_per_step_loops_phrases(limits):
    """Real VidSTG captions and questions (and a sentence the parser finds nothing in), word rows cut at K and one
    masked off: the spec's text_prep at batching time, then phrases' tensor work, equals the old per-step loop."""
    from finetune.heads.registry import spec_of

    cfg = _tiny_cfg(**limits)
    sents = _vidstg_sentences() + ["is there?"]
    k, d = 12, 8
    g = torch.Generator().manual_seed(0)
    spans = [[(m.start(), m.end()) for m in re.finditer(r"\w+", s)][:k] for s in sents]
    wmask = torch.zeros(len(sents), k, dtype=torch.bool)
    for i, sp in enumerate(spans):
        wmask[i, :len(sp)] = True
    wmask[0, 1] = False
    prep = spec_of("vcma").text_prep(cfg)
    plain = TextBatch(torch.randn(len(sents), d, generator=g), torch.randn(len(sents), k, d, generator=g), wmask,
                      sents, spans)
    parsed = TextBatch(plain.sentence, plain.words, wmask, sents, spans, prep(sents, spans, wmask)).to("cpu")
    assert parsed.parsed.whole.tolist() == [False] * (len(sents) - 1) + [True]
    assert bool(parsed.parsed.rmask.any())                  # some sentence has a relation to compare
    want = _per_step_phrases(cfg, plain)
    head = V.VcmaHead(d, cfg)
    for text in (parsed, plain):                             # plain: the head parses a hand-built batch itself
        got = head.phrases(text)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    exact = {key: torch.equal(head.phrases(parsed)[key], want[key]) for key in want}
    assert all(exact[key] for key in ("emask", "rmask", "subj", "obj", "tokens", "target")), exact
