"""One finetune: features (cached) -> head trained with DeepSpeed -> predictions -> `python -m grounding.evaluate`.

    python -m finetune.train --config configs/finetune/wsra_synthetic.yaml checkpoint=RUN/export \
        dataset.root=CORPUS [key=value ...]

Runs in one process without Ray (cluster/finetune.py runs the same `run` as Ray tasks). Training is the trainer
package's (trainer.loop.fit on FinetuneConfig's trainer settings: torch Adam handed to DeepSpeed, ZeRO from the
JSON, fp32, one-rank gloo group, nccl on GPU; checkpoints with the complete marker and keep_last; the run log).
This file keeps what is finetuning's: features, batches (the batch of step s is drawn from a generator seeded
with (seed, s), so a resume needs no data state), the head, predictions and evaluation. A new head plugs in
through finetune/heads, never through the trainer. Everything lands in the run folder:
    config.yaml, deepspeed.json, logs/, tensorboard/, checkpoints/, head.pt + head.json,
    eval/ (annotation files the evaluator reads, when the dataset needs them written), predictions.json (STVG:
    also tubedetr_predictions.json + tubedetr_video_predictions.json, TubeDETR's evaluator's inputs), eval.json
    (the evaluator's metrics and counts), summary.json.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import time

import torch
from torch import nn

from common import cli
from common import fsio
from finetune import config as C
from finetune.datasets import Adapter, train_videos
from finetune.families import family_of
from finetune.features import centered, load_encoder
from finetune.heads import GroundingHead, TrainBatch, VideoBatch
from finetune.heads.registry import names, spec_of
from trainer.loop import Task

log = logging.getLogger(__name__)


# --- features -------------------------------------------------------------------------------------------------
def feature_store(cfg, key: str | None = None, adapter: Adapter | None = None):
    """The cache this finetune reads: its task family's store (frame features, or region features and tubes)."""
    family = family_of(cfg)
    return family.store(cfg, adapter, key)


def prepare(cfg, adapter: Adapter | None = None, model=None, store=None) -> dict:
    """Extract whatever the cache lacks for this finetune (train and test videos, all sentences); returns counts.
    The encoder is loaded only when something is missing. Sweeps call this once before their tasks, so the
    tasks only read the cache."""
    family = family_of(cfg)
    adapter = adapter or family.adapter(cfg.dataset)
    store = store or family.store(cfg, adapter)
    videos = {**train_videos(cfg, adapter), **adapter.videos("test")}
    # end to end the temporal module encodes the text itself (no sentences); an STVG batch still takes the cached
    # sentences' word spans
    sentences = family.sentences(cfg, adapter)
    todo = store.missing(videos)
    if model is None and ((todo and sentences) or store.missing_text(sentences)):
        model = load_encoder(cfg.checkpoint)
    counts = store.extract(todo, model, cfg.features.batch_frames)
    counts.update(videos=len(videos), cached=len(videos) - len(todo))
    counts["new_sentences"] = store.extract_text(sentences, model) if sentences else 0
    counts["model_key"] = store.key
    return counts


class FinetuneModule(nn.Module):
    """What DeepSpeed wraps: the head, and in end-to-end mode the encoder whose features feed it. An STVG batch
    end to end carries its frames' pixels: region features are RoI-Aligned on the live patch grid (and on the grid
    of visual block `mid_layer` for multi-scale), `roi_output` bins as the cache's."""

    def __init__(self, head: GroundingHead, encoder: nn.Module | None = None, roi_output: int = 2,
                 mid_layer: int = 0):
        super().__init__()
        self.head = head
        self.encoder = encoder
        self.roi_output, self.mid_layer = roi_output, mid_layer

    def encode_video(self, video: VideoBatch) -> VideoBatch:
        if self.encoder is None:
            return video
        if video.pixels is not None and video.geometry is not None:
            from tubes.regions import live_region_features

            g, regions, mid = live_region_features(self.encoder, video.pixels, video.geometry.boxes,
                                                   video.region_mask, video.geometry.size, self.roi_output,
                                                   self.mid_layer)
            return dataclasses.replace(video, frames=g, regions=regions, regions_mid=mid, pixels=None)
        g, _, _ = self.encoder.encode_frames(video.frames)   # uint8 pixels -> (B, T, d)
        return VideoBatch(g, video.mask)

    def forward(self, inputs: dict) -> dict:
        batch: TrainBatch = inputs["batch"]
        if "step" in inputs:
            self.head.at_step(int(inputs["step"]))
        if self.encoder is not None:
            sentence, words, mask = self.encoder.encode_text(inputs["tokens"])
            # the raw sentences, word spans and STVG targets stay; the features are the live encoder's
            batch = dataclasses.replace(
                batch, video=self.encode_video(batch.video),
                text=dataclasses.replace(batch.text, sentence=sentence, words=words, word_mask=mask),
                positive=None if batch.positive is None else self.encode_video(batch.positive))
        return self.head.loss(batch)


class BatchTask(Task):
    """The trainer's view of a finetune: step s's batch from the Batcher, on the engine's device."""

    def __init__(self, batcher, device):
        self.batcher, self.device = batcher, device

    def inputs(self, step: int, micro: int) -> dict:
        batch, _, tokens = self.batcher.batch(step)
        inputs = {"batch": batch.to(self.device), "step": step}
        if tokens is not None:
            inputs["tokens"] = tokens.to(self.device)
        return inputs


# --- the run --------------------------------------------------------------------------------------------------
def _state_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def check_dataset(cfg):
    """The dataset's two splits are readable and the training split has >= 2 videos (the in-batch negatives are
    other videos' queries): one error line before anything is written or Ray is started (issue 29), not a
    traceback from the batcher after the features are extracted. Returns (adapter, train samples, eval queries),
    so a run reads its splits once."""
    from common.config import ConfigError

    adapter = family_of(cfg).adapter(cfg.dataset)
    videos = train_videos(cfg, adapter)
    samples, queries = adapter.train_samples(), adapter.eval_queries()
    n = len({s.video for s in samples if s.video in videos})
    if n < 2:
        raise ConfigError(f"dataset [{cfg.dataset.root or cfg.dataset.train}]: {n} training video(s) with queries; "
                            "a finetune needs >= 2 (each batch's negatives are the other videos' queries)")
    return adapter, samples, queries


def check_relaunch(cfg) -> None:
    """A (resolved) finetune into an existing run folder may change only finetune.config.RESUMABLE."""
    from trainer.engine import ds_config, load_ds_file
    from trainer.run_folder import refuse_changes

    # other heads' sections do not touch this run: a head registered in one process and not in another (a plugin,
    # a test's toy head) must not make a resume look like another run
    others = tuple(name for name in names() if name != cfg.head)
    refuse_changes(cfg.run, C.to_dict(cfg), C.RESUMABLE + others,
                   ds_config(C.train_settings(cfg), 1, base=load_ds_file(cfg.deepspeed)),
                   defaults=C.to_dict(C.config_class()()))


def run(cfg, store=None) -> dict:
    """Train (or resume) and evaluate one finetune; returns its summary (also written to summary.json).

    The same for every task family and head: the family (finetune/families.py) gives the store, the batcher, the
    predictions and the evaluation files, the head's spec (finetune/heads/registry.py) the head. `store`: a feature
    store of this config's family to read from (a caller running several finetunes over the same features keeps
    one, e.g. finetune/sweep.py); by default the family's own."""
    from trainer.engine import build_engine, ds_config, init_distributed, load_ds_file
    from trainer.loop import fit

    t0 = time.time()
    C.validate(cfg)
    cfg = C.resolve(cfg)
    C.check_inputs(cfg)
    adapter, samples, queries = check_dataset(cfg)
    check_relaunch(cfg)
    fsio.makedirs(cfg.run)
    C.dump(cfg, fsio.join(cfg.run, "config.yaml"))
    spec, family = spec_of(cfg.head), family_of(cfg)
    store = store or family.store(cfg, adapter)
    feature_counts = prepare(cfg, adapter, store=store)
    train_feats = store.load_all(train_videos(cfg, adapter))
    test_feats = store.load_all(adapter.videos("test"))
    if cfg.features.center:
        train_feats = {v: centered(f) for v, f in train_feats.items()}
        test_feats = {v: centered(f) for v, f in test_feats.items()}

    encoder = None
    if cfg.features.end_to_end:
        encoder = load_encoder(cfg.checkpoint).train()
        dim = encoder.cfg.embed_dim
    else:
        dim = next(iter(train_feats.values())).frames.shape[1]
    # the head's initial weights (the untrained baseline uses the same), drawn after the encoder is built so an
    # end-to-end head starts as the cached-feature one
    torch.manual_seed(cfg.seed)
    head = spec.build(dim, cfg)
    module = FinetuneModule(head, encoder, cfg.tubes.roi_output, store.mid_layer)
    batcher, batch_facts = family.batcher(cfg, spec, head, samples, train_feats, store, adapter, encoder)

    settings = C.train_settings(cfg)
    ds_base = load_ds_file(cfg.deepspeed)
    fsio.write_json_atomic(fsio.join(cfg.run, "deepspeed.json"), ds_config(settings, 1, base=ds_base))
    step, first_loss, last_metrics = 0, None, {}
    if cfg.train:
        init_distributed(single=True)
        engine, _ = build_engine(module, settings, 1, base=ds_base)
        out = fit(engine, BatchTask(batcher, engine.device), settings)
        step, first_loss, last_metrics = out.step, out.first_loss, out.metrics
    module.eval()

    fsio.write_bytes_atomic(fsio.join(cfg.run, "head.pt"), _state_bytes(head))
    fsio.write_json_atomic(fsio.join(cfg.run, "head.json"), {"head": cfg.head, "dim": dim, "step": step,
                                                             "config": C.to_dict(spec.section(cfg))})
    text_of = store.text
    if encoder is not None:
        fsio.write_bytes_atomic(fsio.join(cfg.run, "encoder.pt"), _state_bytes(encoder))
        test_feats, text_of = family.live_features(module, test_feats, adapter, cfg)

    files = adapter.write_eval_files(fsio.join(cfg.run, "eval"), family.durations(test_feats))
    preds = family.predict(head, spec, cfg, adapter, queries, test_feats, text_of)
    pred_url = fsio.join(cfg.run, "predictions.json")
    fsio.write_json_atomic(pred_url, preds)
    other = family.other_formats(adapter, files, pred_url, cfg.run)
    summary = {"run": cfg.run, "head": cfg.head, "seed": cfg.seed, "benchmark": adapter.benchmark,
               "steps": step, "trained": cfg.train, "first_loss": first_loss, "last": last_metrics,
               "features": feature_counts, "pseudo_positives": batch_facts.get("pseudo_positives", {}),
               "train_videos": len(batcher.vids), "train_samples": sum(len(v) for v in batcher.by_video.values()),
               "eval_queries": len(queries), "predicted_queries": len(preds), "predictions": pred_url,
               **({"tubedetr_predictions": other} if other else {})}
    if cfg.evaluate:
        from finetune.predict import evaluate

        metrics, counts = evaluate(adapter.benchmark, files, pred_url)
        fsio.write_json_atomic(fsio.join(cfg.run, "eval.json"), {"benchmark": adapter.benchmark,
                                                                 "metrics": metrics, "counts": counts,
                                                                 **files, "predictions": pred_url})
        summary["metrics"] = metrics
        summary["eval"] = fsio.join(cfg.run, "eval.json")
    summary["seconds"] = round(time.time() - t0, 2)
    fsio.write_json_atomic(fsio.join(cfg.run, "summary.json"), summary)
    return summary


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = C.parse(argv, __doc__.splitlines()[0])
    print(json.dumps(run(cfg), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

