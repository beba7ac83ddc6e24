"""STVG dataset adapters: the synthetic STVG corpus, VidSTG and HC-STVG (TubeDETR's files) for finetune/.

Weak supervision (WINNER, VCMA) means a training sample is a (video, sentence) pair and nothing else:
`train_samples()` returns WeakSamples (key, video, sentence) read from files that hold no truth (the synthetic
corpus's `queries.json`) or with everything but the sentence dropped as the annotation is read (VidSTG, HC-STVG),
and `proposals(split)` the split's detections (no identities). The truth of the training queries (the target's
span and per-frame boxes) is reachable only through `train_truth()`, which only a supervised head's finetune
calls (finetune.train.run, the head spec's `supervised`); a weak finetune runs with the train split's truth files absent
(tests/test_finetune_stvg.py deletes them).

Evaluation: `eval_queries()` are the test split's queries, `write_eval_files` names the annotation that
`grounding.evaluate vidstg` (or hcstvg) scores the predictions against.
- synthetic (`dataset.root`): `<split>/queries.json`, `<split>/detections.json`, `<split>/videos/<vid>.mp4`,
  truth `<split>/truth/vidstg.json` (TubeDETR's preprocessed VidSTG format);
- vidstg: `dataset.train` / `dataset.test` TubeDETR's preprocessed train.json / test.json (`videos` +
  `trajectories`; `python -m grounding.convert vidstg` writes them from the release), or raw VidSTG files with
  `dataset.boxes` (the trajectories); `dataset.videos` the video folder: a query's `video_path` under it where the
  file has one (the converter records VidOR's nested path), else `<original_video_id>.mp4`; a video not there is
  refused by name; `dataset.detections` / `dataset.test_detections` detections files (docs/stvg.md) keyed by
  `original_video_id`;
- hcstvg: HC-STVG's annotation files or TubeDETR's *_proc.json (`python -m grounding.convert hcstvg`), videos as
  for vidstg, detections keyed by the video name.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

from common import fsio
from common.errors import UserError
from finetune.datasets import Adapter, EvalQuery, WeakSample, video_folder
from grounding.tube import Tube


@dataclass(frozen=True)
class TrainTruth:
    """One training query's truth (supervised heads only)."""
    sted: tuple[int, int]   # native frames [start, end)
    tube: Tube              # the target's box at every frame of the tube


class StvgAdapter(Adapter):
    """An STVG benchmark: weak samples, test queries, videos, proposals; truth only through train_truth()."""

    benchmark = "vidstg"

    @abc.abstractmethod
    def proposals(self, split: str):
        """The split's proposal source (tubes.proposals.DetectionsFile)."""

    @abc.abstractmethod
    def train_truth(self) -> dict[str, TrainTruth]:
        """{train sample key: its truth}. Read on demand; only supervised heads may call it."""


def _truth_of(queries) -> dict[str, TrainTruth]:
    out = {}
    for q in queries:
        if q.boxes is None:
            raise UserError(f"training annotation [{q.key}]: no boxes (a supervised head needs the trajectories)")
        out[q.key] = TrainTruth(tuple(q.tube), q.boxes)
    return out


class SyntheticStvgAdapter(StvgAdapter):
    benchmark = "vidstg"

    def __init__(self, root: str):
        self.root = root

    def _queries(self, split: str) -> list[dict]:
        url = fsio.join(self.root, split, "queries.json")
        if not fsio.exists(url):
            if fsio.exists(fsio.join(self.root, split, "manifest.csv")):  # what shards.synthetic's temporal mode writes
                raise UserError(f"dataset.root [{self.root}]: an instructional (temporal) synthetic corpus, not an "
                                "STVG corpus: the STVG heads need one made by python -m shards.synthetic mode=stvg "
                                "(this corpus takes dataset.kind=synthetic and the wsra head)")
            raise UserError(f"synthetic STVG corpus [{url}]: not found (python -m shards.synthetic mode=stvg)")
        return fsio.read_json(url)

    def train_samples(self) -> list[WeakSample]:
        return [WeakSample(str(q["key"]), str(q["video"]), str(q["sentence"])) for q in self._queries("train")]

    def eval_queries(self) -> list[EvalQuery]:
        return [EvalQuery(str(q["key"]), str(q["video"]), str(q["sentence"])) for q in self._queries("test")]

    def videos(self, split: str) -> dict[str, str]:
        from shards.corpus import read_manifest

        return {v.video_id: v.path for v in read_manifest(fsio.join(self.root, split, "manifest.csv"))}

    def proposals(self, split: str):
        from tubes.proposals import synthetic

        return synthetic(self.root, split)

    def train_truth(self) -> dict[str, TrainTruth]:
        from grounding.readers.stvg import read_vidstg

        return _truth_of(read_vidstg(fsio.join(self.root, "train", "truth", "vidstg.json")))

    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        return {"annotations": fsio.join(self.root, "test", "truth", "vidstg.json")}


class VidstgAdapter(StvgAdapter):
    """VidSTG through TubeDETR's preprocessed files (or HC-STVG's, `hcstvg=True`)."""

    def __init__(self, train: str, test: str, videos: str, detections: str, test_detections: str,
                 hcstvg: bool = False, boxes: str = ""):
        self.train, self.test, self.folder, self.boxes = train, test, videos, boxes
        self.detections, self.test_detections = detections, test_detections
        self.benchmark = "hcstvg" if hcstvg else "vidstg"

    def _read(self, url: str) -> list:
        """The annotation's queries, read afresh each time: nothing of the train file is kept on the adapter."""
        from grounding.readers.stvg import read_hcstvg, read_vidstg

        return read_hcstvg(url) if self.benchmark == "hcstvg" else read_vidstg(url, self.boxes or None)

    def train_samples(self) -> list[WeakSample]:
        # only key, video and sentence leave this method: the annotation's spans and boxes stay behind
        return [WeakSample(q.key, q.video, q.sentence) for q in self._read(self.train)] if self.train else []

    def eval_queries(self) -> list[EvalQuery]:
        return [EvalQuery(q.key, q.video, q.sentence) for q in self._read(self.test)]

    def videos(self, split: str) -> dict[str, str]:
        """{video: path}: the annotation's video_path under dataset.videos, else <video>.mp4 there; a video that is
        not there is refused (python -m grounding.convert --allow-missing leaves such queries out up front)."""
        url = self.train if split == "train" else self.test
        if not url:
            return {}
        rel = {q.video: q.video_path for q in self._read(url)}
        found = video_folder(self.folder, {v for v, r in rel.items() if not r})
        out = {}
        for vid, path in sorted(rel.items()):
            out[vid] = fsio.join(self.folder, path) if path else found.get(vid, "")
            if not self.folder or not out[vid] or not fsio.exists(out[vid]):
                raise UserError(f"{self.benchmark} [dataset.videos]: video {vid} of the {split} split not found "
                                f"({out[vid] or fsio.join(self.folder or '<dataset.videos>', vid + '.mp4')}); "
                                "docs/real_data.md says what to do about a missing video")
        return out

    def proposals(self, split: str):
        from tubes.proposals import DetectionsFile

        url = self.detections if split == "train" else self.test_detections
        if not url:
            key = "dataset.detections" if split == "train" else "dataset.test_detections"
            raise UserError(f"{self.benchmark} [{key}]: a detections file for the {split} videos is required "
                            "(docs/stvg.md, 'Detections file')")
        return DetectionsFile(url, name=f"{self.benchmark}-{split}")

    def train_truth(self) -> dict[str, TrainTruth]:
        return _truth_of(self._read(self.train))

    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        return {"annotations": self.test, **({"boxes": self.boxes} if self.boxes else {})}


STVG_KINDS = ("synthetic_stvg", "vidstg", "hcstvg")   # the STVG family's datasets (finetune/family_stvg.py)


def build_stvg_adapter(cfg) -> StvgAdapter:
    if cfg.kind == "synthetic_stvg":
        return SyntheticStvgAdapter(cfg.root)
    return VidstgAdapter(cfg.train, cfg.test, cfg.videos, cfg.detections, cfg.test_detections,
                         hcstvg=cfg.kind == "hcstvg", boxes=cfg.boxes)


__all__ = ["STVG_KINDS", "StvgAdapter", "SyntheticStvgAdapter", "TrainTruth", "VidstgAdapter", "build_stvg_adapter"]
