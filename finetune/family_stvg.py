"""The STVG family: where and when a sentence happens, as a tube (synthetic STVG corpus, VidSTG, HC-STVG).

Region features and linked tubes per video (finetune/stvg_features.py's StvgStore over tubes/), the STVG batcher
(finetune/stvg_batches.py: TubeGeometry, word spans, and the truth only for a supervised head), and vidstg
predictions of a head's TubeOutput (finetune/predict.py) scored by grounding.evaluate's vidstg (or hcstvg) protocol.
"""
from __future__ import annotations

import dataclasses

from common.config import ConfigError
from finetune import datasets, datasets_stvg
from finetune import predict as P
from finetune.family import TaskFamily
from finetune.family_temporal import live_text
from finetune.stvg_batches import StvgBatcher
from finetune.stvg_features import StvgStore, tokenizer_of, with_pixels


class StvgFamily(TaskFamily):
    name = "stvg"
    title = "an STVG"
    kinds = datasets_stvg.STVG_KINDS

    def adapter(self, dataset):
        return datasets_stvg.build_stvg_adapter(dataset)

    def validate(self, cfg, spec) -> None:
        cfg.tubes.validate()
        if cfg.features.center:
            raise ConfigError("features.center is not available for STVG datasets (region features are cached as "
                              "they are)")

    def store(self, cfg, adapter=None, key: str | None = None):
        return StvgStore(cfg, adapter or self.adapter(cfg.dataset), key)

    def batcher(self, cfg, spec, head, samples, videos, store, adapter, encoder=None):
        if encoder is not None:   # end to end: each training video decoded once, its crops kept in memory
            videos = with_pixels(videos, datasets.train_videos(cfg, adapter), encoder.image_size, cfg.features.max_frames)
        # text from the sentence cache alone: nothing the batcher holds leads back to the adapter; the train truth
        # is read only for a supervised head (finetune/datasets_stvg.py)
        batcher = StvgBatcher(cfg, samples, videos, store.text_store.text, tokenizer_of(cfg.checkpoint),
                              truth=adapter.train_truth() if spec.supervised else None,
                              tokenize=None if encoder is None else encoder.tokenize,
                              prep=spec.text_prep(spec.section(cfg)), said=spec.said(spec.section(cfg)))
        return batcher, {}

    def live_features(self, module, videos, adapter, cfg):
        """Each test video's region features (and multi-scale ones) recomputed with the finetuned encoder. The
        linked tubes stay those of the cached features (only a head whose spec allows end to end trains so, and
        its boxes are per frame, not a chosen tube)."""
        from grounding.inference import CropGeometry
        from tubes.pipeline import video_pixels
        from tubes.regions import region_features

        enc = module.encoder
        paths = adapter.videos("test")
        out = {}
        for vid, vt in videos.items():
            frames, _ = video_pixels(vid, paths[vid], vt.proposals, enc.image_size)
            regions, glob, *mid = region_features(enc, frames, vt.proposals, CropGeometry(*vt.size, enc.image_size),
                                                  cfg.tubes.roi_output, cfg.tubes.batch_frames, module.mid_layer)
            out[vid] = dataclasses.replace(vt, regions=regions, frames=glob, regions_mid=mid[0] if mid else None)
        return out, live_text(enc)

    def predict(self, head, spec, cfg, adapter, queries, videos, text_of, given=None):
        return P.predict_stvg(head, queries, videos, text_of, tokenizer_of(cfg.checkpoint),
                              spec.text_prep(spec.section(cfg)), cfg.span, given)

    def other_formats(self, adapter, files, predictions, out_dir):
        """TubeDETR's two prediction dicts, so its own evaluator can score the run too (docs/evaluation.md)."""
        return P.write_tubedetr(adapter.benchmark, files, predictions, out_dir)


__all__ = ["StvgFamily"]
