"""Dataset adapters: one benchmark's files -> weak training samples, videos, evaluation queries, and the files the
evaluator (`python -m grounding.evaluate`) reads.

Weak supervision (WSRA Sec. 3) means a training sample is a (video, sentence) pair whose time span is never used:
- synthetic: every ASR caption of the train split (caption.json), keyed like its shard sample
  (`<vid>__s<segment:04d>`, docs/contracts.md section 2) so pseudo-positive tables (section 4) apply directly;
- charades_sta: every line of charades_sta_train.txt (its start/end are ignored);
- didemo: every item of train_data.json (its `times` are ignored).

Evaluation queries come from the benchmarks' own readers (grounding.readers). For the synthetic corpus the queries
are the truth steps of the test split (truth/ground_seg.json) and the evaluation is Charades-STA's protocol
(R@{1,5} at IoU 0.3/0.5/0.7 and mIoU over ranked moments): the task WSRA solves is "where is this sentence", one
ranked list of moments per query, which is exactly charades_sta's input; GroundingYouTube's per-second format
would instead ask for a background decision and an action pool per second, which a referring-attention head does
not produce. `write_eval_files` writes a Charades-style annotation (`vid start end##sentence`, a truth segment
[s, e] of whole seconds covers [s, e + 1) s, as docs/evaluation.md reads GroundingYouTube segments) and the
`Charades_v1_test.csv` of video lengths beside it.
"""
from __future__ import annotations

import abc
import csv
import io
from dataclasses import dataclass

from common import fsio


@dataclass(frozen=True)
class WeakSample:
    key: str        # unique; the pseudo-positive table's key for this sample
    video: str      # video id (the feature cache key)
    sentence: str


@dataclass(frozen=True)
class EvalQuery:
    key: str        # the prediction file's key for this query
    video: str
    sentence: str


class Adapter(abc.ABC):
    """What a finetune needs from a benchmark. `benchmark` names grounding.evaluate's protocol; an adapter that
    lacks one of the methods below cannot be built."""

    benchmark: str = ""

    @abc.abstractmethod
    def train_samples(self) -> list[WeakSample]:
        """The weak (video, sentence) training pairs."""

    @abc.abstractmethod
    def eval_queries(self) -> list[EvalQuery]:
        """The queries predictions are made for."""

    @abc.abstractmethod
    def videos(self, split: str) -> dict[str, str]:
        """video id -> path (local or URL) of the split's videos ("train" | "test")."""

    @abc.abstractmethod
    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        """The evaluator's inputs besides the predictions: {"annotations": URL[, "durations": URL]}."""


def video_folder(folder: str, names: set[str], exts=(".mp4", "")) -> dict[str, str]:
    """id -> path for ids found in `folder` (as <id>.mp4 or the file name itself); absent ids are left out (the
    feature extractor counts them)."""
    if not folder:
        return {}
    out = {}
    for n in sorted(names):
        for ext in exts:
            url = fsio.join(folder, n + ext)
            if fsio.exists(url):
                out[n] = url
                break
    return out


class SyntheticAdapter(Adapter):
    benchmark = "charades_sta"

    def __init__(self, root: str):
        self.root = root

    def _manifest(self, split: str) -> dict[str, str]:
        from shards.corpus import read_manifest

        return {v.video_id: v.path for v in read_manifest(fsio.join(self.root, split, "manifest.csv"))}

    def train_samples(self) -> list[WeakSample]:
        from shards.tarwriter import sample_key

        captions = fsio.read_json(fsio.join(self.root, "train", "caption.json"))
        known = self._manifest("train")
        out = []
        for vid, cap in captions.items():
            if vid not in known:
                continue
            for i, text in enumerate(cap["text"]):
                if str(text).strip():
                    out.append(WeakSample(sample_key(vid, i), vid, str(text).strip()))
        return out

    def _truth(self) -> dict[str, list[dict]]:
        return fsio.read_json(fsio.join(self.root, "test", "truth", "ground_seg.json"))

    def eval_queries(self) -> list[EvalQuery]:
        out = []
        for vid, segs in self._truth().items():
            for s in segs:
                out.append(EvalQuery(str(len(out)), vid, str(s["sentence"])))
        return out

    def videos(self, split: str) -> dict[str, str]:
        return self._manifest(split)

    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        lines = []
        for vid, segs in self._truth().items():
            for s in segs:
                start, end = float(s["segment"][0]), float(s["segment"][1]) + 1.0
                lines.append(f"{vid} {start:.2f} {end:.2f}##{s['sentence']}")
        ann = fsio.join(out_dir, "charades_sta_test.txt")
        fsio.write_text_atomic(ann, "\n".join(lines) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "length"])
        for vid in sorted(durations):
            w.writerow([vid, f"{durations[vid]:.3f}"])
        dur = fsio.join(out_dir, "Charades_v1_test.csv")
        fsio.write_text_atomic(dur, buf.getvalue())
        return {"annotations": ann, "durations": dur}


class CharadesAdapter(Adapter):
    benchmark = "charades_sta"

    def __init__(self, train: str, test: str, durations: str, videos: str):
        self.train, self.test, self.durations, self.folder = train, test, durations, videos

    def train_samples(self) -> list[WeakSample]:
        if not self.train:
            return []
        out = []
        for n, line in enumerate(fsio.read_bytes(self.train).decode("utf-8-sig").splitlines()):
            if "##" not in line or not line.split("##", 1)[0].split():
                continue
            vid = line.split("##", 1)[0].split()[0]
            out.append(WeakSample(f"{vid}__l{n:05d}", vid, line.split("##", 1)[1].strip().rstrip(".")))
        return out

    def eval_queries(self) -> list[EvalQuery]:
        from grounding.readers import read_charades_sta

        queries, _ = read_charades_sta(self.test, self.durations or None)
        return [EvalQuery(q.key, q.video, q.sentence) for q in queries]

    def videos(self, split: str) -> dict[str, str]:
        ids = {s.video for s in self.train_samples()} if split == "train" else {q.video for q in self.eval_queries()}
        return video_folder(self.folder, ids)

    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        out = {"annotations": self.test}
        if self.durations:
            out["durations"] = self.durations
        return out


class DidemoAdapter(Adapter):
    benchmark = "didemo"

    def __init__(self, train: str, test: str, videos: str):
        self.train, self.test, self.folder = train, test, videos

    def train_samples(self) -> list[WeakSample]:
        from grounding.readers import read_didemo

        if not self.train:
            return []
        return [WeakSample(q.key, q.video, q.description) for q in read_didemo(self.train)]

    def eval_queries(self) -> list[EvalQuery]:
        from grounding.readers import read_didemo

        return [EvalQuery(q.key, q.video, q.description) for q in read_didemo(self.test)]

    def videos(self, split: str) -> dict[str, str]:
        ids = {s.video for s in self.train_samples()} if split == "train" else {q.video for q in self.eval_queries()}
        return video_folder(self.folder, ids, exts=("", ".mp4"))

    def write_eval_files(self, out_dir: str, durations: dict[str, float]) -> dict[str, str]:
        return {"annotations": self.test}


def train_videos(cfg, adapter: Adapter) -> dict[str, str]:
    """The training videos of a FinetuneConfig's dataset: all of the adapter's, or the first dataset.max_train_videos."""
    videos = adapter.videos("train")
    if cfg.dataset.max_train_videos > 0:
        videos = dict(list(videos.items())[: cfg.dataset.max_train_videos])
    return videos


KINDS = ("synthetic", "charades_sta", "didemo")   # the temporal family's datasets (finetune/family_temporal.py)


def build_adapter(cfg) -> Adapter:
    """The adapter of a DatasetConfig of one of KINDS."""
    if cfg.kind == "synthetic":
        return SyntheticAdapter(cfg.root)
    if cfg.kind == "charades_sta":
        return CharadesAdapter(cfg.train, cfg.test, cfg.durations, cfg.videos)
    if cfg.kind == "didemo":
        return DidemoAdapter(cfg.train, cfg.test, cfg.videos)
    raise ValueError(f"unknown temporal dataset kind {cfg.kind!r}")


__all__ = ["Adapter", "CharadesAdapter", "DidemoAdapter", "EvalQuery", "KINDS", "SyntheticAdapter", "WeakSample",
           "build_adapter", "train_videos", "video_folder"]
