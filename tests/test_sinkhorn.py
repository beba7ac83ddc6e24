import torch
import torch.nn.functional as F

from pretrain import sinkhorn


def _random_problem(b=6, k=9, u=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    sim = torch.rand(b, k, u, generator=gen, dtype=dtype) * 2 - 1
    lengths = torch.randint(1, k + 1, (b,), generator=gen)
    lengths[0] = k
    mask = torch.arange(k).unsqueeze(0) < lengths.unsqueeze(1)
    return sim, mask


def test_marginals_hold():
    sim, mask = _random_problem()
    u, t = sim.shape[-1], 8
    rows, cols = sinkhorn.marginals(mask, u, t)
    q = sinkhorn.transport_plan(sim, mask, t, iters=3)
    # the last half-iteration fixes the frame marginals exactly, even after 3 iterations
    torch.testing.assert_close(q.sum(dim=1), cols, atol=1e-12, rtol=0)
    q = sinkhorn.transport_plan(sim, mask, t, iters=300)
    torch.testing.assert_close(q.sum(dim=2), rows, atol=1e-8, rtol=0)
    torch.testing.assert_close(q.sum(dim=1), cols, atol=1e-12, rtol=0)
    # padding words carry no mass; word mass totals T/U
    assert q[:, :-1][~mask].abs().max() == 0
    torch.testing.assert_close(q[:, :-1].sum(dim=(1, 2)), torch.full((sim.shape[0],), t / u, dtype=q.dtype))


def _two_concepts(u=16):
    """3 'egg' words and 1 'whisk' word; frames 0-7 show eggs, 8-11 whisking, 12-15 nothing."""
    d = 8
    e = torch.eye(d, dtype=torch.float64)
    words = torch.stack([e[0], e[0], e[0], e[1]])
    frames = torch.stack([e[2]] * u)
    frames[:8] = 0.9 * e[0] + 0.436 * e[2]
    frames[8:12] = 0.8 * e[1] + 0.6 * e[2]
    frames = F.normalize(frames, dim=-1)
    sim = (words @ frames.t()).unsqueeze(0)
    return sim, torch.ones(1, 4, dtype=torch.bool)


def test_assignments_spread_across_frames():
    sim, mask = _two_concepts()
    topk = sinkhorn.select_frames(sim, mask, 8, "topk")[0].tolist()
    assert topk == list(range(8))  # mean similarity: all 8 picks go to the dominant concept
    picked = sinkhorn.select_frames(sim, mask, 8, "sinkhorn", iters=3, temperature=0.1)[0].tolist()
    whisk = [i for i in picked if 8 <= i < 12]
    egg = [i for i in picked if i < 8]
    assert len(whisk) == 4 and len(egg) == 4, picked  # both concepts are grounded, no empty frame is picked
    # the word rows of the plan send the whisk word to the whisk frames
    q = sinkhorn.transport_plan(sim, mask, 8, iters=50)
    assert q[0, 3, 8:12].sum() > 0.9 * q[0, 3].sum()


def test_batched_equals_per_sample_reference():
    for seed, iters, k in [(0, 3, 9), (1, 10, 20), (2, 1, 1)]:
        sim, mask = _random_problem(b=32, k=k, seed=seed)
        got = sinkhorn.select_frames(sim, mask, 8, "sinkhorn", iters=iters, temperature=0.1)
        ref = sinkhorn.select_frames_reference(sim, mask, 8, iters=iters, temperature=0.1)
        assert torch.equal(got, ref)
        assert got.shape == (32, 8) and (got.diff(dim=1) > 0).all()  # distinct, temporal order


def test_float32_batched_matches_reference():
    sim, mask = _random_problem(b=64, k=20, seed=3, dtype=torch.float32)
    got = sinkhorn.select_frames(sim, mask, 8, "sinkhorn")
    ref = sinkhorn.select_frames_reference(sim.double(), mask, 8)
    assert (got == ref).all(dim=1).float().mean() > 0.95  # float32 may flip near-ties only


def test_padding_words_do_not_change_selection():
    sim, mask = _random_problem(b=4, k=6, seed=4)
    mask[:] = True
    mask[:, 4:] = False
    garbage = sim.clone()
    garbage[:, 4:] = 5.0  # padded rows with huge similarity must be ignored
    a = sinkhorn.select_frames(sim, mask, 8)
    b = sinkhorn.select_frames(garbage, mask, 8)
    assert torch.equal(a, b)
    b = sinkhorn.select_frames(garbage, mask, 8, "topk")
    assert torch.equal(sinkhorn.select_frames(sim, mask, 8, "topk"), b)


def test_invalid_frames_are_not_selected():
    sim, mask = _random_problem(b=5, seed=5)
    valid = torch.arange(16).unsqueeze(0) < torch.tensor([[10], [16], [12], [9], [8]])
    for mode in ("sinkhorn", "topk", "none"):
        idx = sinkhorn.select_frames(sim, mask, 8, mode, frame_valid=valid)
        assert (idx < valid.sum(1, keepdim=True)).all(), mode


def test_none_and_full_selection():
    sim, mask = _random_problem(b=3)
    assert sinkhorn.select_frames(sim, mask, 8, "none")[0].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sinkhorn.select_frames(sim, mask, 16, "sinkhorn")[0].tolist() == list(range(16))


def test_granularities():
    b, k, u, n, d = 2, 5, 16, 4, 8
    gen = torch.Generator().manual_seed(0)
    norm = lambda *s: F.normalize(torch.randn(*s, generator=gen), dim=-1)  # noqa: E731
    tg, tl, fg, fl = norm(b, d), norm(b, k, d), norm(b, u, d), norm(b, u, n, d)
    mask = torch.ones(b, k, dtype=torch.bool)
    sim, m = sinkhorn.word_frame_similarity(tg, tl, mask, fg, fl, "global", "local")
    assert sim.shape == (b, 1, u) and m.all()
    torch.testing.assert_close(sim[0, 0, 3], (fl[0, 3] @ tg[0]).max())
    sim, m = sinkhorn.word_frame_similarity(tg, tl, mask, fg, fl, "local", "global")
    assert sim.shape == (b, k, u)
    torch.testing.assert_close(sim[1, 2, 5], tl[1, 2] @ fg[1, 5])
