"""Head scores -> ranked moments in the evaluators' formats (docs/evaluation.md), and the evaluator call.

Candidates (WSRA Sec. 4):
- didemo: the 21 moments [s, e] of 5-s chunks (0 <= s <= e <= 5), in seconds [5 s, 5 (e + 1));
- charades_sta (and the synthetic corpus, evaluated with its protocol): sliding windows of 20/30/40/50 % of the
  video's duration with 80 % overlap (stride = 20 % of the window), the last window of each length flush with the
  end of the video.
A frame at time t stands for [t, t + 1/fps); it belongs to a moment when its middle lies inside. A moment's score
is the mean frame score inside (`mean`) or that minus the mean outside (`contrast`, the default: with `mean` a
short window around one high frame beats the whole action, with `contrast` a window must also leave the high
frames out of the rest of the video); a moment that holds no frame takes the frame nearest to its middle.
"""
from __future__ import annotations

import numpy as np
import torch

from finetune.datasets import EvalQuery
from finetune.features import TextFeatures, VideoFeatures
from finetune.heads.base import GroundingHead, TextBatch, VideoBatch
from tubes.activity import best_segment, native_span

WINDOW_FRACTIONS = (0.2, 0.3, 0.4, 0.5)
WINDOW_OVERLAP = 0.8
DIDEMO_CHUNK_S = 5.0


def didemo_moments() -> list[tuple[int, int]]:
    return [(s, e) for s in range(6) for e in range(s, 6)]


def sliding_windows(duration: float, fractions=WINDOW_FRACTIONS, overlap: float = WINDOW_OVERLAP) -> np.ndarray:
    """(M, 2) [start, end] seconds, shortest windows first, each length from the start of the video on."""
    out = []
    for f in fractions:
        length = f * duration
        stride = (1.0 - overlap) * length
        starts = list(np.arange(0.0, duration - length + 1e-6, stride)) if stride > 0 else [0.0]
        if starts[-1] + length < duration - 1e-6:
            starts.append(duration - length)
        out += [(s, s + length) for s in starts]
    return np.asarray(out, dtype=np.float64)


def candidates(benchmark: str, duration: float) -> tuple[np.ndarray, list]:
    """(spans (M, 2) in seconds, the same moments as the prediction file writes them)."""
    if benchmark == "didemo":
        moments = didemo_moments()
        spans = np.array([(DIDEMO_CHUNK_S * s, DIDEMO_CHUNK_S * (e + 1)) for s, e in moments], dtype=np.float64)
        return spans, [[s, e] for s, e in moments]
    if benchmark == "charades_sta":
        spans = sliding_windows(duration)
        return spans, [[round(float(s), 3), round(float(e), 3)] for s, e in spans]
    raise ValueError(f"no moment candidates for benchmark {benchmark!r}")


def moment_scores(scores: np.ndarray, times: np.ndarray, spans: np.ndarray, step: float,
                  mode: str = "contrast") -> np.ndarray:
    """(M,) scores of candidate spans from per-frame scores (T,) at `times` (frames last `step` seconds)."""
    mid = np.asarray(times, dtype=np.float64) + step / 2
    inside = (mid[None, :] >= spans[:, :1]) & (mid[None, :] < spans[:, 1:])            # (M, T)
    empty = ~inside.any(1)
    if empty.any():
        nearest = np.abs(mid[None, :] - spans[empty].mean(1, keepdims=True)).argmin(1)
        inside[np.nonzero(empty)[0], nearest] = True
    s = np.asarray(scores, dtype=np.float64)
    n_in = inside.sum(1)
    mean_in = (inside * s).sum(1) / n_in
    if mode == "mean":
        return mean_in
    n_out = (~inside).sum(1)
    mean_out = np.where(n_out > 0, ((~inside) * s).sum(1) / np.maximum(n_out, 1), mean_in)
    return mean_in - mean_out


def rank_moments(benchmark: str, scores: np.ndarray, times: np.ndarray, duration: float, step: float,
                 mode: str) -> list:
    spans, written = candidates(benchmark, duration)
    ms = moment_scores(scores, times, spans, step, mode)
    order = np.argsort(-ms, kind="stable")
    return [written[i] for i in order]


@torch.no_grad()
def query_frame_scores(head: GroundingHead, feats: VideoFeatures, text: TextFeatures) -> np.ndarray:
    """(Q, T) frame scores of the Q sentences of `text` on one video."""
    device = next(head.parameters()).device
    q = text.sentence.shape[0]
    frames = torch.from_numpy(feats.frames.astype(np.float32)).to(device)
    video = VideoBatch(frames.unsqueeze(0).expand(q, -1, -1), torch.ones(q, frames.shape[0], dtype=torch.bool,
                                                                         device=device))
    batch = TextBatch(torch.from_numpy(text.sentence).to(device), torch.from_numpy(text.words).to(device),
                      torch.from_numpy(text.word_mask).to(device))
    return head.frame_scores(video, batch).float().cpu().numpy()


def _by_video(queries: list[EvalQuery], videos: dict) -> dict[str, list[EvalQuery]]:
    """The queries whose video has features, grouped by video (the others are left out: the evaluator counts them
    as missing)."""
    out: dict[str, list[EvalQuery]] = {}
    for q in queries:
        if q.video in videos:
            out.setdefault(q.video, []).append(q)
    return out


def predict(head: GroundingHead, benchmark: str, queries: list[EvalQuery], videos: dict[str, VideoFeatures],
            text_of, fps: float, durations: dict[str, float] | None = None, mode: str = "contrast") -> dict:
    """{query key: ranked moments}. `text_of(sentences) -> TextFeatures`. Queries whose video has no features are
    left out (the evaluator counts them as missing)."""
    was_training = head.training
    head.eval()
    by_video = _by_video(queries, videos)
    out = {}
    try:
        for vid, qs in by_video.items():
            f = videos[vid]
            scores = query_frame_scores(head, f, text_of([q.sentence for q in qs]))
            duration = (durations or {}).get(vid, f.duration)
            for q, s in zip(qs, scores):
                out[q.key] = rank_moments(benchmark, s, f.times, duration, 1.0 / fps, mode)
    finally:
        head.train(was_training)
    return out


def chance_predictions(benchmark: str, queries: list[EvalQuery], videos: dict[str, VideoFeatures], seed: int,
                       durations: dict[str, float] | None = None) -> dict:
    """The same candidates in a random order per query (the chance baseline)."""
    rng = np.random.default_rng(seed)
    out = {}
    for q in queries:
        if q.video not in videos:
            continue
        _, written = candidates(benchmark, (durations or {}).get(q.video, videos[q.video].duration))
        out[q.key] = [written[i] for i in rng.permutation(len(written))]
    return out


def evaluate(benchmark: str, files: dict[str, str], predictions: str) -> tuple[dict, dict]:
    """The project's evaluator (grounding.evaluate) in process: (metrics in percent as its CLI prints them, counts).
    Malformed or impossible predictions raise its InputError."""
    from grounding import evaluate as G

    scores, counts = G.evaluate(benchmark, files["annotations"], predictions, boxes=files.get("boxes"),
                                durations=files.get("durations"))
    return G.in_percent(scores), counts


# --- STVG: a head's TubeOutput -> vidstg predictions ----------------------------------------------------------------
def _matching_tube(vt, frame_ids: np.ndarray, boxes: np.ndarray, sted: tuple[int, int]) -> int:
    """The linked tube whose boxes overlap a head's regressed boxes (T, 4) most over the span (mean IoU)."""
    from grounding.metrics.boxes import box_iou_aligned

    inside = (frame_ids >= sted[0]) & (frame_ids < sted[1])
    if not inside.any():
        inside = np.ones(len(frame_ids), bool)
    best, choice = -1.0, 0
    for m, t in enumerate(vt.tubes):
        pos = np.searchsorted(t.frames, frame_ids)
        has = inside & (pos < len(t.frames))
        has[has] &= t.frames[pos[has]] == frame_ids[has]
        has[has] &= ~np.isnan(t.boxes[pos[has], 0])
        iou = float(box_iou_aligned(t.boxes[pos[has]], boxes[has]).sum() / max(inside.sum(), 1)) if has.any() else 0.0
        if iou > best:
            best, choice = iou, m
    return choice


def _rule_span(span, vt, choice: int, frame_ids: np.ndarray, head_scores, when=None, ids=None) -> tuple[int, int]:
    """The span by `span.rule` (activity, mix or when, finetune/config.py SpanConfig) from the chosen linked tube;
    `when` (T, N) the head's when-score logits over the video's regions, `ids` (T, N) their tubes."""
    from tubes.activity import moving_mean, standardise

    if span.rule == "when":
        from finetune.heads.when_score import tube_segment

        return native_span(frame_ids, *tube_segment(when, ids, choice, "iou"))
    s = standardise(vt.tube_activities[choice])
    if span.rule == "mix" and head_scores is not None:
        s = s + span.weight * standardise(head_scores.float().cpu().numpy())
    return native_span(frame_ids, *best_segment(moving_mean(s, span.smooth)))


def _when_peaks(when: torch.Tensor, ids: torch.Tensor, m: int) -> np.ndarray:
    """(M,) each linked tube's peak when-score: the mean of its top quarter of frames' logits (tube_peak's reading
    of the activity, on the score that knows the sentence's words); -inf for a tube without a region."""
    from tubes.activity import tube_peak

    out = np.full(m, -np.inf)
    for k in range(m):
        s = when.masked_fill(ids != k, float("-inf")).amax(1)
        s = s[torch.isfinite(s)]
        if len(s):
            out[k] = tube_peak(s.double().numpy())
    ok = np.isfinite(out)
    out[~ok] = out[ok].min() if ok.any() else 0.0   # a tube with no region: never the busier one
    return out


def stvg_tube(out, row: int, vt, frame_ids: np.ndarray, tube_ids: np.ndarray, span=None, given=None):
    """Query `row`'s predicted tube (grounding.tube.Tube with its sted, a box on every native frame of it) from a
    head's TubeOutput over one video's frames (frame_ids (T,), tube_ids (T, N)). `span` (SpanConfig, None: the
    head's rule): with rule activity / mix / when, the tube is chosen by the head's tube scores (over the head's own
    span) plus span.tube_weight x each tube's peak activity (its peak when-score, when the head answers with one),
    then the span is decided again from that tube's activity (tubes/activity.py), or its when-score. A head that
    regresses its own boxes (FSM) keeps them: its tube is the linked tube they
    overlap most. `given` (start, end) native frames: that span instead of any rule's (the oracle of
    `finetune.repredict --given-span`); a head choosing among tubes chooses over it."""
    from finetune.heads.stvg import tube_pool
    from grounding.tube import Tube

    if given is not None:
        sted, span = (int(given[0]), int(given[1])), None
    elif out.sted is not None:
        sted = tuple(int(x) for x in out.sted[row].tolist())
    else:
        sted = native_span(frame_ids, *best_segment(out.frame_scores[row].float().cpu().numpy()))
    by_rule = span is not None and span.rule != "head"
    head_scores = None if out.frame_scores is None else out.frame_scores[row]
    m = len(vt.tubes)
    ids_t = torch.from_numpy(tube_ids)
    when = None   # the head's when-score, if it has one: span.rule=when's span, and span.tube_weight's peaks
    if out.when is not None:
        when = out.when[row, :len(frame_ids), :tube_ids.shape[1]].float().cpu()
    elif by_rule and span.rule == "when":
        raise ValueError("span.rule=when: the head answered without a when-score (TubeOutput.when)")
    if out.boxes is not None:
        boxes = out.boxes[row].float().cpu().numpy()
        if by_rule and m:
            sted = _rule_span(span, vt, _matching_tube(vt, frame_ids, boxes, sted), frame_ids, head_scores, when,
                              ids_t)
        return Tube(frame_ids, boxes).with_span(sted)
    if m == 0:  # no proposal anywhere in the video: the span alone (its vIoU is 0)
        return Tube.empty(sted)
    if out.tube_scores is not None:
        per_tube = out.tube_scores[row, :m].float().cpu()
    else:
        scores = out.region_scores[row:row + 1].float().cpu()
        ids = ids_t[None]
        inside = torch.from_numpy((frame_ids >= sted[0]) & (frame_ids < sted[1]))[None, :, None].expand_as(ids)
        pooled, counts = tube_pool(scores, ids, m, inside)
        if not bool((counts > 0).any()):  # no tube reaches into the span: judge them over the whole video
            pooled, counts = tube_pool(scores, ids, m)
        per_tube = pooled[0].masked_fill(counts[0] == 0, -float("inf"))
    choice = int(torch.argmax(per_tube))
    if by_rule:
        if span.tube_weight > 0:
            from tubes.activity import choose_tube, tube_peak

            peaks = (_when_peaks(when, ids_t, m) if when is not None
                     else np.asarray([tube_peak(a) for a in vt.tube_activities]))
            choice = choose_tube(per_tube.numpy(), peaks, span.tube_weight)
        sted = _rule_span(span, vt, choice, frame_ids, head_scores, when, ids_t)
    return vt.tubes[choice].with_span(sted)


def write_tubedetr(benchmark: str, files: dict[str, str], predictions: str, out_dir: str) -> dict[str, str]:
    """TubeDETR's two prediction dicts beside ours (grounding/tubedetr.py), for scoring with its evaluator too."""
    from grounding import tubedetr
    from grounding.readers import read_hcstvg, read_vidstg

    queries = (read_hcstvg(files["annotations"]) if benchmark == "hcstvg"
               else read_vidstg(files["annotations"], files.get("boxes")))
    return tubedetr.write(predictions, queries, out_dir)


@torch.no_grad()
def predict_stvg(head: GroundingHead, queries: list[EvalQuery], videos: dict, text_of, tokenizer,
                 prep=None, span=None, given=None) -> dict:
    """{query key: {"sted": [s, e], "boxes": {frame: box}}} (the vidstg prediction format, docs/evaluation.md) from
    a head's tube_output on each test video (all its proposal frames); queries whose video has no features are
    left out (the evaluator counts them as missing). `prep`: the head spec's text_prep (TextBatch.parsed), or None;
    `span`: the finetune's SpanConfig (None: each head's own span rule); `given`: {query key: (start, end)} spans
    to use instead (an oracle for measuring a head's boxes alone: finetune/repredict.py --given-span)."""
    from finetune.stvg_batches import text_batch, tube_ids, video_batch

    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    by_video = _by_video(queries, videos)
    out = {}
    try:
        for vid, qs in by_video.items():
            vt = videos[vid]
            sentences = [q.sentence for q in qs]
            video = video_batch([vt] * len(qs)).to(device)
            answer = head.tube_output(video, text_batch(text_of(sentences), sentences, tokenizer, prep).to(device))
            for i, q in enumerate(qs):
                out[q.key] = stvg_tube(answer, i, vt, vt.proposals.frames, tube_ids(vt), span,
                                       None if given is None else given.get(q.key)).to_json()
    finally:
        head.train(was_training)
    return out
