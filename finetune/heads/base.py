"""The head interface every downstream head implements (WSRA; the STVG heads tube_sim, WINNER, VCMA, FSM).

In: frame features (B, T, d), optionally region/tube features (B, T, N, d) (patch tokens of the pretrained encoder,
or proposal/tube features a head builds itself), and query features (sentence (B, d), words (B, K, d)), all with
validity masks. Out: a training loss, and at inference scores that finetune/predict.py turns into the evaluators'
formats: per-frame scores rank moments (didemo, charades_sta), per-region scores give points and boxes
(groundingyoutube). Heads know nothing of files, datasets, DeepSpeed or Ray.

STVG heads (vidstg / hcstvg; finetune/heads/stvg.py, docs/stvg.md "The head interface") get regions that are
proposals: VideoBatch.geometry holds their boxes, scores, native frame ids and times and the tube each lies on;
TextBatch the raw sentences and each word feature's character span; TrainBatch.targets the truth, only for a head
with `supervised = True`. They answer `tube_output` (a TubeOutput: scores, or boxes directly).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from finetune.heads.stvg import StvgTargets, TubeGeometry, TubeOutput


@dataclass
class VideoBatch:
    frames: torch.Tensor                       # (B, T, d) frame features
    mask: torch.Tensor                         # (B, T) bool, True where a frame exists (videos are padded)
    regions: torch.Tensor | None = None        # (B, T, N, d) region / tube features
    region_mask: torch.Tensor | None = None    # (B, T, N) bool
    geometry: TubeGeometry | None = None       # STVG: the regions' boxes, frame ids and times, tube ids
    regions_mid: torch.Tensor | None = None    # (B, T, N, d) STVG multi-scale: the regions over an earlier block
    pixels: torch.Tensor | None = None         # (B, T, S, S, 3) uint8 crops: STVG end to end (the module encodes)

    def to(self, device) -> "VideoBatch":
        move = (lambda x: None if x is None else x.to(device))
        return VideoBatch(move(self.frames), move(self.mask), move(self.regions), move(self.region_mask),
                          move(self.geometry), move(self.regions_mid), move(self.pixels))


@dataclass
class ParsedQueries:
    """Each query's sentence parsed once, at batching time (HeadSpec.text_prep), as tensors a head reads: which word
    rows of TextBatch.words lie inside each entity / relation phrase, the relations' subject and object entity,
    their predicate's word ids, the target entity. E, R, L are the head's limits; K is TextBatch.words' K."""
    entity_words: torch.Tensor                 # (Q, E, K) bool: word k lies inside entity e's characters
    relation_words: torch.Tensor               # (Q, R, K) bool: the same for relation r's phrase
    emask: torch.Tensor                        # (Q, E) bool: entity e exists
    rmask: torch.Tensor                        # (Q, R) bool: relation r exists
    subj: torch.Tensor                         # (Q, R) long: relation r's subject entity
    obj: torch.Tensor                          # (Q, R) long: its object entity, -1 none
    predicate: torch.Tensor                    # (Q, R, L) long: its predicate's word ids, 0-padded
    target: torch.Tensor                       # (Q,) long: the entity the query grounds
    whole: torch.Tensor                        # (Q,) bool: nothing parsed, the sentence is its one entity
    verbs: Any = None                          # a when-score's parsed verbs (heads/when_score.py ParsedVerbs)

    def to(self, device) -> "ParsedQueries":
        return ParsedQueries(*(None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                               for f in fields(self)))


@dataclass
class TextBatch:
    sentence: torch.Tensor                     # (Q, d) sentence features
    words: torch.Tensor | None = None          # (Q, K, d) word features
    word_mask: torch.Tensor | None = None      # (Q, K) bool
    sentences: list[str] | None = None         # the raw sentences (a head parses them itself)
    token_spans: list[list[tuple[int, int]]] | None = None  # per query, word k's [start, end) characters in it
    parsed: ParsedQueries | None = None        # the sentences parsed by the running head's spec (its text_prep)

    def to(self, device) -> "TextBatch":
        move = (lambda x: None if x is None else x.to(device))
        return TextBatch(move(self.sentence), move(self.words), move(self.word_mask), self.sentences,
                         self.token_spans, move(self.parsed))


@dataclass
class TrainBatch:
    """B videos, each with one weak (video-level) query: text row i describes something in video i. The other
    rows are candidate negatives for video i. `positive` holds a pseudo-positive video per row (from the mined
    table, docs/contracts.md section 4) with its gate lambda_i (0 where the row has none)."""
    video: VideoBatch
    text: TextBatch
    positive: VideoBatch | None = None
    positive_gate: torch.Tensor | None = None  # (B,) float in {0, 1}
    groups: torch.Tensor | None = None         # (B,) long: rows with equal values are queries of the same video
    targets: StvgTargets | None = None         # STVG truth of each row: supervised heads only, else None
    said: Any = None                           # every training sentence of each batch video, parsed by the head
                                               # spec's text_prep with its video's group (heads/when_score.py
                                               # SaidSentences): a weak head's video-level labels, if its spec asks

    def to(self, device) -> "TrainBatch":
        move = (lambda x: None if x is None else x.to(device))
        return TrainBatch(self.video.to(device), self.text.to(device), move(self.positive),
                          move(self.positive_gate), move(self.groups), move(self.targets), move(self.said))


class GroundingHead(nn.Module, metaclass=abc.ABCMeta):
    """Subclasses set `name`, `needs_regions` and implement `loss` and `frame_scores` (and `region_scores` when
    they ground in space); one that lacks an abstract method cannot be built."""

    name = "base"
    needs_regions = False
    supervised = False      # True: training batches carry StvgTargets (the train split's truth tubes)

    @abc.abstractmethod
    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """{"loss": scalar with graph, other scalars (detached) for the logs}."""

    @abc.abstractmethod
    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        """(B, T): how much frame t of video b shows query b (higher = more); padded frames arbitrary."""

    def region_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor | None:
        """(B, T, N) per-region scores of query b in video b, or None for a temporal-only head."""
        return None

    def tube_output(self, video: VideoBatch, text: TextBatch) -> TubeOutput:
        """STVG: query b's tube in video b. By default the frame and region scores; a head that regresses boxes or
        scores tubes returns those instead."""
        return TubeOutput(frame_scores=self.frame_scores(video, text), region_scores=self.region_scores(video, text))

    def at_step(self, step: int) -> None:
        """Called before the loss of optimizer step `step` (0-based, the trainer's count, so a resume continues
        the schedule): a head whose objective follows a schedule (VCMA's EM alternation) switches here."""

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        # DeepSpeed's engine calls forward; training is the only use of it
        return self.loss(batch)
