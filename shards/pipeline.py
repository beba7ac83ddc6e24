"""The sharding run: plan shards from the manifest, skip finished ones, distribute the rest, rewrite manifest.json.

Videos go to shards in manifest order, `videos_per_shard` at a time, so the plan is a pure function of the manifest
and appending videos only adds shards (and completes a short last shard, which is then rebuilt).
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter

from tqdm import tqdm

from common import config as C
from common import fsio
from shards.config import ShardConfig
from shards.corpus import caption_runs, default_captions, iter_manifest
from shards.tarwriter import FORMAT
from shards.distribute import Distributor, SequentialDistributor
from shards.shard import ShardTask, build_shard, stats_url

log = logging.getLogger(__name__)
_STATS = re.compile(r"^shard-(\d{6})\.stats\.json$")


class ConfigMismatch(C.ConfigError):
    pass


MAX_FAILED_LISTED = 100  # failed shards listed with their error in the summary (all are counted)
CAPTION_INDEX = "caption_index.npz"  # where each video's caption entry lies (shards.corpus.CaptionRuns)
WINDOW_VIDEOS = 8192  # manifest videos looked up per pass over the caption index (the driver's bounded window)


def plan(cfg: ShardConfig) -> list[ShardTask]:
    """Every task of the run, as a list (for inspection and tests; `run` streams them with iter_plan)."""
    return list(iter_plan(cfg))


def iter_plan(cfg: ShardConfig):
    """The run's tasks in shard order, made as they are consumed: the manifest is read a line at a time and a
    window of WINDOW_VIDEOS videos is held, looked up in the caption index one sorted run at a time. Tasks carry
    their videos and the byte spans of their caption entries, not the entries: the driver never parses caption.json
    whole (one streaming pass builds the index, kept as <output>/caption_index.npz and reused while the caption
    file keeps its URL and size), and each task reads only its own videos' entries."""
    url = cfg.captions or default_captions(cfg.manifest)
    runs = caption_runs(url, fsio.join(cfg.output, CAPTION_INDEX))
    per = cfg.videos_per_shard
    window = per * max(1, WINDOW_VIDEOS // per)  # whole shards per lookup pass over the caption index's runs
    shard, videos = 0, []

    def tasks(vs):
        nonlocal shard
        spans = runs.spans([v.video_id for v in vs])
        for i in range(0, len(vs), per):
            if 0 < cfg.max_shards <= shard:
                return
            yield ShardTask(shard, vs[i:i + per], url, spans[i:i + per])
            shard += 1

    for v in iter_manifest(cfg.manifest):
        videos.append(v)
        if len(videos) == window:
            yield from tasks(videos)
            videos = []
            if 0 < cfg.max_shards <= shard:
                return
    if videos:
        yield from tasks(videos)


def finished(output: str) -> dict[int, dict]:
    """Stats of every finished shard under `output`, by shard index."""
    done = {}
    for name in fsio.listdir(output):
        m = _STATS.match(name)
        if m:
            done[int(m.group(1))] = fsio.read_json(fsio.join(output, name))
    return done


def write_manifest(cfg: ShardConfig) -> dict:
    done = finished(cfg.output)
    shards = [{"url": st["shard"], "videos": st["video_samples"], "samples": st["samples"]}
              for _, st in sorted(done.items())]
    manifest = {"format": FORMAT, "shards": shards, "total_videos": sum(s["videos"] for s in shards),
                "total_samples": sum(s["samples"] for s in shards), "window_frames": cfg.window_frames,
                "config": cfg.as_dict()}
    fsio.write_json_atomic(fsio.join(cfg.output, "manifest.json"), manifest)
    return manifest


def run(cfg: ShardConfig, distributor: Distributor | None = None) -> dict:
    """Build every unfinished shard; returns a summary. Failed tasks (after retries) are listed, not raised."""
    cfg.validate()
    t0 = time.time()
    distributor = distributor or SequentialDistributor()
    fsio.makedirs(cfg.output)
    C.dump(cfg, fsio.join(cfg.output, "config.yaml"))
    done = finished(cfg.output)
    counts = Counter()  # the driver keeps counts, not per-video or per-shard lists: bounded at any corpus size
    failures, failed = Counter(), []
    in_flight: dict[int, ShardTask] = {}  # what the distributor has taken and not yet reported (its window)

    for idx, st in done.items():  # a finished shard of another format or settings stops the run before any task
        if st.get("format") != FORMAT:
            raise ConfigMismatch(f"{stats_url(cfg.output, idx)} is of shard format {st.get('format', 1)} "
                                 f"(one sample per ASR segment), this sharder writes format {FORMAT}: "
                                 "use a new output or remove the old shards")
        if st.get("config_hash") != cfg.output_hash():
            raise ConfigMismatch(f"{stats_url(cfg.output, idx)} was made with other output settings "
                                 f"(config_hash {st.get('config_hash')} vs {cfg.output_hash()}); "
                                 "use a new output or remove the old shards")

    def todo():
        for task in iter_plan(cfg):
            counts["planned"] += 1
            st = done.pop(task.index, None)  # popped: the finished map shrinks as the plan passes it
            if st is not None:
                if st.get("videos") == len(task.videos):
                    counts["skipped"] += 1
                    continue
                # the manifest grew into a short last shard: unmark it before rebuilding, so it is never half-new
                fsio.remove(stats_url(cfg.output, task.index))
            in_flight[counts["positions"]] = task
            counts["positions"] += 1
            yield (cfg, task)

    # the distributor pulls tasks from the generator only as it has room (a bounded window in flight)
    outcomes = distributor.run(build_shard, todo(), cfg.retries)
    for out in tqdm(outcomes, desc="shards", unit="shard", disable=not cfg.progress):
        task = in_flight.pop(out.position)
        if out.error is None:
            st = out.result
            counts["built"] += 1
            counts["samples"] += st["samples"]
            counts["seconds_decoded"] += st["seconds_decoded"]
            failures.update(st["failures"])
        else:
            log.error("%s failed after %d attempts: %s", task.name, out.attempts, out.error)
            counts["failed"] += 1
            if len(failed) < MAX_FAILED_LISTED:
                failed.append({"shard": task.name, "attempts": out.attempts, "error": out.error[-2000:]})
    log.info("%d shards planned, %d finished before, %d built, %d failed", counts["planned"], counts["skipped"],
             counts["built"], counts["failed"])
    manifest = write_manifest(cfg)
    return {
        "output": cfg.output, "shards_planned": counts["planned"], "shards_skipped": counts["skipped"],
        "shards_built": counts["built"], "shards_failed": failed, "shards_failed_count": counts["failed"],
        "samples_built": counts["samples"], "total_samples": manifest["total_samples"],
        "failures": dict(sorted(failures.items())), "seconds_decoded": round(counts["seconds_decoded"], 3),
        "wall_seconds": round(time.time() - t0, 3),
    }
