"""What an STVG head sees besides features, and what it may answer (docs/stvg.md, "The head interface").

A video of an STVG batch carries its proposals' geometry (`TubeGeometry`): per feature frame t the native frame id
and time, per region n of that frame its box and detector score and the linked tube it belongs to. Supervised
heads (FSM) also get `StvgTargets`, built only from the adapter's explicit truth accessor (finetune/datasets_stvg.py);
a weak head's batch has none. A head answers with a `TubeOutput`: frame scores (or a span directly) and either
per-region scores, per-tube scores or boxes it regresses itself; finetune/predict.py makes vidstg predictions of it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def _move(obj, device):
    return type(obj)(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                        for f in fields(obj) for v in [getattr(obj, f.name)]})


@dataclass
class TubeGeometry:
    """B videos padded to T feature frames, N regions per frame, M tubes; padding: mask False, tube id -1."""
    boxes: torch.Tensor        # (B, T, N, 4) float proposal boxes x1, y1, x2, y2 in source-video pixels
    scores: torch.Tensor       # (B, T, N) float detector scores (0 at padding)
    frame_ids: torch.Tensor    # (B, T) long: the native frame index of feature frame t
    times: torch.Tensor        # (B, T) float seconds (frame id / the video's own fps)
    tube_ids: torch.Tensor     # (B, T, N) long: the tube m (0..M-1) region n of frame t lies on, -1 none
    tube_mask: torch.Tensor    # (B, M) bool: tube m exists in video b
    fps: torch.Tensor          # (B,) float: the video's own frame rate
    size: torch.Tensor         # (B, 2) float: width, height in pixels
    activity: torch.Tensor | None = None  # (B, T, N) float: region n's activity on its tube (tubes/activity.py
                                          # region_activity, over all the video's frames), 0 on no tube

    def to(self, device) -> "TubeGeometry":
        return _move(self, device)


@dataclass
class StvgTargets:
    """The truth of each row's query, for supervised heads only (TubeDETR's / FSM's targets)."""
    sted: torch.Tensor         # (B, 2) long native frames [start, end) of the target tube
    boxes: torch.Tensor        # (B, T, 4) float the target's box at each feature frame (0 where box_mask is False)
    box_mask: torch.Tensor     # (B, T) bool: feature frame t lies inside the tube and has a box

    def to(self, device) -> "StvgTargets":
        return _move(self, device)


@dataclass
class TubeOutput:
    """An STVG head's answer for query b in video b. Temporal: `sted` (a span the head predicts directly) or else
    `frame_scores` (the span is the best segment of them, finetune/predict.py). Spatial, the first given of:
    `boxes` (regressed per feature frame, FSM), `tube_scores` (one per linked tube, WINNER), `region_scores`
    (per region; a tube scores the mean of its regions inside the span, VCMA)."""
    frame_scores: torch.Tensor | None = None   # (B, T)
    sted: torch.Tensor | None = None           # (B, 2) long native frames [start, end)
    region_scores: torch.Tensor | None = None  # (B, T, N)
    tube_scores: torch.Tensor | None = None    # (B, M)
    boxes: torch.Tensor | None = None          # (B, T, 4) x1, y1, x2, y2 source pixels at the feature frames
    when: torch.Tensor | None = None           # (B, T, N) when-score logits (heads/when_score.py): span.rule=when


def tube_pool(values: torch.Tensor, tube_ids: torch.Tensor, m: int, weight: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of `values` (B, T, N, ...) over each tube's regions (B, M, ...), regions counted (B, M)): region scores
    become tube scores, region features (B, T, N, d) tube features (WINNER's f_m^v). `weight` (B, T, N) in {0, 1}
    restricts the regions (e.g. to a span's frames); a tube without regions gets 0."""
    b, t, n = tube_ids.shape
    rest = values.shape[3:]
    v = values.reshape(b, t * n, -1)
    on = (tube_ids >= 0).to(v.dtype) * (1.0 if weight is None else weight.to(v.dtype))
    on = on.reshape(b, t * n, 1)
    idx = tube_ids.clamp_min(0).reshape(b, t * n, 1)
    sums = v.new_zeros(b, m, v.shape[-1]).scatter_add(1, idx.expand(-1, -1, v.shape[-1]), v * on)
    counts = v.new_zeros(b, m, 1).scatter_add(1, idx, on)
    return (sums / counts.clamp_min(1.0)).reshape(b, m, *rest), counts.reshape(b, m)


def tube_median(values: torch.Tensor, tube_ids: torch.Tensor, m: int) -> torch.Tensor:
    """(B, T, N, d) at each region the elementwise median of `values` (B, T, N, d) over its tube's frames in the batch
    (detached: a reference, not a path for gradients); 0 for a region on no tube. An action covers less than half
    of a tube, so this is how the tube's object looks at rest (tubes/activity.py's rest)."""
    on = (tube_ids[..., None] == torch.arange(m, device=tube_ids.device)).to(values.dtype)   # (B, T, N, M)
    per = torch.einsum("btnm,btnd->bmtd", on, values.detach())   # a tube holds at most one region of a frame
    present = on.sum(2).transpose(1, 2) > 0                        # (B, M, T)
    per = per.masked_fill(~present[..., None], float("nan"))
    rest = torch.nan_to_num(per.nanmedian(2).values)               # (B, M, d); a tube that is nowhere: 0
    b, t, n = tube_ids.shape
    idx = tube_ids.clamp_min(0).reshape(b, t * n, 1).expand(-1, -1, rest.shape[-1])
    return torch.gather(rest, 1, idx).reshape(b, t, n, -1) * (tube_ids >= 0).to(values.dtype)[..., None]


def tube_rest_delta(regions: torch.Tensor, tube_ids: torch.Tensor, m: int) -> torch.Tensor:
    """(B, T, N, d) each region's unit feature minus its tube's rest appearance (the elementwise median of the unit
    features over the tube's frames in the batch, L2-normalised: tubes/activity.py's rest, as a vector); 0 for a
    region on no tube. tube_activity is 1 - cos to the same rest, a scalar; the difference keeps *how* the object
    looks changed, which tells one verb from another (docs/stvg.md section 7, fsm.delta)."""
    r = torch.nn.functional.normalize(regions, dim=-1)
    rest = torch.nn.functional.normalize(tube_median(r, tube_ids, m), dim=-1)
    return (r - rest) * (tube_ids >= 0).to(r.dtype)[..., None]


def native_spans(frame_ids: torch.Tensor, first: torch.Tensor, last: torch.Tensor, valid: torch.Tensor
                 ) -> torch.Tensor:
    """(B, 2) long native frames [start, end) covered by feature frames first..last (B,) of each row, the project's
    one convention for turning feature-frame spans into native ones: a feature frame stands for the native frames
    until the next feature frame (as a frame at time t stands for [t, t + 1/fps)), the video's last valid one for
    itself alone. `frame_ids` (B, T) native index of each feature frame, `valid` (B,) how many are valid.
    With features at every native frame this is [frame_ids[first], frame_ids[last] + 1); with sparser features the
    span reaches to the next feature frame (docs/results/finetune.md measures the difference)."""
    rows = torch.arange(frame_ids.shape[0], device=frame_ids.device)
    start = frame_ids[rows, first]
    nxt = (last + 1).clamp(max=frame_ids.shape[1] - 1)
    end = torch.where(last + 1 < valid, frame_ids[rows, nxt], frame_ids[rows, last] + 1)
    return torch.stack([start, end], 1).long()


def mean_unit_words(words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(Q, d) the mean of each sentence's valid unit word vectors: a unit region's dot product with it is the mean
    word-region cosine (the zero-shot region score), so no (..., K) axis is ever needed."""
    w = mask.to(words.dtype)
    w = w / w.sum(1, keepdim=True).clamp_min(1.0)
    return (torch.nn.functional.normalize(words, dim=-1) * w[..., None]).sum(1)


__all__ = ["StvgTargets", "TubeGeometry", "TubeOutput", "mean_unit_words", "native_spans", "tube_pool"]
