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
    also tubedetr_predictions.json + tubedetr_video_predictions.json, TubeDETR's evaluator's inputs), eval.json (the evaluator's metrics and counts), summary.json.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import time

import numpy as np
import torch
from torch import nn

from common import cli
from common import config as cfglib
from common import fsio
from finetune import predict as P
from finetune.config import STVG_DATASETS, FinetuneConfig, resolve, to_dict, train_settings
from finetune.datasets import Adapter, WeakSample, build_adapter
from finetune.features import FeatureStore, TextFeatures, VideoFeatures, centered, encode_video, load_encoder
from finetune.heads import GroundingHead, TextBatch, TrainBatch, VideoBatch, build_head, head_class
from trainer.loop import Task

log = logging.getLogger(__name__)


# --- features -------------------------------------------------------------------------------------------------
def feature_store(cfg: FinetuneConfig, key: str | None = None) -> FeatureStore:
    """The cache this finetune reads: frame features, or for an STVG dataset region features and tubes
    (finetune/stvg_features.py, the same calls)."""
    f = cfg.features
    if cfg.dataset.kind in STVG_DATASETS:
        from finetune.stvg_features import StvgStore

        return StvgStore(cfg, build_adapter(cfg.dataset), key)
    return FeatureStore(f.cache, cfg.checkpoint, f.fps, f.size, regions=f.regions or head_class(cfg.head).needs_regions,
                        pixels=f.end_to_end, key=key)


def train_videos(cfg: FinetuneConfig, adapter: Adapter) -> dict[str, str]:
    videos = adapter.videos("train")
    if cfg.dataset.max_train_videos > 0:
        videos = dict(list(videos.items())[: cfg.dataset.max_train_videos])
    return videos


def prepare(cfg: FinetuneConfig, adapter: Adapter | None = None, model=None) -> dict:
    """Extract whatever the cache lacks for this finetune (train and test videos, all sentences); returns counts.
    The encoder is loaded only when something is missing. Sweeps call this once before their tasks, so the
    tasks only read the cache."""
    adapter = adapter or build_adapter(cfg.dataset)
    store = feature_store(cfg)
    videos = {**train_videos(cfg, adapter), **adapter.videos("test")}
    # end to end the module encodes the text itself; an STVG batch still takes the cached sentences' word spans
    live_text = cfg.features.end_to_end and cfg.dataset.kind not in STVG_DATASETS
    sentences = [] if live_text else sorted(
        {s.sentence for s in adapter.train_samples()} | {q.sentence for q in adapter.eval_queries()})
    todo = store.missing(videos)
    if model is None and ((todo and not live_text) or store.missing_text(sentences)):
        model = load_encoder(cfg.checkpoint)
    counts = store.extract(todo, model, cfg.features.batch_frames)
    counts.update(videos=len(videos), cached=len(videos) - len(todo))
    counts["new_sentences"] = store.extract_text(sentences, model) if sentences else 0
    counts["model_key"] = store.key
    return counts


# --- batches --------------------------------------------------------------------------------------------------
def _subsample(n: int, most: int) -> np.ndarray:
    if most <= 0 or n <= most:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, most)).astype(np.int64)


def _stack(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, ...) zero-padded and its (B, T) validity mask from arrays of T_i rows (None: an empty row)."""
    ref = next(r for r in rows if r is not None)
    t = max(len(r) for r in rows if r is not None)
    out = np.zeros((len(rows), t, *ref.shape[1:]), dtype=ref.dtype)
    mask = np.zeros((len(rows), t), dtype=bool)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, :len(r)] = r
            mask[i, :len(r)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class Batcher:
    """Step s's batch: batch_size distinct videos drawn with a generator seeded by (seed, s), each with up to
    queries_per_video of its weak queries (one row per query; with more than one, a video's other queries are
    negatives for it too), and, when a pseudo-positive table is given, one gated pseudo-positive video per row
    (Eq. 10's lambda from the table's caption cosine)."""

    def __init__(self, cfg: FinetuneConfig, samples: list[WeakSample], videos: dict[str, VideoFeatures],
                 text_of, table: dict | None = None, tokenize=None, regions: bool = False):
        self.cfg = cfg
        self.regions = regions
        self.videos = videos
        self.text_of = text_of
        self.tokenize = tokenize
        self.by_video: dict[str, list[WeakSample]] = {}
        for s in samples:
            if s.video in videos:
                self.by_video.setdefault(s.video, []).append(s)
        self.vids = sorted(self.by_video)
        if len(self.vids) < 2:
            raise ValueError(f"{len(self.vids)} training video(s) with features and weak queries; need >= 2")
        self.video_of_key = {s.key: s.video for s in samples}
        self.table = table or {}

    def _positive(self, rng, sample: WeakSample) -> str | None:
        gated = [n for n, _, cos in self.table.get(sample.key, ())
                 if cos > self.cfg.wsra.crov_tau and self.video_of_key.get(n) in self.videos
                 and self.video_of_key[n] != sample.video]
        return self.video_of_key[gated[int(rng.integers(len(gated)))]] if gated else None

    def _pad(self, vids: list[str | None]) -> VideoBatch:
        """Rows padded to the longest video (a None row is all padding); pixels instead of features end to end;
        region features too when the head asks for them."""
        pixels = self.cfg.features.end_to_end
        rows, regions = [], []
        for v in vids:
            f = self.videos[v] if v is not None else None
            idx = _subsample(len(f.times), self.cfg.features.max_frames) if f is not None else None
            rows.append(None if f is None else f.pixels[idx] if pixels else f.frames[idx].astype(np.float32))
            regions.append(None if f is None or not self.regions else f.regions[idx].astype(np.float32))
        out, mask = _stack(rows)
        if not self.regions:
            return VideoBatch(out, mask)
        reg, _ = _stack(regions)
        return VideoBatch(out, mask, reg, mask.unsqueeze(-1).expand(*reg.shape[:3]))

    def batch(self, step: int) -> tuple[TrainBatch, list[WeakSample], torch.Tensor | None]:
        rng = np.random.default_rng([self.cfg.seed, step])
        n = min(self.cfg.batch_size, len(self.vids))
        picked = [self.vids[i] for i in rng.choice(len(self.vids), size=n, replace=False)]
        chosen, samples, groups = [], [], []
        for g, v in enumerate(picked):
            own = self.by_video[v]
            for i in rng.choice(len(own), size=min(self.cfg.queries_per_video, len(own)), replace=False):
                chosen.append(v)
                samples.append(own[int(i)])
                groups.append(g)
        video = self._pad(chosen)
        sentences = [s.sentence for s in samples]
        tokens = None
        if self.tokenize is not None:  # end to end: the module encodes the text itself
            tokens = self.tokenize(sentences)
            text = TextBatch(torch.zeros(len(samples), 0))
        else:
            tf = self.text_of(sentences)
            text = TextBatch(torch.from_numpy(tf.sentence), torch.from_numpy(tf.words),
                             torch.from_numpy(tf.word_mask))
        positive, gate = None, None
        if self.table:
            pos = [self._positive(rng, s) for s in samples]
            if any(p is not None for p in pos):
                positive = self._pad(pos)
                gate = torch.tensor([p is not None for p in pos], dtype=torch.float32)
        return TrainBatch(video, text, positive, gate, torch.tensor(groups)), samples, tokens


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

    def __init__(self, batcher: Batcher, device):
        self.batcher, self.device = batcher, device

    def inputs(self, step: int, micro: int) -> dict:
        batch, _, tokens = self.batcher.batch(step)
        inputs = {"batch": batch.to(self.device), "step": step}
        if tokens is not None:
            inputs["tokens"] = tokens.to(self.device)
        return inputs


# --- the run --------------------------------------------------------------------------------------------------
def _read_table(cfg: FinetuneConfig, samples: list[WeakSample]) -> tuple[dict | None, dict]:
    if not cfg.pseudo_positives or cfg.wsra.beta <= 0:
        return None, {}
    from index.mining import read_table

    table, counts = read_table(cfg.pseudo_positives, {s.key for s in samples}, strict=False)
    return table, {"rows": len(table), **counts}


def _live_features(module: FinetuneModule, videos: dict[str, VideoFeatures], batch: int):
    """End to end: frame features of the (finetuned) encoder for every video, and a text encoder function."""
    enc = module.encoder
    out = {}
    with torch.no_grad():
        for vid, f in videos.items():
            g, _ = encode_video(enc, f.pixels, batch, False)
            out[vid] = VideoFeatures(vid, g, f.times, f.duration)

    return out, _live_text(enc)


def _live_text(enc):
    def text_of(sentences):
        with torch.no_grad():
            g, w, m = enc.encode_text(enc.tokenize(list(sentences)))
        return TextFeatures(g.float().cpu().numpy(), w.float().cpu().numpy(), m.cpu().numpy())

    return text_of


def _live_stvg_features(module: FinetuneModule, videos: dict, paths: dict[str, str], cfg: FinetuneConfig):
    """End to end on an STVG dataset: each test video's region features (and multi-scale ones) recomputed with the
    finetuned encoder, and a text encoder function. The linked tubes stay those of the cached features (only the
    fsm head trains end to end, and its boxes are per frame, not a chosen tube)."""
    from grounding.inference import CropGeometry
    from tubes.pipeline import video_pixels
    from tubes.regions import region_features

    enc = module.encoder
    out = {}
    for vid, vt in videos.items():
        frames, _ = video_pixels(vid, paths[vid], vt.proposals, enc.image_size)
        regions, glob, *mid = region_features(enc, frames, vt.proposals, CropGeometry(*vt.size, enc.image_size),
                                              cfg.tubes.roi_output, cfg.tubes.batch_frames, module.mid_layer)
        out[vid] = dataclasses.replace(vt, regions=regions, frames=glob, regions_mid=mid[0] if mid else None)
    return out, _live_text(enc)


def _state_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def check_relaunch(cfg: FinetuneConfig) -> None:
    """A (resolved) finetune into an existing run folder may change only finetune.config.RESUMABLE."""
    from finetune.config import RESUMABLE
    from trainer.engine import ds_config, load_ds_file
    from trainer.run_folder import refuse_changes

    refuse_changes(cfg.run, to_dict(cfg), RESUMABLE, ds_config(train_settings(cfg), 1, base=load_ds_file(cfg.deepspeed)),
                   defaults=to_dict(FinetuneConfig()))


def run(cfg: FinetuneConfig) -> dict:
    """Train (or resume) and evaluate one finetune; returns its summary (also written to summary.json)."""
    from trainer.engine import build_engine, ds_config, init_distributed, load_ds_file
    from trainer.loop import fit

    t0 = time.time()
    cfg = resolve(cfg)
    check_relaunch(cfg)
    fsio.makedirs(cfg.run)
    cfglib.dump(cfg, fsio.join(cfg.run, "config.yaml"))
    adapter = build_adapter(cfg.dataset)
    samples = adapter.train_samples()
    queries = adapter.eval_queries()
    feature_counts = prepare(cfg, adapter)
    store = feature_store(cfg, feature_counts["model_key"])
    train_feats = store.load_all(train_videos(cfg, adapter))
    test_feats = store.load_all(adapter.videos("test"))
    if cfg.features.center:
        train_feats = {v: centered(f) for v, f in train_feats.items()}
        test_feats = {v: centered(f) for v, f in test_feats.items()}

    encoder = None
    if cfg.features.end_to_end:
        encoder = load_encoder(cfg.checkpoint).train()
        dim = encoder.cfg.embed_dim
        text_of = None
    else:
        dim = next(iter(train_feats.values())).frames.shape[1]
        text_of = store.text
    # the head's initial weights (the untrained baseline uses the same), drawn after the encoder is built so an
    # end-to-end head starts as the cached-feature one
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, dim, cfg)
    module = FinetuneModule(head, encoder, cfg.tubes.roi_output, getattr(store, "mid_layer", 0))
    table, table_counts = _read_table(cfg, samples)
    stvg = cfg.dataset.kind in STVG_DATASETS
    if stvg:  # the train truth is read only for a supervised head (finetune/datasets_stvg.py)
        from finetune.stvg_batches import StvgBatcher
        from finetune.stvg_features import tokenizer_of

        tokenizer = tokenizer_of(cfg.checkpoint)
        if encoder is not None:   # end to end: each training video decoded once, its crops kept in memory
            from finetune.stvg_features import with_pixels

            train_feats = with_pixels(train_feats, train_videos(cfg, adapter), encoder.image_size,
                                      cfg.features.max_frames)
        # text from the sentence cache alone: nothing the batcher holds leads back to the adapter
        batcher = StvgBatcher(cfg, samples, train_feats, store.text_store.text, tokenizer,
                              truth=adapter.train_truth() if head.supervised else None,
                              tokenize=None if encoder is None else encoder.tokenize)
    else:
        batcher = Batcher(cfg, samples, train_feats, text_of, table,
                          encoder.tokenize if encoder is not None else None,
                          regions=head.needs_regions and encoder is None)

    settings = train_settings(cfg)
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
                                                             "config": to_dict(cfg)[cfg.head]})
    if encoder is not None:
        fsio.write_bytes_atomic(fsio.join(cfg.run, "encoder.pt"), _state_bytes(encoder))
        if stvg:
            test_feats, text_of = _live_stvg_features(module, test_feats, adapter.videos("test"), cfg)
        else:
            test_feats, text_of = _live_features(module, test_feats, cfg.features.batch_frames)

    durations = {} if stvg else {v: f.duration for v, f in test_feats.items()}
    files = adapter.write_eval_files(fsio.join(cfg.run, "eval"), durations)
    if stvg:
        preds = P.predict_stvg(head, queries, test_feats, text_of, tokenizer)
    else:
        preds = P.predict(head, adapter.benchmark, queries, test_feats, text_of, cfg.features.fps,
                          mode=cfg.wsra.moment_score)
    pred_url = fsio.join(cfg.run, "predictions.json")
    fsio.write_json_atomic(pred_url, preds)
    tubedetr = P.write_tubedetr(adapter.benchmark, files, pred_url, cfg.run) if stvg else {}
    summary = {"run": cfg.run, "head": cfg.head, "seed": cfg.seed, "benchmark": adapter.benchmark,
               "steps": step, "trained": cfg.train, "first_loss": first_loss, "last": last_metrics,
               "features": feature_counts, "pseudo_positives": table_counts,
               "train_videos": len(batcher.vids), "train_samples": sum(len(v) for v in batcher.by_video.values()),
               "eval_queries": len(queries), "predicted_queries": len(preds), "predictions": pred_url,
               **({"tubedetr_predictions": tubedetr} if tubedetr else {})}
    if cfg.evaluate:
        metrics, counts = P.evaluate(adapter.benchmark, files, pred_url)
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
    cfg = cfglib.parse(FinetuneConfig, argv, __doc__.splitlines()[0])
    print(json.dumps(run(cfg), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

