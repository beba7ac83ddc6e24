"""Training batches from a WebDataset shard set (docs/contracts.md section 2, format 2), local or s3.

Each rank reads W independent, resampled streams (W = max(1, loader workers)): a stream draws shards with
replacement (weighted by their window counts from manifest.json) from a generator seeded by
(seed, epoch, rank, stream), reads their video samples with webdataset's tar iterators, mixes the videos through a
seeded shuffle buffer (about shuffle_buffer windows' worth of videos), cuts each video's windows (one per ASR segment, shards.reader) in a seeded order, mixes the
windows through a second shuffle buffer, decodes and batches. A window is decoded only when it leaves the buffer,
from its video's frames decoded once for all its windows (shards.reader.VideoFrames). An epoch is a fixed number of
batches derived from the manifest, not a pass over the files. Everything is a function of the seeds, so the data
position is a handful of integers: the epoch, the batch index within it, and how many windows each stream has
handed out. Resuming rebuilds the streams and fast-forwards them without decoding, which gives the same sample
sequence as an uninterrupted run.

With `clips_per_video` k > 1 the stream is video-grouped: a video's windows, read once, are dealt in a drawn order
into groups of k (all of a video with fewer), and whole groups go through the shuffle buffer (shuffle_buffer / k
groups, about as many samples as ungrouped), so a batch of B samples holds B / k videos with k clips each:
same-video negatives, which share the scene and differ in the action (docs/pretraining.md). The position still
counts windows handed out, so resume stays exact.

Shards are read and samples checked by shards.reader, the one reader of the contract: a bad shard or sample is
skipped with a warning and counted under its reason there (docs/contracts.md section 2); the counts ride along with
the batches.

Each sample also carries a seed, a hash of (seed, epoch, rank, stream, position in the stream): randomness that
belongs to one draw of one sample (which pseudo-positive caption it gets, pretrain/pseudo_positives.py) is a
function of it, so it survives a resume without any extra state.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from common import fsio
from shards import jpeg, reader
from shards.reader import SampleError

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    pass


@dataclass(frozen=True)
class ShardSet:
    urls: tuple[str, ...]
    samples: tuple[int, ...]        # windows (training samples) per shard
    videos: tuple[int, ...] = ()    # video samples per shard tar (what a whole tar holds)

    @property
    def total_samples(self) -> int:
        return sum(self.samples)

    def videos_for(self, windows: int) -> int:
        """How many videos hold about `windows` windows (the video shuffle buffer's size: a video sample holds
        every frame of its video, so buffering videos by the window buffer's count would hold far more pixels)."""
        per_video = self.total_samples / max(1, sum(self.videos)) if self.videos else 1.0
        return max(2, round(windows / max(per_video, 1.0)))


def read_manifest(shards_url: str) -> ShardSet:
    """Shards with at least one sample, as absolute URLs, from `<shards_url>/manifest.json`."""
    url = fsio.join(shards_url, "manifest.json")
    if not fsio.exists(url):
        raise DataError(f"{url} not found: data.shards must name a finished shard set (docs/contracts.md section 2)")
    manifest = reader.read_manifest(shards_url)
    urls, counts, videos = [], [], []
    for entry in manifest.get("shards", []):
        if int(entry.get("samples", 0)) <= 0:
            continue
        rel = entry["url"]
        urls.append(rel if "://" in rel or rel.startswith("/") else fsio.join(shards_url, rel))
        counts.append(int(entry["samples"]))
        videos.append(int(entry["videos"]))
    if not urls:
        raise DataError(f"{url} lists no shard with samples")
    return ShardSet(tuple(urls), tuple(counts), tuple(videos))


DECODES = ("cpu", "gpu", "auto")


def decode_device(decode: str, device=None, loader_workers: int = 0):
    """The device JPEG frames are decoded on for `data.decode` (cpu | gpu | auto: gpu where CUDA is present and
    the loader runs in the training process): None (PIL on the loader's CPU) or a CUDA device (nvJPEG through
    torchvision.io.decode_jpeg; frames then stay on the device, where the model normalises them)."""
    import torch

    if decode not in DECODES:
        raise DataError(f"data.decode must be one of {DECODES}, got {decode!r}")
    if decode == "cpu" or (decode == "auto" and (loader_workers or not torch.cuda.is_available())):
        return None
    if not torch.cuda.is_available():
        raise DataError("data.decode=gpu needs CUDA, and this process sees no GPU (data.decode=auto falls back)")
    if loader_workers:
        raise DataError("data.decode=gpu decodes in the training process: set data.loader_workers=0")
    if device is not None and torch.device(device).type == "cuda":
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device())


def steps_per_epoch(samples_per_epoch: int, micro_batch: int, grad_accum: int, world: int) -> int:
    return max(1, samples_per_epoch // (micro_batch * grad_accum * world))


@dataclass(frozen=True)
class Window:
    """One window in a stream, not decoded yet: its clip, its video's frames (shared with the video's other
    windows), its shard and (MIL-NCE) the captions of its neighbouring windows."""

    clip: reader.Clip
    frames: reader.VideoFrames
    url: str
    neighbours: tuple = ()


class StreamDataset(torch.utils.data.IterableDataset):
    """Batches of one rank for one epoch. Loader worker k serves stream (k + start_batch) % W so batch b of the
    epoch always comes from stream b % W, also after a resume in the middle of an epoch."""

    def __init__(self, shards: ShardSet, *, micro_batch: int, seed: int, epoch: int, rank: int, streams: int,
                 start_batch: int, positions: list[int], shuffle_buffer: int, max_bad_shards: int,
                 clips_per_video: int = 1, mil_windows: int = 0, mil_shift: float = 0.0, device=None,
                 window_frames: int = 0):
        self.shards = shards
        self.mil_windows, self.mil_shift = mil_windows, mil_shift
        self.clips_per_video = clips_per_video
        self.device, self.window_frames = device, window_frames
        self.micro_batch = micro_batch
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.streams = streams
        self.start_batch = start_batch
        self.positions = list(positions)
        self.shuffle_buffer = shuffle_buffer
        self.max_bad_shards = max_bad_shards

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.streams:
            raise DataError(f"{info.num_workers} loader workers for {self.streams} streams")
        stream = (worker + self.start_batch) % self.streams
        return self._batches(stream)

    def _batches(self, stream: int) -> Iterator[dict]:
        skipped: Counter = Counter()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, stream])
        videos = _shuffled(_raw_samples(self.shards, rng, skipped, self.max_bad_shards), rng,
                           self.shards.videos_for(self.shuffle_buffer) if self.shuffle_buffer > 1 else 0)
        k = self.clips_per_video
        windows = _video_windows(videos, rng, skipped, k, self.window_frames, self.mil_windows, self.mil_shift,
                                 self.device)
        if k > 1:
            mixed = _shuffled_groups(windows, rng, max(2, self.shuffle_buffer // k), self.micro_batch // k - 1)
            raw = (w for g in mixed for w in g)
        else:
            raw = _shuffled((w for g in windows for w in g), rng, self.shuffle_buffer)
        position = 0
        for _ in range(self.positions[stream]):  # fast-forward: same draws, no decoding
            w = next(raw)
            w.frames.release(w.clip)
            position += 1
        skipped.clear()  # counted before the checkpoint already
        decoded = jpeg.decoded_frames
        shape = None
        frames, captions, keys, valid, seeds, near, spans = [], [], [], [], [], [], []
        for w in raw:
            position += 1
            try:
                clip = w.frames.frames(w.clip)  # stacked once, into the batch
                if shape is None:
                    shape = (len(clip), *clip[0].shape)
                elif (len(clip), *clip[0].shape) != shape:
                    raise SampleError("bad_shape", f"{w.clip.key}: {(len(clip), *clip[0].shape)} != {shape}")
            except SampleError as exc:
                skipped[exc.reason] += 1
                reader.warn_once((w.url, w.clip.key), "skipping sample from %s: %s", w.url, exc)
                continue
            meta = w.clip.meta
            frames.append(clip)
            captions.append(meta["caption"])
            keys.append(w.clip.key)
            valid.append(min(int(meta["valid_frames"]), len(clip)))
            seeds.append(sample_seed(self.seed, self.epoch, self.rank, stream, position))
            near.append(list(w.neighbours))
            spans.append([float(meta["asr_start"]), float(meta["asr_end"])])
            if len(frames) == self.micro_batch:
                batch = {"frames": _stacked(frames, shape, self.device), "captions": captions, "keys": keys,
                         "valid_frames": torch.tensor(valid, dtype=torch.long), "sample_seeds": seeds,
                         "stream": stream, "position": position, "skipped": dict(skipped),
                         "jpeg_decodes": jpeg.decoded_frames - decoded}
                if self.mil_windows > 0:
                    batch.update(neighbours=near, asr_spans=spans)
                yield batch
                skipped.clear()
                decoded = jpeg.decoded_frames
                frames, captions, keys, valid, seeds, near, spans = [], [], [], [], [], [], []


def _stacked(clips: list[list], shape: tuple, device) -> torch.Tensor:
    """(B, U, H, W, 3) uint8 from B windows' frame lists, copied once."""
    if device is not None:
        return torch.stack([torch.stack(c) for c in clips])
    out = np.empty((len(clips), *shape), np.uint8)
    for b, c in enumerate(clips):
        for u, f in enumerate(c):
            out[b, u] = f
    return torch.from_numpy(out)


def sample_seed(seed: int, epoch: int, rank: int, stream: int, position: int) -> int:
    """A 63-bit seed of one draw of one sample (its position in its stream is unique within an epoch)."""
    state = np.random.SeedSequence([seed, epoch, rank, stream, position]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _raw_samples(shards: ShardSet, rng: np.random.Generator, skipped: Counter, max_bad: int) -> Iterator[dict]:
    weights = np.asarray(shards.samples, dtype=np.float64)
    weights /= weights.sum()
    bad_in_a_row = 0
    while True:
        pick = int(rng.choice(len(shards.urls), p=weights))
        url = shards.urls[pick]
        got = 0
        expected = shards.videos[pick] if shards.videos else None
        for sample in reader.raw_samples(url, skipped, expected=expected):
            got += 1
            yield sample
        bad_in_a_row = 0 if got else bad_in_a_row + 1
        if bad_in_a_row >= max_bad:
            raise DataError(f"{bad_in_a_row} shards in a row gave no sample (last {url}); counts {dict(skipped)}")


def video_of(key: str) -> str:
    """The video id part of a sample key `<vid>__s<segment>` (contract 2)."""
    return key.rsplit("__", 1)[0]


def _video_windows(videos: Iterator[dict], rng: np.random.Generator, skipped: Counter, k: int, window_frames: int,
                   mil_windows: int, mil_shift: float, device) -> Iterator[list[Window]]:
    """The windows of each raw video sample in an order drawn from rng: one list of them all, or (k > 1) groups of
    k (a video with fewer than k windows is one group; the windows beyond a multiple of k wait for another read of
    the video). A video sample that cannot be used is counted and gives none. Nothing is decoded here: the windows
    share one VideoFrames, which decodes each frame once when the first window holding it is cut, and frees it when
    the last one has been."""
    for raw in videos:
        clips = reader.video_clips(raw, skipped, None, window_frames)
        if not clips:
            continue
        bags = [()] * len(clips)
        if mil_windows > 0:
            spans = [None if c.error else (float(c.meta["asr_start"]), float(c.meta["asr_end"]), c.meta["caption"])
                     for c in clips]
            bags = [tuple(b or ()) for b in neighbour_captions(spans, mil_windows, mil_shift)]
        order = rng.permutation(len(clips)).tolist()
        if 1 < k < len(clips):  # every k windows a group; the remainder waits for another read of the video
            order = order[: len(order) // k * k]
        frames = reader.VideoFrames(raw, [clips[i] for i in order], device)
        windows = [Window(clips[i], frames, raw.get("__url__", ""), bags[i]) for i in order]
        step = k if k > 1 else len(windows)
        for g in range(0, len(windows), step):
            yield windows[g:g + step]


def neighbour_captions(spans: list, n: int, shift: float) -> list:
    """For the ASR windows (start, end, caption) of one video (None: unreadable), the captions of up to n
    windows on each side, nearest first, whose spans lie within `shift` seconds (None for a None entry)."""
    out = []
    for i, me in enumerate(spans):
        if me is None:
            out.append(None)
            continue
        a, b, _ = me
        near = [(j, x) for j, x in enumerate(spans) if j != i and x is not None
                and max(x[0] - b, a - x[1], 0.0) <= shift]
        before = sorted((p for p in near if (p[1][0], p[1][1]) < (a, b)), key=lambda p: (-p[1][0], -p[1][1]))[:n]
        after = sorted((p for p in near if (p[1][0], p[1][1]) >= (a, b)), key=lambda p: (p[1][0], p[1][1]))[:n]
        out.append([x[2] for _, x in before + after])
    return out


def _shuffled_groups(groups: Iterator[list[Window]], rng: np.random.Generator, size: int, distinct: int
                     ) -> Iterator[list[Window]]:
    """A shuffle buffer of video groups that does not hand out a video again within `distinct` groups of its last
    turn (shards are drawn with replacement, so a video can come back while it is still in the buffer): a batch
    then never holds the same clip twice, nor one video's clips in two runs. A function of the stream and rng
    alone, so fast-forwarding on resume replays it."""
    buf: list[list[Window]] = []
    recent: list[str] = []

    def take() -> list[Window]:
        order = rng.permutation(len(buf))
        i = next((j for j in order if buf[j][0].clip.meta["video_id"] not in recent), order[0])
        g = buf.pop(int(i))
        if distinct > 0:
            recent.append(g[0].clip.meta["video_id"])
            del recent[:-distinct]
        return g

    for g in groups:
        buf.append(g)
        if len(buf) > size:
            yield take()
    while buf:
        yield take()


def _shuffled(samples: Iterator, rng: np.random.Generator, size: int) -> Iterator:
    if size <= 1:
        yield from samples
        return
    buf: list = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = int(rng.integers(size))
        buf[i], s = s, buf[i]
        yield s


@dataclass
class DataPosition:
    """Where a rank is in its sample sequence; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0  # batches taken in this epoch
    positions: list[int] | None = None  # windows handed out by each stream in this epoch

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "positions": list(self.positions or [])}

    @classmethod
    def from_dict(cls, d: dict) -> "DataPosition":
        return cls(int(d["epoch"]), int(d["batch"]), [int(p) for p in d["positions"]])


class RankLoader:
    """Endless batches of one rank across epochs, with its position, for the training loop."""

    def __init__(self, shards: ShardSet, *, micro_batch: int, batches_per_epoch: int, seed: int, rank: int,
                 loader_workers: int = 0, shuffle_buffer: int = 32, prefetch: int = 2, max_bad_shards: int = 50,
                 position: DataPosition | None = None, clips_per_video: int = 1, mil_windows: int = 0,
                 mil_shift: float = 0.0, decode: str = "cpu", device=None, window_frames: int = 0):
        self.shards = shards
        self.decode_device = decode_device(decode, device, loader_workers)
        self.window_frames = window_frames
        self.mil_windows, self.mil_shift = mil_windows, mil_shift
        self.clips_per_video = clips_per_video
        self.micro_batch = micro_batch
        self.batches_per_epoch = batches_per_epoch
        self.seed, self.rank = seed, rank
        self.workers = loader_workers
        self.streams = max(1, loader_workers)
        self.shuffle_buffer = shuffle_buffer
        self.prefetch = prefetch
        self.max_bad_shards = max_bad_shards
        self.position = position or DataPosition()
        if not self.position.positions:
            self.position.positions = [0] * self.streams
        if len(self.position.positions) != self.streams:
            raise DataError(f"checkpoint has {len(self.position.positions)} loader streams, config has "
                            f"{self.streams}: resume with the same data.loader_workers")
        self.skipped: Counter = Counter()  # since the start of this process (counts ride in the checkpoint)
        self._it: Iterator[dict] | None = None

    def _epoch_iter(self) -> Iterator[dict]:
        p = self.position
        ds = StreamDataset(self.shards, micro_batch=self.micro_batch, seed=self.seed, epoch=p.epoch, rank=self.rank,
                           streams=self.streams, start_batch=p.batch, positions=p.positions,
                           shuffle_buffer=self.shuffle_buffer, max_bad_shards=self.max_bad_shards,
                           clips_per_video=self.clips_per_video, mil_windows=self.mil_windows,
                           mil_shift=self.mil_shift, device=self.decode_device, window_frames=self.window_frames)
        if self.workers == 0:
            return iter(ds)
        return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers,
                                                prefetch_factor=self.prefetch, persistent_workers=False))

    def next(self) -> dict:
        if self.position.batch >= self.batches_per_epoch:
            self.position = DataPosition(self.position.epoch + 1, 0, [0] * self.streams)
            self._it = None
        if self._it is None:
            self._it = self._epoch_iter()
        batch = next(self._it)
        self.position.batch += 1
        self.position.positions[batch["stream"]] = batch["position"]
        self.skipped.update(batch["skipped"])
        return batch

    def close(self) -> None:
        self._it = None


def model_inputs(batch: dict, cfg, tokenize, device) -> dict:
    """The model's forward inputs for a loader batch (cfg: PretrainConfig). With data.pseudo_positives and
    model.cross_video, each sample with an entry in the table gets one of its pseudo-positive captions
    (pp_tokens, pp_mask; pretrain/pseudo_positives.py)."""
    inputs = {"frames": batch["frames"].to(device, non_blocking=True),
              "tokens": tokenize(batch["captions"]).to(device),
              "valid_frames": batch["valid_frames"].to(device)}
    if cfg.data.verb_swap:
        from pretrain.hard_negatives import verb_swapped

        hard = [verb_swapped(c, cfg.data.verb_swap, s) for c, s in zip(batch["captions"], batch["sample_seeds"])]
        inputs["hard_tokens"] = tokenize([h or "" for h in hard]).to(device)
        inputs["hard_mask"] = torch.tensor([h is not None for h in hard], dtype=torch.bool, device=device)
    if cfg.model.mil_windows > 0 and "neighbours" in batch:
        inputs.update(mil_inputs(batch["neighbours"], batch["keys"], batch["asr_spans"], cfg.model.mil_windows,
                                 tokenize, device))
    if cfg.data.pseudo_positives and cfg.model.cross_video:
        from pretrain import pseudo_positives

        table = pseudo_positives.cached(cfg.data.pseudo_positives, cfg.data.shards, cfg.data.pseudo_positives_strict)
        chosen = table.attach(batch)
        inputs["pp_tokens"] = tokenize([c or "" for c in chosen]).to(device)
        inputs["pp_mask"] = torch.tensor([c is not None for c in chosen], dtype=torch.bool, device=device)
    return inputs


def video_hash(video: str) -> int:
    """A stable integer id of a video (the same on every rank and process), for same-video masks."""
    import zlib

    return zlib.crc32(video.encode())


def mil_inputs(neighbours: list[list[str]], keys: list[str], spans: list, n: int, tokenize, device) -> dict:
    """The MIL-NCE bag of each clip as model inputs: mil_tokens (B * 2n, L) (empty captions where a clip has
    fewer neighbours), mil_mask (B, 2n), video_ids (B,) and asr_spans (B, 2) for the same-video negative mask."""
    width = 2 * n
    bag = [list(c[:width]) + [""] * (width - len(c[:width])) for c in neighbours]
    mask = [[j < len(c) for j in range(width)] for c in neighbours]
    return {"mil_tokens": tokenize([t for row in bag for t in row]).to(device),
            "mil_mask": torch.tensor(mask, dtype=torch.bool, device=device),
            "video_ids": torch.tensor([video_hash(video_of(k)) for k in keys], dtype=torch.long, device=device),
            "asr_spans": torch.tensor(spans, dtype=torch.float32, device=device)}
