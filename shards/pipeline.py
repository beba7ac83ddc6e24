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
from shards.corpus import default_captions, index_captions, read_manifest
from shards.reader import FORMAT
from shards.distribute import Distributor, SequentialDistributor
from shards.shard import ShardTask, build_shard, stats_url

log = logging.getLogger(__name__)
_STATS = re.compile(r"^shard-(\d{6})\.stats\.json$")


class ConfigMismatch(C.ConfigError):
    pass


CAPTION_INDEX = "caption_index.npz"  # where each video's caption entry lies (shards.corpus.CaptionIndex)


def plan(cfg: ShardConfig) -> list[ShardTask]:
    """Tasks carry their videos and the byte spans of their caption entries, not the entries: the driver never
    parses caption.json whole (one streaming pass builds the index, kept as <output>/caption_index.npz and reused
    while the caption file keeps its URL and size), and each task reads only its own videos' entries."""
    videos = read_manifest(cfg.manifest)
    url = cfg.captions or default_captions(cfg.manifest)
    index = index_captions(url, cache=fsio.join(cfg.output, CAPTION_INDEX))
    per = cfg.videos_per_shard
    tasks = [ShardTask(i // per, videos[i:i + per], url, [index.span(v.video_id) for v in videos[i:i + per]])
             for i in range(0, len(videos), per)]
    return tasks[: cfg.max_shards] if cfg.max_shards > 0 else tasks


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
    tasks = plan(cfg)
    done = finished(cfg.output)
    todo = []
    for task in tasks:
        st = done.get(task.index)
        if st is None:
            todo.append(task)
            continue
        if st.get("format") != FORMAT:
            raise ConfigMismatch(f"{stats_url(cfg.output, task.index)} is of shard format {st.get('format', 1)} "
                                 f"(one sample per ASR segment), this sharder writes format {FORMAT}: "
                                 "use a new output or remove the old shards")
        if st.get("config_hash") != cfg.output_hash():
            raise ConfigMismatch(f"{stats_url(cfg.output, task.index)} was made with other output settings "
                                 f"(config_hash {st.get('config_hash')} vs {cfg.output_hash()}); "
                                 "use a new output or remove the old shards")
        if st.get("videos") != len(task.videos):
            # the manifest grew into a short last shard: unmark it before rebuilding, so it is never half-new
            fsio.remove(stats_url(cfg.output, task.index))
            todo.append(task)
    log.info("%d shards planned, %d finished, %d to build", len(tasks), len(tasks) - len(todo), len(todo))
    built, failed = [], []
    outcomes = distributor.run(build_shard, [(cfg, t) for t in todo], cfg.retries)
    for out in tqdm(outcomes, total=len(todo), desc="shards", unit="shard", disable=not cfg.progress):
        task = todo[out.position]
        if out.error is None:
            built.append(out.result)
        else:
            log.error("%s failed after %d attempts: %s", task.name, out.attempts, out.error)
            failed.append({"shard": task.name, "attempts": out.attempts, "error": out.error[-2000:]})
    manifest = write_manifest(cfg)
    failures = Counter()
    for st in built:
        failures.update(st["failures"])
    return {
        "output": cfg.output, "shards_planned": len(tasks), "shards_skipped": len(tasks) - len(todo),
        "shards_built": len(built), "shards_failed": failed, "samples_built": sum(st["samples"] for st in built),
        "total_samples": manifest["total_samples"], "failures": dict(sorted(failures.items())),
        "seconds_decoded": round(sum(st["seconds_decoded"] for st in built), 3),
        "wall_seconds": round(time.time() - t0, 3),
    }
