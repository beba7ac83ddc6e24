"""The temporal family: where in a video a sentence happens (synthetic corpus, Charades-STA, DiDeMo).

Frame features (finetune/features.py, region features too for a head that asks), the WSRA Batcher
(finetune/batches.py, with the pseudo-positive pairs a head may train on), ranked moments (finetune/predict.py)
scored by the benchmark's evaluator. End to end, the module encodes pixels and text itself.
"""
from __future__ import annotations

import torch

from common.config import ConfigError
from finetune import datasets
from finetune import predict as P
from finetune.batches import Batcher
from finetune.family import TaskFamily
from finetune.features import FeatureStore, TextFeatures, VideoFeatures, encode_video
from finetune.heads.registry import spec_of


def live_text(enc):
    """A text function of the (finetuned) encoder: sentences -> TextFeatures."""
    def text_of(sentences):
        with torch.no_grad():
            g, w, m = enc.encode_text(enc.tokenize(list(sentences)))
        return TextFeatures(g.float().cpu().numpy(), w.float().cpu().numpy(), m.cpu().numpy())

    return text_of


def read_pairs(cfg, spec, samples) -> tuple[dict | None, dict]:
    """The pseudo-positive table's rows of these samples when the head trains on them, with its counts."""
    if not cfg.pseudo_positives or spec.pseudo_positives(spec.section(cfg)) is None:
        return None, {}
    from index.mining import read_table

    table, counts = read_table(cfg.pseudo_positives, {s.key for s in samples}, strict=False)
    return table, {"rows": len(table), **counts}


class TemporalFamily(TaskFamily):
    name = "temporal"
    title = "a temporal"
    kinds = datasets.KINDS

    def adapter(self, dataset):
        return datasets.build_adapter(dataset)

    def validate(self, cfg, spec) -> None:
        if cfg.features.center and cfg.features.end_to_end:
            raise ConfigError("features.center applies to cached features; it cannot be combined with "
                              "features.end_to_end")

    def store(self, cfg, adapter=None, key: str | None = None):
        f = cfg.features
        return FeatureStore(f.cache, cfg.checkpoint, f.fps, f.size, regions=f.regions or spec_of(cfg.head).regions,
                            pixels=f.end_to_end, key=key)

    def sentences(self, cfg, adapter) -> list[str]:
        # end to end the module encodes the text itself
        return [] if cfg.features.end_to_end else super().sentences(cfg, adapter)

    def batcher(self, cfg, spec, head, samples, videos, store, adapter, encoder=None):
        table, counts = read_pairs(cfg, spec, samples)
        gate = spec.pseudo_positives(spec.section(cfg))
        batcher = Batcher(cfg, samples, videos, None if encoder is not None else store.text, table,
                          encoder.tokenize if encoder is not None else None,
                          regions=spec.regions and encoder is None, gate=1.0 if gate is None else gate)
        return batcher, {"pseudo_positives": counts}

    def live_features(self, module, videos, adapter, cfg):
        enc = module.encoder
        out = {}
        with torch.no_grad():
            for vid, f in videos.items():
                g, _ = encode_video(enc, f.pixels, cfg.features.batch_frames, False)
                out[vid] = VideoFeatures(vid, g, f.times, f.duration)
        return out, live_text(enc)

    def durations(self, videos):
        return {v: f.duration for v, f in videos.items()}

    def predict(self, head, spec, cfg, adapter, queries, videos, text_of):
        return P.predict(head, adapter.benchmark, queries, videos, text_of, cfg.features.fps,
                         **spec.predict_options(spec.section(cfg)))


__all__ = ["TemporalFamily", "live_text", "read_pairs"]
