"""FSM head units (finetune/heads/fsm.py): hand checks of fusion, gate, Hungarian matching, the anchor decoder,
guided attention, MRCL, span decoding, loss. The finetune under Ray that resumes exactly is in
tests/test_finetune_stvg.py (it reuses that module's corpus, export and feature cache)."""
import math
import os
import subprocess
import sys

import pytest
import torch

from finetune.heads.fsm import FsmConfig
from finetune.heads.base import TextBatch, TrainBatch, VideoBatch
from finetune.heads.fsm import (FsmHead, decode_span, gated_correlation, guided_attention, hungarian, match_query,
                                mrcl, tube_costs, video_fusion)
from finetune.heads.stvg import StvgTargets, TubeGeometry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gated_correlation_ungated_matches_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y = torch.tensor([[[1.0, 0.0]]])
    out = gated_correlation(x, y, torch.tensor([[True]]), None, None, None, None, gate=False)
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    xs = torch.tensor([[a, 1 - a], [1 - a, a]])
    want = xs + torch.tensor([[1.0, 0.0], [1.0, 0.0]]) + x[0]
    assert torch.allclose(out[0], want, atol=1e-6)


def test_video_fusion_hand_and_alpha_identity():
    xg = torch.ones(1, 2, 1, 2)
    xe = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    ye = torch.tensor([[1.0, 1.0]])
    out = video_fusion(xg, xe, ye, torch.zeros(2))
    s = 1 / (1 + math.exp(-2 / math.sqrt(2)))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([s, 0.5]), atol=1e-6)
    head = FsmHead(4, FsmConfig(dim=4))
    assert torch.allclose(torch.tanh(head.gamma) + 1, torch.ones_like(head.gamma))


def test_match_picks_the_right_query():
    tb = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 3)
    boxes = torch.stack([torch.tensor([[0.6, 0.6, 0.9, 0.9]] * 3), tb.clone(), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)])
    logits = torch.zeros(3, 3)
    assert match_query(logits, boxes, tb, torch.ones(3, dtype=torch.bool), FsmConfig()) == 1


def test_hungarian_assignment_differs_from_per_truth_argmin():
    # both truths' cheapest query is 0; the assignment of least total cost gives truth 0 to query 1
    cost = torch.tensor([[1.0, 2.0], [1.5, 10.0], [9.0, 9.0]])
    assert cost.argmin(0).tolist() == [0, 0]
    assert hungarian(cost) == [(1, 0), (0, 1)]


def test_tube_cost_is_eq8_on_hand_numbers():
    from torchvision.ops import sigmoid_focal_loss

    tb = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 2)
    boxes = torch.stack([tb.clone(), torch.tensor([[0.1, 0.1, 0.5, 0.9]] * 2)])   # exact, then twice as tall
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    m = torch.tensor([True, False])            # the truth has a box on frame 0 only
    cfg = FsmConfig(w_cls=0.2, w_l1=1.0, w_giou=1.0)
    got = tube_costs(logits, boxes, tb, m, cfg)
    focal = sigmoid_focal_loss(logits, torch.tensor([[1.0, 0.0]] * 2), reduction="none").mean(-1)
    # query 1 on frame 0: L1 = 0.4, IoU = 0.5 and the enclosing box is its own, so GIoU = 0.5
    want = torch.tensor([0.2 * focal[0], 0.2 * focal[1] + 0.4 + (1 - 0.5)])
    assert torch.allclose(got, want, atol=1e-6)
    assert match_query(logits, boxes, tb, m, cfg) == 0


def test_guided_attention_hand_numbers():
    attn = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    inside = torch.tensor([False, True, True])
    valid = torch.tensor([True, True, True])
    want = -(math.log(1 - 0.2) + math.log(1 - 0.1)) / 2          # query frames 1, 2 attending key frame 0
    assert abs(float(guided_attention(attn, inside, valid)) - want) < 1e-6
    valid[0] = False                                               # a padded key frame is not "outside"
    assert float(guided_attention(attn, inside, valid)) == 0.0


def test_anchor_decoder_shares_weights_and_reads_the_true_box_only():
    torch.manual_seed(0)
    batch = _batch(b=1, t=4, n=3)
    shared = FsmHead(8, FsmConfig(dim=16, queries=2))
    own = FsmHead(8, FsmConfig(dim=16, queries=2, share_decoder=False))
    n_dec = sum(p.numel() for p in shared.decoder.parameters())
    assert sum(p.numel() for p in own.parameters()) == sum(p.numel() for p in shared.parameters()) + n_dec
    video, tg = batch.video, batch.targets
    x, *_ = shared._memory(video, batch.text)
    anchor, on = shared._anchor(video, x, tg.boxes, tg.box_mask)
    assert on[0].tolist() == tg.box_mask[0].tolist()
    (anchor[0, on[0]] * torch.randn(int(on[0].sum()), 16)).sum().backward()   # (a plain sum of a LayerNorm is flat)
    assert shared.q_gt.grad.abs().sum() > 0                         # the anchor stream is q^gt through ...
    assert shared.decoder.cross.in_proj_weight.grad.abs().sum() > 0  # ... the first decoder's own weights
    # region 0 is the true box; the others (IoU 0) are not in the anchor's memory
    with torch.no_grad():
        x2 = x.clone()
        x2[:, :, 1:] += 5.0
        same, _ = shared._anchor(video, x2, tg.boxes, tg.box_mask)
        x2[:, :, 0] += 5.0
        moved, _ = shared._anchor(video, x2, tg.boxes, tg.box_mask)
    assert torch.allclose(same[0, on[0]], anchor[0, on[0]].detach(), atol=1e-5)
    assert not torch.allclose(moved[0, on[0]], anchor[0, on[0]].detach(), atol=1e-3)


def test_mrcl_hand_numbers():
    gt = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0]]])
    got = mrcl(gt, pos, neg, torch.tensor([True]), tau=1.0)
    want = -(1 - math.log(math.exp(1) + math.exp(0)))
    assert abs(float(got) - want) < 1e-6


def test_decode_span_never_reverses():
    torch.manual_seed(0)
    s, e = torch.randn(20, 7), torch.randn(20, 7)
    s[:, 5] += 10                      # start wants late, end wants early
    e[:, 1] += 10
    mask = torch.ones(20, 7, dtype=torch.bool)
    mask[:3, 6:] = False
    span = decode_span(s, e, mask)
    assert (span[:, 1] >= span[:, 0]).all()
    assert (span[:3, 1] < 6).all()


def _batch(b=2, t=6, n=3, d=8):
    g = torch.Generator().manual_seed(1)
    regions = torch.randn(b, t, n, d, generator=g)
    props = torch.tensor([[10.0, 5.0, 60.0, 40.0], [70.0, 0.0, 90.0, 20.0], [0.0, 42.0, 8.0, 50.0]])[:n]
    geo = TubeGeometry(boxes=props.expand(b, t, n, 4).clone(), scores=torch.ones(b, t, n),
                       frame_ids=torch.arange(t)[None].expand(b, t) * 2, times=torch.zeros(b, t),
                       tube_ids=torch.zeros(b, t, n, dtype=torch.long), tube_mask=torch.ones(b, 1, dtype=torch.bool),
                       fps=torch.ones(b), size=torch.tensor([[100.0, 50.0]] * b))
    video = VideoBatch(regions.mean(2), torch.ones(b, t, dtype=torch.bool), regions,
                       torch.ones(b, t, n, dtype=torch.bool), geo)
    text = TextBatch(torch.randn(b, d, generator=g), torch.randn(b, 4, d, generator=g), torch.ones(b, 4, dtype=torch.bool))
    boxes = torch.tensor([10.0, 5.0, 60.0, 40.0]).expand(b, t, 4).clone()
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, 1:4] = True
    tg = StvgTargets(sted=torch.tensor([[2, 8]] * b), boxes=boxes * mask[..., None], box_mask=mask)
    return TrainBatch(video, text, targets=tg)


def test_loss_falls_and_tube_output_shapes():
    torch.manual_seed(0)
    batch = _batch()
    head = FsmHead(8, FsmConfig(dim=16, queries=3))
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    first = None
    for _ in range(80):
        out = head.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["loss"].detach())
    assert float(out["loss"]) < 0.5 * first
    tube = head.tube_output(batch.video, batch.text)
    assert tube.boxes.shape == (2, 6, 4) and (tube.sted[:, 1] > tube.sted[:, 0]).all()


@pytest.mark.parametrize("override, message", [
    ("fsm.queries=0", "fsm.queries must be >= 1"), ("fsm.dim=6", "fsm.dim must be a positive multiple of fsm.heads (4)"),
    ("fsm.tau=0", "fsm.tau must be > 0"), ("fsm.w_sted=-1", "fsm.w_sted must be >= 0"),
    ("fsm.when_vocab=1", "fsm.when_vocab must be >= 3"),
    ("fsm.when=true fsm.when_scope=frame", "fsm.when_scope must be tube or video"),
    ("fsm.when_words=target", "fsm.when_words must be verb (the default) unless fsm.when is true"),
    ("fsm.when=true fsm.when_decode=peak", "fsm.when_decode must be iou or segment"),
    # no such spaCy model (or no spaCy): refused before any work, naming FSM's own setting
    ("fsm.when=true fsm.parser=spacy fsm.spacy_model=en_no_such_model", "fsm.parser=spacy"),
])
def test_impossible_fsm_values_are_one_error_line(tmp_path, override, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("already here")
    out = subprocess.run([sys.executable, "-m", "finetune.train", "--config", "configs/finetune/fsm_synthetic.yaml",
                          f"checkpoint={tmp_path}/none.pt", f"run={run}", *override.split()],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"] and (run / "keep.txt").read_text() == "already here"


def test_frames_beyond_max_frames_share_the_last_gamma():
    cfg = FsmConfig(dim=8, queries=2, max_frames=3)
    head = FsmHead(8, cfg)
    batch = _batch(t=5)   # more frames than gamma entries, as a long test video at prediction
    out = head.tube_output(batch.video, batch.text)
    assert out.boxes.shape[:2] == (2, 5) and bool((out.sted[:, 1] > out.sted[:, 0]).all())


def test_untrained_pointer_points_where_the_pretrained_cosine_does():
    # a region equal to the mean unit word scores cosine 1; with the query-region term zeroed and a large prior
    # weight, the reference box is that region's proposal box (box MLP starts at 0: the box is the reference)
    batch = _batch(b=1, t=2, n=3, d=8)
    words = torch.nn.functional.normalize(batch.text.words, dim=-1)
    q = words.mean(1)
    regions = torch.randn(1, 2, 3, 8, generator=torch.Generator().manual_seed(3))
    regions[0, :, 2] = q[0]                                  # the third proposal matches the sentence's words
    batch.video.regions.copy_(torch.nn.functional.normalize(regions, dim=-1))
    head = FsmHead(8, FsmConfig(dim=8, queries=2, prior_scale=200.0))
    with torch.no_grad():
        head.ptr_q.weight.zero_()
        head.ptr_q.bias.zero_()
    prior = head._prior(batch.video, batch.text)
    per_word = torch.stack([torch.nn.functional.cosine_similarity(batch.video.regions[0], batch.text.words[0, k],
                                                                  dim=-1) for k in range(4)])
    assert torch.allclose(prior[0], per_word.mean(0), atol=1e-5) and bool((prior.argmax(-1) == 2).all())
    boxes = head.tube_output(batch.video, batch.text).boxes
    assert torch.allclose(boxes[0], batch.video.geometry.boxes[0, :, 2], atol=0.05)


def test_pointer_loss_is_cross_entropy_to_the_best_overlapping_proposal():
    batch = _batch(b=1, t=6, n=3, d=8)
    head = FsmHead(8, FsmConfig(dim=8, queries=1, mrcl=False, w_cls=0, w_l1=0, w_giou=0, w_sted=0, w_att=0))
    out = head.loss(batch)
    *_, ptr, _ = head._forward(batch.video, batch.text)
    # the true box is proposal 0's box on frames 1-3, so the target is proposal 0 there
    want = torch.nn.functional.cross_entropy(ptr[0, 0, 1:4], torch.zeros(3, dtype=torch.long))
    assert torch.allclose(out["loss"], want, atol=1e-6) and abs(float(out["pointer"]) - float(want)) < 1e-6
    off = FsmHead(8, FsmConfig(dim=8, queries=1, mrcl=False, w_cls=0, w_l1=0, w_giou=0, w_sted=0, w_att=0,
                               pointer=False))
    assert float(off.loss(batch)["loss"]) == 0.0


def test_pointer_without_reference_boxes_is_refused():
    from common.config import ConfigError
    from finetune.config import load, validate

    with pytest.raises(ConfigError, match="fsm.pointer must be false when fsm.box_ref is false"):
        validate(load("configs/finetune/fsm_synthetic.yaml", ["checkpoint=x", "fsm.box_ref=false"]))
    validate(load("configs/finetune/fsm_synthetic.yaml", ["checkpoint=x", "fsm.box_ref=false", "fsm.pointer=false"]))


def test_pointer_loss_over_all_queries_is_their_mean():
    batch = _batch(b=1, t=6, n=3, d=8)
    cfg = FsmConfig(dim=8, queries=3, mrcl=False, w_cls=0, w_l1=0, w_giou=0, w_sted=0, w_att=0, pointer_queries="all")
    head = FsmHead(8, cfg)
    out = head.loss(batch)
    *_, ptr, _ = head._forward(batch.video, batch.text)
    each = [torch.nn.functional.cross_entropy(ptr[0, k, 1:4], torch.zeros(3, dtype=torch.long)) for k in range(3)]
    assert torch.allclose(out["loss"], torch.stack(each).mean(), atol=1e-6)


def test_proposal_boxes_are_proposals_with_or_without_the_pointer():
    batch = _batch(b=2, t=4, n=3, d=8)
    props = batch.video.geometry.boxes
    for pointer in (True, False):
        out = FsmHead(8, FsmConfig(dim=8, queries=2, pointer=pointer)).tube_output(batch.video, batch.text)
        hit = (out.boxes[:, :, None, :] == props).all(-1).any(-1)
        assert bool(hit.all())
    regressed = FsmHead(8, FsmConfig(dim=8, queries=2, proposal_boxes=False)).tube_output(batch.video, batch.text)
    assert not bool((regressed.boxes[:, :, None, :] == props).all(-1).any(-1).all())


def _plain_and(**switch):
    """(the plain head, the head with `switch`), both built under seed 0 (dim 16, 2 queries)."""
    torch.manual_seed(0)
    plain = FsmHead(8, FsmConfig(dim=16, queries=2))
    torch.manual_seed(0)
    return plain, FsmHead(8, FsmConfig(dim=16, queries=2, **switch))


def _added(plain, head) -> set:
    """The parameters `head` has beyond `plain`'s, after checking every shared one starts equal (a switch's weights
    come from forked generators)."""
    ps, qs = dict(plain.named_parameters()), dict(head.named_parameters())
    assert all(torch.equal(ps[k], qs[k]) for k in ps)
    return set(qs) - set(ps)


def _trained_spans(heads: dict, steps: int):
    """Each head of {name: (head, batch_of)} trained with Adam for `steps` on batch_of(step % 4), then its predicted
    spans [batch_of(i)'s sted rows for i = 0..3]; and each head's last loss parts."""
    spans, last = {}, {}
    for name, (head, batch_of) in heads.items():
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        for step in range(steps):
            out = head.loss(batch_of(step % 4))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            spans[name] = [head.tube_output(batch_of(i).video, batch_of(i).text).sted.tolist() for i in range(4)]
        last[name] = out
    return spans, last


def test_activity_switch_starts_as_without_it_and_learns_when_from_the_activity():
    """fsm.activity: the other weights start as the plain head's (forked generators); the start/end heads see the
    activity of what the pointer picks, so a head trained on batches whose span is where the true object is acted
    on (and nothing else says when) places its span there; without the switch it cannot."""
    plain, act = _plain_and(activity=True)
    assert _added(plain, act) == {"act_token.weight", "act_token.bias", "act_time.weight", "act_time.bias"}
    batch = _batch()
    with pytest.raises(ValueError, match="no region activity"):
        act.loss(batch)

    def with_span(i):
        """A batch whose true span is frames [i, i + 2) of 6, told only by the true proposal's activity."""
        b = _batch()
        a = torch.zeros(2, 6, 3)
        a[:, i:i + 2, 0] = 3.0
        b.video.geometry.activity = a
        mask = torch.zeros(2, 6, dtype=torch.bool)
        mask[:, i:i + 2] = True
        b.targets.box_mask = mask
        b.targets.boxes = torch.tensor([10.0, 5.0, 60.0, 40.0]).expand(2, 6, 4) * mask[..., None]
        b.targets.sted = torch.tensor([[2 * i, 2 * (i + 2)]] * 2)
        return b

    spans, _ = _trained_spans({"plain": (plain, with_span), "activity": (act, with_span)}, 200)
    spans = {k: [s[0] for s in v] for k, v in spans.items()}

    def tiou(got, i):
        inter = max(0, min(got[1], 2 * i + 4) - max(got[0], 2 * i))
        return inter / (max(got[1], 2 * i + 4) - min(got[0], 2 * i))

    found = {k: [tiou(s, i) for i, s in enumerate(v)] for k, v in spans.items()}
    mean = {k: sum(v) / len(v) for k, v in found.items()}
    assert min(found["activity"]) >= 0.5 and mean["activity"] > mean["plain"] + 0.2


def _two_changes(i, prep=None):
    """Two rows of 8 frames, three objects at rest on tubes 0-2 (their own directions e0, e3, e4); object 0 changes
    its look toward e1 ("cut") at frames [i, i + 2) and toward e2 ("stirred") at [i + 3, i + 5), equally strongly
    (the same activity). Row 0's sentence names the cut, row 1's the stirring, by their verb only: both rows' word
    features are the same (as the export's contextual words hardly tell verbs apart), so the rows' inputs differ
    only in the sentences' text. Each row's truth is its change's frames."""
    e = torch.eye(8)
    b = _batch(t=8)
    r = torch.zeros(2, 8, 3, 8)
    r[..., 0, 0] = r[..., 1, 3] = r[..., 2, 4] = 1.0
    b.video.geometry.tube_ids = torch.arange(3).expand(2, 8, 3).clone()
    b.video.geometry.tube_mask = torch.ones(2, 3, dtype=torch.bool)
    r[:, i:i + 2, 0] = (e[0] + 2 * e[1]) / 5 ** 0.5
    r[:, i + 3:i + 5, 0] = (e[0] + 2 * e[2]) / 5 ** 0.5
    b.video.regions = r
    b.video.frames = r.mean(2)
    act = torch.zeros(2, 8, 3)
    act[:, i:i + 2, 0] = act[:, i + 3:i + 5, 0] = 3.0
    b.video.geometry.activity = act
    return _two_rows(b, ["the red cube is cut", "the red cube is stirred"], prep, i,
                     torch.tensor([10.0, 5.0, 60.0, 40.0]).expand(2, 8, 4))


def _two_rows(b, sentences, prep, i, boxes):
    """b with the two rows' sentences over equal word features (parsed by prep when given), and their truths: row
    0 boxes[0] at frames [i, i + 2), row 1 boxes[1] at [i + 3, i + 5) (feature frames; native = 2x)."""
    words = torch.zeros(2, 4, 8)
    words[:, :, 0] = 1.0
    b.text = TextBatch(words.mean(1), words, torch.ones(2, 4, dtype=torch.bool), sentences=sentences,
                       parsed=None if prep is None else prep(sentences, None, torch.ones(2, 4, dtype=torch.bool)))
    lo = torch.tensor([i, i + 3])
    mask = (torch.arange(8)[None] >= lo[:, None]) & (torch.arange(8)[None] < lo[:, None] + 2)
    b.targets.box_mask = mask
    b.targets.boxes = boxes * mask[..., None]
    b.targets.sted = torch.stack([2 * lo, 2 * (lo + 2)], 1)
    return b


def _two_changes_tiou(spans):
    """Mean tIoU of [row 0, row 1] spans predicted for _two_changes(i), i = 0..3."""
    def tiou(got, lo):
        inter = max(0, min(got[1], 2 * lo + 4) - max(got[0], 2 * lo))
        return inter / (max(got[1], 2 * lo + 4) - min(got[0], 2 * lo))

    got = [tiou(s[r], i + 3 * r) for i, s in enumerate(spans) for r in (0, 1)]
    return sum(got) / len(got)


def test_tube_rest_delta_is_the_activity_as_a_vector():
    """tube_rest_delta: half its squared norm is tubes.activity's 1 - cos to the tube's median (the same rest);
    regions on no tube get 0; a tube absent from a row is no one's rest."""
    import numpy as np

    from grounding.tube import Tube
    from finetune.heads.stvg import tube_rest_delta
    from tubes.activity import tube_activity

    g = torch.Generator().manual_seed(3)
    regions = torch.randn(1, 7, 3, 5, generator=g, dtype=torch.float64)
    ids = torch.tensor([[0, 1, -1]] * 7)[None].clone()
    ids[0, 5:, 1] = -1                                     # tube 1 ends at frame 4
    delta = tube_rest_delta(regions, ids, 3)
    assert torch.equal(delta[0, :, 2], torch.zeros(7, 5, dtype=torch.float64))
    assert torch.equal(delta[0, 5:, 1], torch.zeros(2, 5, dtype=torch.float64))
    frames = np.arange(7)
    for m, last in ((0, 7), (1, 5)):
        tube = Tube(frames=frames[:last], boxes=np.zeros((last, 4)), index=np.full(last, m))
        want = tube_activity(regions[0].numpy(), tube, frames)[:last]
        got = 0.5 * (delta[0, :last, m] ** 2).sum(-1).numpy()
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_delta_switch_puts_the_change_from_rest_into_each_token():
    """fsm.delta: a region token carries its change from its tube's rest, so changing the tube's other frames changes
    the token of an untouched frame (the plain head's token of that frame stays: without the fusions a token is its
    own region's); other weights start as the plain head's."""
    off = dict(frame_fusion=False, video_fusion=False)
    plain, head = _plain_and(delta=True, **off)
    assert _added(plain, head) == {"pv_delta.weight", "pv_delta.bias", "pick_time.weight", "pick_time.bias"}
    torch.manual_seed(0)
    plain = FsmHead(8, FsmConfig(dim=16, queries=2, **off))
    b = _two_changes(0)
    with torch.no_grad():
        before = {k: h._memory(b.video, b.text)[0][:, 0] for k, h in (("plain", plain), ("delta", head))}
        b.video.regions[:, 3:, 0] = torch.eye(8)[5]          # the tube's other frames now rest elsewhere
        after = {k: h._memory(b.video, b.text)[0][:, 0] for k, h in (("plain", plain), ("delta", head))}
    assert torch.equal(before["plain"], after["plain"])
    assert not torch.allclose(before["delta"][:, 0], after["delta"][:, 0])   # object 0's token at frame 0
    assert torch.equal(before["delta"][:, 1:], after["delta"][:, 1:])         # the other objects' tokens


def test_verb_ids_hash_the_parsed_lemma():
    from finetune.heads.fsm import VerbIds

    prep = VerbIds(FsmConfig(when=True, when_vocab=64))
    ids = prep(["the red cube is cut", "which ball is cut?", "the cube is stirred", "a red cube"], None, None).ids
    assert ids[0] == ids[1] != ids[2] and 2 <= int(ids[0]) < 64 and int(ids[3]) == 0


def test_when_switch_learns_the_named_change_and_decodes_its_span():
    """fsm.when: trained on _two_changes (the object is acted on twice, only the sentence's verb says which), the
    when-score's best segment along the object's tube is the named change; the plain head, whose inputs are the same
    in both rows, cannot tell the two apart. Other weights start as the plain head's; without parsed verbs the head
    says so in one error."""
    from finetune.heads.fsm import VerbIds

    plain, head = _plain_and(when=True)
    assert {k.split(".")[0] for k in _added(plain, head)} == {"when_vis", "when_verb", "when_bias"}
    cfg = head.cfg
    with pytest.raises(ValueError, match="no parsed verbs"):
        head.loss(_two_changes(0))
    prep = VerbIds(cfg)
    spans, last = _trained_spans({"plain": (plain, _two_changes),
                                  "when": (head, lambda i: _two_changes(i, prep))}, 150)
    assert float(last["when"]["when"]) < 0.5
    mean = {k: _two_changes_tiou(v) for k, v in spans.items()}
    # the plain head sees the same inputs in both rows, so one span for both: at most one of them right
    assert mean["plain"] <= 0.5 and mean["when"] >= 0.9, (mean, spans)
    head.cfg.when_decode = "segment"      # the earlier decoding of the same trained score finds it too
    with torch.no_grad():
        seg = [head.tube_output(_two_changes(i, prep).video, _two_changes(i, prep).text).sted.tolist()
               for i in range(4)]
    assert _two_changes_tiou(seg) >= 0.9, seg


def _two_cubes(i, prep=None):
    """Two rows of 8 frames, three objects on tubes 0-2 with their own proposals and rest looks (e0: the red cube,
    e3: the blue cube, e4: a ball); the red cube is cut (its look toward e1) at frames [i, i + 2), the blue one at
    [i + 3, i + 5), equally strongly. Row 0's sentence names the red cube, row 1's the blue one; both rows' word
    features are the same (the export's contextual words), so only the parsed words tell which cube. Each row's
    truth: its cube's proposal over its cut's frames."""
    e = torch.eye(8)
    b = _batch(t=8)
    r = torch.zeros(2, 8, 3, 8)
    r[..., 0, 0] = r[..., 1, 3] = r[..., 2, 4] = 1.0
    r[:, i:i + 2, 0] = (e[0] + 2 * e[1]) / 5 ** 0.5
    r[:, i + 3:i + 5, 1] = (e[3] + 2 * e[1]) / 5 ** 0.5
    b.video.regions = r
    b.video.frames = r.mean(2)
    b.video.geometry.tube_ids = torch.arange(3).expand(2, 8, 3).clone()
    b.video.geometry.tube_mask = torch.ones(2, 3, dtype=torch.bool)
    return _two_rows(b, ["the red cube is cut", "the blue cube is cut"], prep, i,
                     b.video.geometry.boxes[0, 0, :2][:, None].expand(2, 8, 4))


def test_expected_iou_segment_hand_numbers():
    from tubes.activity import expected_iou_segment as seg

    # sum_S p / (|S| + sum_notS p): all three 1.7 / 3 = 0.57 beats the first alone 0.9 / 1.8 = 0.5 ...
    assert seg([0.9, 0.0, 0.8]) == (0, 2)
    # ... but not across two empty frames (1.7 / 4 = 0.43)
    assert seg([0.9, 0.0, 0.0, 0.8]) == (0, 0)
    # scale-aware: no frame above 0.5, the run at 0.1 among frames at 0.01 is chosen whole (1.5 / 16.5 = 0.09)
    assert seg([0.01] * 5 + [0.1] * 15 + [0.01] * 10) == (5, 19)
    assert seg([0.0, 0.0]) == (0, 0) and seg([0.3]) == (0, 0)


def test_target_words_are_the_grounded_entitys():
    from finetune.heads.fsm import VerbIds
    from finetune.heads.when_score import target_words
    from finetune.query_parse import parse

    assert target_words(parse("what red thing is cut?")) == ["red"]
    assert target_words(parse("which blue cube left of the red ball is cut?")) == ["blue", "cube"]
    assert target_words(parse("the cube left of the red ball is painted")) == ["cube"]
    got = VerbIds(FsmConfig(when=True, when_vocab=64, when_words="target"))(
        ["the red cube is cut", "what is cut?"], None, None)
    assert got.words.shape == (2, 2) and (got.words[0] >= 2).all() and (got.words[1] == 0).all()


def test_when_over_the_video_with_target_words_finds_which_object_and_when():
    """fsm.when_scope=video with when_words=target: trained on _two_cubes (both cubes are cut, at different times;
    only the sentence's colour word tells which), the decoding (the tube where the score peaks, its span along that
    tube) gives each row its cube's cut and that cube's boxes. With the verb alone the when-score's inputs are the
    same in both rows, so one (tube, span) for both: at most one row right."""
    from finetune.heads.fsm import VerbIds

    heads, preps = {}, {}
    for name, words in (("verb", "verb"), ("target", "target")):
        torch.manual_seed(0)
        cfg = FsmConfig(dim=16, queries=2, when=True, when_scope="video", when_words=words)
        heads[name], preps[name] = FsmHead(8, cfg), VerbIds(cfg)
    assert {k.split(".")[0] for k in _added(heads["verb"], heads["target"])} == {"when_target"}
    spans, _ = _trained_spans({k: (h, lambda i, p=preps[k]: _two_cubes(i, p)) for k, h in heads.items()}, 150)
    right = {}
    for name, head in heads.items():
        hits = []
        for i in range(4):
            b = _two_cubes(i, preps[name])
            with torch.no_grad():
                out = head.tube_output(b.video, b.text)
            for row in (0, 1):
                lo = 2 * (i + 3 * row)
                s, e = out.sted[row].tolist()
                tiou = max(0, min(e, lo + 4) - max(s, lo)) / (max(e, lo + 4) - min(s, lo))
                m = b.targets.box_mask[row]
                hits.append(tiou >= 0.5 and torch.equal(out.boxes[row, m], b.targets.boxes[row, m]))
        right[name] = sum(hits) / len(hits)
    assert right["verb"] <= 0.5 and right["target"] >= 0.875, (right, spans)
