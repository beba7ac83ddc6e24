"""TaskFamily: what a kind of grounding task owns in a finetune, so that finetune.train.run is the same for all.

Two families (finetune/families.py): temporal (moments of a video, finetune/family_temporal.py: frame features,
the WSRA Batcher, ranked moments, Charades/DiDeMo/synthetic evaluators) and STVG (tubes, finetune/family_stvg.py:
region features and linked tubes, the STVG batcher, vidstg predictions). A head names its family in its HeadSpec;
a dataset kind belongs to exactly one family.
"""
from __future__ import annotations

import abc


class TaskFamily(abc.ABC):
    name: str = ""
    title: str = ""                  # how messages name its datasets ("an STVG dataset")
    kinds: tuple[str, ...] = ()      # the dataset.kind values it reads

    @abc.abstractmethod
    def adapter(self, dataset):
        """The dataset adapter (finetune.datasets.Adapter) of a DatasetConfig of one of `kinds`."""

    def validate(self, cfg, spec) -> None:
        """Pure checks of what this family cannot do with `cfg` (raise common.config.ConfigError)."""

    @abc.abstractmethod
    def store(self, cfg, adapter=None, key: str | None = None):
        """The feature store of `cfg` (missing, extract, load_all, missing_text, extract_text, text, key,
        mid_layer); `key` the export's key when already known."""

    def sentences(self, cfg, adapter) -> list[str]:
        """The sentences whose features the cache must hold (training and evaluation)."""
        return sorted({s.sentence for s in adapter.train_samples()} | {q.sentence for q in adapter.eval_queries()})

    @abc.abstractmethod
    def batcher(self, cfg, spec, head, samples, videos: dict, store, adapter, encoder=None) -> tuple[object, dict]:
        """(the training batcher (batch(step) -> (TrainBatch, samples, tokens)), facts for the run's summary)."""

    @abc.abstractmethod
    def live_features(self, module, videos: dict, adapter, cfg) -> tuple[dict, object]:
        """End to end: the test videos' features recomputed with the finetuned encoder, and a text function."""

    def durations(self, videos: dict) -> dict[str, float]:
        """Video lengths the evaluation files need (none by default)."""
        return {}

    @abc.abstractmethod
    def predict(self, head, spec, cfg, adapter, queries, videos: dict, text_of) -> dict:
        """{query key: prediction} in the evaluator's format of adapter.benchmark."""

    def other_formats(self, adapter, files: dict, predictions: str, out_dir: str) -> dict[str, str]:
        """The predictions at `predictions` also written in other tools' formats, beside them: {name: URL}."""
        return {}


__all__ = ["TaskFamily"]
