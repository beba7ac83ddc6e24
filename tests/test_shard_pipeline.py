"""The sharding run end to end on real mp4 files: bad inputs, determinism, resume after a kill, Ray, read-back."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from cluster.shard import RayDistributor
from common.config import ConfigError
from shards.config import ShardConfig
from shards.pipeline import ConfigMismatch, run
from shards.reader import read_samples, shard_urls
from shard_fixtures import bad_corpus, good_corpus, make_video, write_corpus, caps
from conftest import ROOT


def _cfg(manifest, out, **kw) -> ShardConfig:
    kw = {"distributor": "sequential", "progress": False, "window_frames": 6, "size": 64, **kw}
    return ShardConfig(manifest=str(manifest), output=str(out), **kw)


def _tars(out) -> dict[str, bytes]:
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return bad_corpus(str(root / "corpus"))


def test_bad_inputs_are_counted_and_good_samples_survive(bad, tmp_path):
    manifest, expected = bad
    summary = run(_cfg(manifest, tmp_path / "out", videos_per_shard=3))
    assert summary["failures"] == expected
    assert summary["shards_failed"] == [] and summary["shards_built"] == 3
    stats = [json.load(open(tmp_path / "out" / f"shard-{i:06d}.stats.json")) for i in range(3)]
    merged = Counter()
    for st in stats:
        merged.update(st["failures"])
        assert len(st["failed"]) == sum(st["failures"].values())
        assert set(st) >= {"shard", "format", "videos", "video_samples", "samples", "bytes", "seconds_decoded",
                           "wall_seconds", "failures", "failed", "config_hash"}
    assert merged == expected
    by_video = {f["video_id"]: f["reason"] for st in stats for f in st["failed"]}
    assert by_video["missing"] == "missing_file" and by_video["zero"] == "zero_length"
    assert by_video["corrupt"] == "corrupt_video" and by_video["truncated"] == "decode_error"
    assert by_video["nocaps"] == "no_captions"
    # every good segment is there: good_a's 0 and 2, good_b's 0, the part of the truncated file that decoded
    counts = Counter()
    samples = list(read_samples([u for u, _ in shard_urls(str(tmp_path / "out"))], counts))
    assert not counts
    assert [s["key"] for s in samples] == ["good_a__s0000", "good_a__s0002", "good_b__s0000", "truncated__s0000"]
    for s in samples:
        meta = s["json"]
        assert s["frames"].shape == (6, 64, 64, 3)
        assert len(meta["frame_times"]) == 6 and meta["window_start"] <= meta["asr_start"]
        assert meta["frame_times"] == sorted(meta["frame_times"])
    assert samples[0]["json"]["caption"] == "crack eggs" and samples[0]["json"]["video_duration"] == 8.0
    manifest_json = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest_json["total_samples"] == 4 == sum(s["samples"] for s in manifest_json["shards"])
    # format 2: one tar sample per video that has a window (good_a, good_b, truncated)
    assert manifest_json["format"] == 2 and manifest_json["total_videos"] == 3 == sum(st["video_samples"] for st in stats)
    assert (tmp_path / "out" / "config.yaml").exists()


def test_rerun_is_byte_identical_and_skips_finished(bad, tmp_path):
    manifest, _ = bad
    a, b = tmp_path / "a", tmp_path / "b"
    run(_cfg(manifest, a, videos_per_shard=2))
    run(_cfg(manifest, b, videos_per_shard=2))
    assert _tars(a) == _tars(b) and len(_tars(a)) == 4
    again = run(_cfg(manifest, a, videos_per_shard=2))
    assert again["shards_skipped"] == 4 and again["shards_built"] == 0 and again["total_samples"] == 4


def test_unmarked_tar_is_rebuilt_and_other_settings_are_refused(bad, tmp_path):
    manifest, _ = bad
    out = tmp_path / "out"
    run(_cfg(manifest, out, videos_per_shard=3))
    clean = _tars(out)
    # a tar without its stats file (a run killed between the two commits) is not finished
    os.remove(out / "shard-000001.stats.json")
    (out / "shard-000001.tar").write_bytes(b"half a tar")
    summary = run(_cfg(manifest, out, videos_per_shard=3))
    assert summary["shards_built"] == 1 and summary["shards_skipped"] == 2
    assert _tars(out) == clean
    with pytest.raises(ConfigMismatch):
        run(_cfg(manifest, out, videos_per_shard=3, jpeg_quality=50))
    # an output holding format-1 shards (stats without "format") is refused, not mixed with format 2
    st = json.load(open(out / "shard-000000.stats.json"))
    del st["format"]
    (out / "shard-000000.stats.json").write_text(json.dumps(st))
    with pytest.raises(ConfigMismatch, match="shard format 1"):
        run(_cfg(manifest, out, videos_per_shard=3))
    with pytest.raises(ConfigError):
        run(_cfg(manifest, out, distributor="spark"))


def test_appending_videos_adds_shards(tmp_path):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    videos = {f"v{i}": make_video(str(vdir / f"v{i}.mp4"), 3, size="64x48") for i in range(5)}
    captions = {v: caps((0.5, 1.5, f"caption {v}")) for v in videos}
    first = dict(list(videos.items())[:3])
    manifest = write_corpus(str(tmp_path / "c"), first, captions)
    out = tmp_path / "out"
    run(_cfg(manifest, out, videos_per_shard=2))
    before = _tars(out)
    write_corpus(str(tmp_path / "c"), videos, captions)
    summary = run(_cfg(manifest, out, videos_per_shard=2))
    # shard 0 is untouched; the short shard 1 is completed; shard 2 is new
    assert summary["shards_skipped"] == 1 and summary["shards_built"] == 2 and summary["total_samples"] == 5
    assert _tars(out)["shard-000000.tar"] == before["shard-000000.tar"]
    assert json.load(open(out / "shard-000001.stats.json"))["videos"] == 2


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return good_corpus(str(root / "corpus"), n=6, seconds=20)


def _ray_cfg(manifest, out):
    return _cfg(manifest, out, videos_per_shard=1, distributor="ray")


@pytest.fixture(scope="module")
def clean(good, ray_cluster, tmp_path_factory):
    """The uninterrupted Ray run the interrupted ones are compared with."""
    out = tmp_path_factory.mktemp("clean") / "shards"
    summary = run(_ray_cfg(good, out), RayDistributor(ray_cluster))
    assert summary["shards_built"] == 6 and summary["total_samples"] == 18 and not summary["failures"]
    return out


def test_cli_run_beside_a_neighbouring_ray_makes_the_same_bytes(good, clean, tmp_path):
    """`cluster/shard.py` with its own local Ray, as a user runs it; a second local Ray head with a dashboard
    starts (same environment, so the same Ray temp dir) once the first shard is committed (issue 29)."""
    from conftest import neighbour_ray, user_env

    out = tmp_path / "shards"
    env = user_env()
    with open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cluster" / "shard.py"), f"manifest={good}",
                                 f"output={out}", "videos_per_shard=1", "window_frames=6", "size=64",
                                 "progress=false"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        while proc.poll() is None and not (out.exists() and any(n.endswith(".stats.json") for n in os.listdir(out))):
            time.sleep(0.05)
        with neighbour_ray(env):
            stdout, _ = proc.communicate(timeout=600)
        err.seek(0)
        assert proc.returncode == 0, err.read()[-3000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["shards_built"] == 6 and summary["shards_failed"] == [] and not summary["failures"]
    assert _tars(out) == _tars(clean)


def test_ray_run_killed_after_first_commit_resumes_to_the_same_bytes(good, clean, ray_cluster, tmp_path):
    resumed = tmp_path / "resumed"

    # the job entry, as `ray job submit` runs it, on this cluster; killed once its first shard is committed
    address = ray_cluster.get_runtime_context().gcs_address
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "cluster" / "shard.py"), f"manifest={good}",
                             f"output={resumed}", "videos_per_shard=1", "window_frames=6", "size=64",
                             f"ray_address={address}", "progress=false", "num_cpus_per_task=2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(n.endswith(".stats.json") for n in os.listdir(resumed)) if resumed.exists() else False:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = sorted(n for n in os.listdir(resumed) if n.endswith(".stats.json"))
    assert 1 <= len(committed) < 6
    summary = run(_ray_cfg(good, resumed), RayDistributor(ray_cluster))
    assert summary["shards_skipped"] >= len(committed) and summary["shards_failed"] == []
    assert summary["shards_skipped"] + summary["shards_built"] == 6
    assert _tars(resumed) == _tars(clean)
    assert json.load(open(resumed / "manifest.json"))["shards"] == json.load(open(clean / "manifest.json"))["shards"]
    counts = Counter()
    samples = list(read_samples([u for u, _ in shard_urls(str(resumed))], counts))
    assert len(samples) == 18 and not counts
    assert {s["json"]["video_id"] for s in samples} == {f"vid{i:03d}" for i in range(6)}


def test_ray_task_that_keeps_failing_is_reported_not_fatal(ray_cluster):
    def flaky(x):
        if x == 2:
            raise RuntimeError("storage down")
        return x * 10

    outcomes = sorted(RayDistributor(ray_cluster).run(flaky, [(i,) for i in range(4)], retries=1),
                      key=lambda o: o.position)
    assert [o.result for o in outcomes] == [0, 10, None, 30]
    assert "storage down" in outcomes[2].error


def test_ray_distributor_pulls_tasks_only_as_it_has_room(ray_cluster):
    """The driver's plan is a generator (issue 32): the distributor takes a task only while fewer than
    max_in_flight run, so the driver holds a bounded window of tasks, never the whole plan."""
    pulled, done = [], []

    def args():
        for i in range(9):
            assert len(pulled) - len(done) < 2, "a task pulled while the window was full"
            pulled.append(i)
            yield (i,)

    for out in RayDistributor(ray_cluster, max_in_flight=2).run(lambda x: x * 10, args(), retries=0):
        assert out.result == out.position * 10 and len(pulled) - len(done) <= 2
        done.append(out.position)
    assert sorted(done) == list(range(9)) and pulled == list(range(9))


def test_driver_summary_counts_a_resumed_run_from_the_streamed_plan(tmp_path):
    """run() consumes the plan lazily: a finished shard is skipped and counted, the rest built, the counts right."""
    good = good_corpus(str(tmp_path / "corpus"))
    cfg = ShardConfig(manifest=good, output=str(tmp_path / "out"), videos_per_shard=2, distributor="sequential",
                      progress=False)
    first = run(dataclasses.replace(cfg, max_shards=1))
    assert first["shards_planned"] == 1 and first["shards_built"] == 1
    again = run(cfg)
    assert again["shards_skipped"] == 1 and again["shards_built"] == again["shards_planned"] - 1 >= 1
    assert again["shards_failed"] == [] and again["shards_failed_count"] == 0
