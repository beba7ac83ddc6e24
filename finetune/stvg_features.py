"""The STVG feature store: region features and linked tubes per video (tubes/, its RegionCache per proposal
source), sentence features (finetune.features' text.npz), and each word feature's character span.

It answers the same calls as finetune.features.FeatureStore (missing, extract, load_all, missing_text,
extract_text, text, key), so finetune.train.prepare and cluster.finetune's Ray extraction run unchanged on an STVG
dataset. A video's features live at its proposals' frames (the video's own rate for the synthetic corpus), not at
features.fps: the evaluator samples 5 fps frames and a tube needs a box at each.
"""
from __future__ import annotations

import logging

from common.errors import UserError
from finetune.features import FeatureStore, load_encoder
from pretrain.export_ref import Export

log = logging.getLogger(__name__)


def tokenizer_of(checkpoint: str):
    """The export's text tokenizer from its config alone (no weights)."""
    return Export.of(checkpoint).tokenizer()


def vision_depth(checkpoint: str) -> int:
    """The export's visual transformer depth, from its config alone (no weights)."""
    return Export.of(checkpoint).vision_depth()


def mid_block(cfg) -> int:
    """The earlier visual block whose region features this finetune reads (multi-scale, docs/fsm.md), 0 for none:
    a head whose spec asks for it (HeadSpec.mid_layer); tubes.mid_layer names the block, 0 the middle one."""
    from finetune.heads.registry import spec_of

    spec = spec_of(cfg.head)
    if not spec.mid_layer(spec.section(cfg)):
        return 0
    depth = vision_depth(cfg.checkpoint)
    block = cfg.tubes.mid_layer or max(1, depth // 2)
    if not 1 <= block < depth:
        raise UserError(f"tubes.mid_layer [{cfg.tubes.mid_layer}]: the export's image tower has {depth} blocks; "
                        f"the earlier layer of {cfg.head}'s multi-scale features is one of 1..{depth - 1}")
    return block


def with_pixels(videos: dict, paths: dict[str, str], image_size: int, max_frames: int = 0) -> dict:
    """End to end: each VideoTubes with its video decoded once at its proposals' frames (uint8 crops, in memory);
    with max_frames, only the frames a training batch samples (finetune.batches.subsample, the same every step)."""
    import dataclasses

    from finetune.batches import subsample
    from tubes.pipeline import video_pixels

    out = {}
    for vid, vt in videos.items():
        pixels = video_pixels(vid, paths[vid], vt.proposals, image_size)[0]
        out[vid] = dataclasses.replace(vt, pixels=pixels[subsample(len(pixels), max_frames)])
    return out


def token_spans(tokenizer, sentence: str, k: int) -> list[tuple[int, int]]:
    """[start, end) characters of `sentence` for each of the first k word tokens (the rows of the word features,
    SOT excluded). A token the lower-cased text does not hold verbatim (the tokenizer's unicode clean-up) gets an
    empty span where the search stands."""
    text = sentence.lower()
    out, at = [], 0
    for tid in tokenizer.encode(sentence)[:k]:
        piece = tokenizer.decoder[tid].replace("</w>", "")
        i = text.find(piece, at)
        if i < 0:
            out.append((at, at))
            continue
        out.append((i, i + len(piece)))
        at = i + len(piece)
    return out


class _NoDetections(UserError):
    """A video the detections file does not list (counted and skipped)."""


class StvgStore:
    def __init__(self, cfg, adapter, key: str | None = None):
        f = cfg.features
        self.text_store = FeatureStore(f.cache, cfg.checkpoint, f.fps, f.size, key=key)
        self.key = self.text_store.key
        self.checkpoint = cfg.checkpoint
        self.tube_cfg = cfg.tubes
        self.adapter = adapter
        self._split: dict[str, str] | None = None
        self._cache_root = f.cache
        self.sources: dict = {}   # split -> proposal source, opened when a video of that split is first asked for
        self.caches: dict = {}
        self.mid_layer = mid_block(cfg)   # > 0: the cache entries must hold that block's region features too
        self.mid_only: set[str] = set()   # videos cached single-scale only: a miss for this multi-scale run

    def _source(self, split: str):
        from tubes.regions import RegionCache

        if split not in self.sources:
            # a missing or malformed detections file is the user's one-line error, not a per-video skip
            self.sources[split] = self.adapter.proposals(split)
            self.sources[split].videos()
            self.caches[split] = RegionCache(self._cache_root, self.checkpoint, self.sources[split].name, self.key)
        return self.sources[split], self.caches[split]

    def split_of(self, vid: str) -> str:
        if self._split is None:
            self._split = {v: "train" for v in self.adapter.videos("train")}
            self._split.update({v: "test" for v in self.adapter.videos("test")})
        return self._split.get(vid, "test")

    def _props(self, vid: str):
        """The video's proposals; UserError (counted as no_detections) when the file has none for it."""
        src, _ = self._source(self.split_of(vid))
        if vid not in src.videos():
            raise _NoDetections(f"detections file [{src.url} video {vid}]: no detections for this video")
        return src.video(vid)

    def _cache(self, vid: str):
        return self._source(self.split_of(vid))[1]

    # --- videos ---------------------------------------------------------------------------------------------
    def missing(self, videos: dict[str, str]) -> dict[str, str]:
        from tubes.pipeline import cached_tubes

        out = {}
        for vid, path in videos.items():
            try:
                props = self._props(vid)
            except _NoDetections:
                out[vid] = path  # extract() counts it as failed
                continue
            if cached_tubes(vid, path, props, self.tube_cfg, self._cache(vid), self.mid_layer) is None:
                out[vid] = path
                if self.mid_layer and cached_tubes(vid, path, props, self.tube_cfg, self._cache(vid)) is not None:
                    self.mid_only.add(vid)
        return out

    def extract(self, videos: dict[str, str], model=None, batch_frames: int = 64) -> dict:
        """Region features of `videos` not cached yet; a video without detections or that cannot be decoded is
        counted by its reason and skipped."""
        from tubes.pipeline import video_tubes

        todo = self.missing(videos)
        counts: dict = {"videos": len(videos), "cached": len(videos) - len(todo), "extracted": 0, "failed": {}}
        if self.mid_layer:   # entries that had everything but the multi-scale array: it is added, the rest kept
            counts["multiscale_added"] = len(self.mid_only & set(todo))
            if counts["multiscale_added"]:
                log.warning("%d cached videos lack the region features of visual block %d (multi-scale): "
                            "adding them", counts["multiscale_added"], self.mid_layer)
        if todo and model is None:
            model = load_encoder(self.checkpoint)
        for vid, path in todo.items():
            try:
                video_tubes(model, vid, path, self._props(vid), None, None, self.tube_cfg, self._cache(vid),
                            self.mid_layer)
            except Exception as e:  # noqa: BLE001 - a bad video is counted and skipped
                reason = "no_detections" if isinstance(e, _NoDetections) else getattr(e, "reason", type(e).__name__)
                counts["failed"][reason] = counts["failed"].get(reason, 0) + 1
                log.warning("%s: %s, skipped", vid, e)
                continue
            counts["extracted"] += 1
        return counts

    def load_all(self, vids) -> dict:
        """{vid: tubes.pipeline.VideoTubes} of the given videos whose region features are cached."""
        from tubes.pipeline import cached_tubes

        paths = vids if isinstance(vids, dict) else {v: "" for v in vids}
        out = {}
        for vid, path in paths.items():
            try:
                props = self._props(vid)
            except _NoDetections:
                continue
            found = cached_tubes(vid, path, props, self.tube_cfg, self._cache(vid), self.mid_layer)
            if found is not None:
                out[vid] = found
        return out

    # --- text -----------------------------------------------------------------------------------------------
    def missing_text(self, sentences) -> list[str]:
        return self.text_store.missing_text(sentences)

    def extract_text(self, sentences, model=None, batch: int = 256) -> int:
        return self.text_store.extract_text(sentences, model, batch)

    def text(self, sentences):
        return self.text_store.text(sentences)


__all__ = ["StvgStore", "mid_block", "token_spans", "tokenizer_of", "vision_depth", "with_pixels"]
