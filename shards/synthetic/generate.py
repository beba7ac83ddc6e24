"""Write the synthetic corpus (docs/contracts.md section 1): DIR/{train,test}/ and DIR/corpus.json.

Videos are written first, the JSON/CSV indexes of a split last, so a split whose caption.json exists is complete.
Each video depends only on (seed, split, index): workers can render them in any order and the files come out the
same, and a larger n_train keeps the first videos as they were.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from common import fsio
from common.config import dump, to_dict
from shards.synthetic import narration, stvg, truth, vocab
from shards.synthetic.config import SyntheticConfig
from shards.synthetic.encode import write_mp4
from shards.synthetic.render import Renderer
from shards.synthetic.scene import SPLITS, plan_video

TRUTH_FILES = ("ground_seg.json", "GroundingYouTubeBox.json", "vid2step.json", "id2wh.json", "proposals.json")


def _encode_to(url: str, frames, cfg: SyntheticConfig) -> int:
    """Encode into `url` so that a reader never sees a half-written mp4 (local: rename; remote: one upload)."""
    if fsio.is_local(url):
        path = fsio.filesystem(url)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            n = write_mp4(tmp, frames, cfg.width, cfg.height, cfg.fps, cfg.crf, cfg.threads)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return n
    with fsio.local_tempdir() as d:
        tmp = os.path.join(d, "video.mp4")
        n = write_mp4(tmp, frames, cfg.width, cfg.height, cfg.fps, cfg.crf, cfg.threads)
        fsio.put_file_atomic(tmp, url)
        return n


def make_video(cfg: SyntheticConfig, split: str, index: int) -> dict:
    """Plan, render, encode one video; returns its captions and truth entries (the split files are written by
    the caller, in index order)."""
    plan = stvg.stvg_plan(cfg, split, index) if cfg.mode == "stvg" else plan_video(cfg, split, index)
    renderer = Renderer(plan)
    per_second: dict[int, list] = {}
    per_frame: list[list] = []

    def frames():
        for i in range(plan.frames):
            img, boxes = renderer.frame(i)
            per_frame.append(boxes)
            if i % plan.fps == 0:
                per_second[i // plan.fps] = boxes
            yield img

    url = fsio.join(cfg.out, split, "videos", f"{plan.vid}.mp4")
    n = _encode_to(url, frames(), cfg)
    segs = narration.narrate(plan, cfg)
    extra = stvg.record(plan, per_frame, cfg) if cfg.mode == "stvg" else {}
    return {**extra,
        "vid": plan.vid,
        "frames": n,
        "seconds": plan.seconds,
        "caption": {"start": [s.start for s in segs], "end": [s.end for s in segs], "text": [s.text for s in segs]},
        "unrelated": sum(s.kind == narration.UNRELATED for s in segs),
        "ground_seg": truth.segments(plan),
        "boxes": truth.boxes(plan, per_second),
        "pool": truth.pool(plan),
        "wh": [plan.width, plan.height],
        "proposals": truth.proposals(plan, per_second, cfg.proposal_jitter),
        "task_id": 90000 + list(vocab.VERBS).index(plan.actions[0].verb) if plan.actions else 90000,
    }


def _dumps(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_split(cfg: SyntheticConfig, split: str, records: list[dict]) -> dict:
    root = fsio.join(cfg.out, split)
    fsio.makedirs(fsio.join(root, "truth"))
    fsio.write_text_atomic(fsio.join(root, "manifest.csv"),
                           _csv([["video_id", "path"]] + [[r["vid"], f"videos/{r['vid']}.mp4"] for r in records]))
    fsio.write_text_atomic(fsio.join(root, "HowTo100M_v1.csv"), _csv(
        [["video_id", "category_1", "category_2", "rank", "task_id"]]
        + [[r["vid"], "Food and Entertaining", "Synthetic Kitchen", i + 1, r["task_id"]]
           for i, r in enumerate(records)]))
    truth_maps = {
        "ground_seg.json": {r["vid"]: r["ground_seg"] for r in records},
        "GroundingYouTubeBox.json": {r["vid"]: r["boxes"] for r in records},
        "vid2step.json": {r["vid"]: r["pool"] for r in records},
        "id2wh.json": {r["vid"]: r["wh"] for r in records},
        "proposals.json": {r["vid"]: r["proposals"] for r in records},
    }
    for name in TRUTH_FILES:
        fsio.write_bytes_atomic(fsio.join(root, "truth", name), _dumps(truth_maps[name]))
    # caption.json last: its presence marks the split as complete
    fsio.write_bytes_atomic(fsio.join(root, "caption.json"), _dumps({r["vid"]: r["caption"] for r in records}))
    segments = sum(len(r["caption"]["text"]) for r in records)
    unrelated = sum(r["unrelated"] for r in records)
    return {
        "videos": len(records),
        "frames": sum(r["frames"] for r in records),
        "video_seconds": sum(r["seconds"] for r in records),
        "actions": sum(len(r["ground_seg"]) for r in records),
        "boxes": sum(len(r["boxes"]) for r in records),
        "segments": segments,
        "unrelated_segments": unrelated,
        "unrelated_fraction": round(unrelated / segments, 4) if segments else 0.0,
    }


# settings that change how a corpus is made, not what it holds
_NOT_CONTENT = ("out", "workers")


def refuse_another_corpus(cfg: SyntheticConfig) -> None:
    """A folder holding a corpus made with other settings is refused before anything is written: re-rendering
    into it would leave a mix (old truth describing new videos under the same ids)."""
    from common.errors import UserError

    url = fsio.join(cfg.out, "corpus.json")
    if not fsio.exists(url):
        return
    try:
        old = dict(fsio.read_json(url).get("config") or {})
    except (ValueError, TypeError, AttributeError):
        old = {}
    new = to_dict(cfg)
    differ = sorted(k for k in set(old) | set(new) if k not in _NOT_CONTENT and old.get(k) != new.get(k))
    if differ:
        raise UserError(f"--out [{cfg.out}]: holds a corpus made with other settings ({', '.join(differ)} differ"
                        f"{'' if old else '; its corpus.json is unreadable'}); give another --out")


def generate(cfg: SyntheticConfig) -> dict:
    """Write both splits and corpus.json; returns a summary with the counts and the wall time per video."""
    cfg.validate()
    refuse_another_corpus(cfg)
    t0 = time.perf_counter()
    fsio.makedirs(cfg.out)
    counts = {"train": cfg.n_train, "test": cfg.n_test}
    stats, timing = {}, {}
    pool = (ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) if cfg.workers > 1 else None)
    try:
        for split in SPLITS:
            t = time.perf_counter()
            if pool is not None:
                futures = [pool.submit(make_video, cfg, split, i) for i in range(counts[split])]
                records = [f.result() for f in futures]
            else:
                records = [make_video(cfg, split, i) for i in range(counts[split])]
            extra = {"stvg": stvg.write_split(cfg, split, records, _dumps)} if cfg.mode == "stvg" else {}
            stats[split] = {**write_split(cfg, split, records), **extra}
            timing[split] = time.perf_counter() - t
    finally:
        if pool is not None:
            pool.shutdown()
    corpus = {
        "format": 1,
        "generator": "shards.synthetic",
        "config": to_dict(cfg),
        "vocabulary": vocab.vocabulary(cfg.verbs, cfg.nouns, cfg.colours),
        "splits": stats,
        **({"stvg": stvg.corpus_section(cfg)} if cfg.mode == "stvg" else {}),
    }
    fsio.write_text_atomic(fsio.join(cfg.out, "corpus.json"), json.dumps(corpus, indent=1) + "\n")
    dump(cfg, fsio.join(cfg.out, "config.yaml"))
    wall = time.perf_counter() - t0
    videos = cfg.n_train + cfg.n_test
    return {
        "out": cfg.out,
        "splits": {s: {**stats[s], "wall_seconds": round(timing[s], 3)} for s in stats},
        "videos": videos,
        "wall_seconds": round(wall, 3),
        "seconds_per_video": round(wall / videos, 4) if videos else 0.0,
    }
