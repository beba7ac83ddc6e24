"""Sharder and loader throughput: shard format 2 (one sample per video) against format 1 (one sample per ASR
segment) and against a plain ffmpeg decode of the same files, interleaved in the same run.

  OMP_NUM_THREADS=1 python -m benchmarks.speed.shard_throughput [--videos 3 --seconds 60 --height 480 --window 16
                                        | --manifest DIR/manifest.csv | --videos-dir DIR]
  OMP_NUM_THREADS=1 python -m benchmarks.speed.shard_throughput --videos 2 --sizes 30,60,120   # growth (docs/scale.md)

Prints one JSON object. Sharding: core-seconds per second of video (user+sys CPU of this process and its ffmpeg
children) of the sharder (sequential distributor, so all work is in this process tree), of the format-1 sharder
(kept here as the baseline: the same decode, JPEG encoder, windows and tar writer, one sample of U frames per
segment), of the format-2 writer in that baseline's loop (like for like: no pipeline around either), and of `ffmpeg -vf fps=1,scale=...` writing rgb24 to /dev/null (ratio target >= 0.85). Shards: bytes per
second of video of each format (target: format 2 >= 4x fewer). Reading: windows per core-second and JPEG decodes
per window through shards.reader (format 2: the loader's cut, each frame decoded once per video), through the
format-1 reader's work (every window's U frames decoded), and through pretraining's RankLoader on format 2
(shuffle buffers, batches; k=1 and clips_per_video=4; target: >= 3x format 1's windows/s). Every side runs
`--rounds` times, interleaved (format 1, format 2, ... in each round: the machine may be shared); the best round
counts. Captions: one segment every 3.5 s (HowTo100M's density: ~4.6 windows over each second at U = 16, 1 fps).
`--videos-dir DIR` shards the mp4s of DIR (real footage); `--sizes S1,S2,...` repeats the lavfi measurement with
videos of S1, S2, ... seconds and fits how each cost grows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

import numpy as np

from shards.config import ShardConfig  # noqa: E402
from shards.corpus import clean_segments, read_captions, read_manifest  # noqa: E402
from shards.decode import decode_video, ffmpeg_exe  # noqa: E402
from shards.pipeline import run  # noqa: E402
from shards.shard import _jpeg_encoder  # noqa: E402
from shards.tarwriter import TarWriter, sample_key  # noqa: E402
from shards.windows import plan_window  # noqa: E402

SEGMENT_EVERY = 3.5  # seconds between ASR segments in HowTo100M (docs/scale.md)
BATCH = 8             # windows per loader batch (the reading sides stack their windows into batches of this many)


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_corpus(root: str, videos: int, seconds: int, height: int) -> str:
    """lavfi videos (x264, 30 fps, temporal noise so decoding costs what camera footage costs) with one ASR segment
    every 3.5 s, like HowTo100M's caption density."""
    vdir = os.path.join(root, "videos")
    os.makedirs(vdir)
    width = (height * 16 // 9) // 2 * 2
    captions, rows = {}, []
    for i in range(videos):
        vid = f"bench{i:03d}"
        path = os.path.join(vdir, vid + ".mp4")
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate=30", "-vf", f"noise=alls=12:allf=t:all_seed={i}",
                        "-t", str(seconds), "-c:v", "libx264",
                        "-preset", "veryfast", "-pix_fmt", "yuv420p", path], check=True)
        rows.append(f"{vid},videos/{vid}.mp4")
        captions[vid] = howto_captions(seconds)
    return write_corpus(root, rows, captions)


def howto_captions(seconds: float) -> dict:
    starts = [round(k * SEGMENT_EVERY, 3) for k in range(int((seconds - 1) // SEGMENT_EVERY) + 1)]
    return {"start": starts, "end": [min(t + SEGMENT_EVERY, seconds - 0.1) for t in starts],
            "text": [f"step {k} of the task" for k in range(len(starts))]}


def write_corpus(root: str, rows: list[str], captions: dict) -> str:
    """manifest.csv and caption.json of contract 1; the manifest's path."""
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("video_id,path\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "caption.json"), "w") as f:
        json.dump(captions, f)
    return os.path.join(root, "manifest.csv")


def duration(path: str) -> float:
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True, text=True).stderr
    hms = probe.split("Duration: ", 1)[1].split(",", 1)[0].split(":")
    return int(hms[0]) * 3600 + int(hms[1]) * 60 + float(hms[2])


def corpus_of_videos(root: str, video_dir: str) -> str:
    """A corpus (contract 1) of the mp4s of video_dir, one caption every 3.5 s (real videos come without ASR)."""
    os.makedirs(root)
    captions, rows = {}, []
    for name in sorted(f for f in os.listdir(video_dir) if f.endswith(".mp4")):
        vid, path = os.path.splitext(name)[0], os.path.abspath(os.path.join(video_dir, name))
        captions[vid] = howto_captions(duration(path))
        rows.append(f"{vid},{path}")
    if not rows:
        raise SystemExit(f"error: no .mp4 files in {video_dir}")
    return write_corpus(root, rows, captions)


def shard_bytes(output: str) -> int:
    total = 0
    for name in os.listdir(output):
        if name.endswith(".stats.json"):
            with open(os.path.join(output, name)) as f:
                total += int(json.load(f)["bytes"])
    return total


def baseline(paths: list[str], fps: float, size: int) -> float:
    vf = f"fps={fps},scale={size}:{size}:force_original_aspect_ratio=increase"
    for p in paths:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", p,
                        "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null"], check=True)


def measure_cpu(fn) -> tuple[float, float]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - c0, time.perf_counter() - t0


def shard_format1(cfg: ShardConfig) -> int:
    """The format-1 sharder, kept as the baseline: each video decoded once (same decode and JPEG encoder as the
    sharder), one tar sample per ASR segment holding its U window frames. Returns the tar's bytes."""
    captions = read_captions(os.path.join(os.path.dirname(cfg.manifest), "caption.json"))
    os.makedirs(cfg.output)
    path = os.path.join(cfg.output, "shard-000000.tar")
    with open(path, "wb") as f:
        writer = TarWriter(f)
        for video in read_manifest(cfg.manifest):
            dec = decode_video(video.path, cfg.fps, cfg.size, transform=_jpeg_encoder(cfg.jpeg_quality))
            dur = dec.duration if dec.duration > 0 else dec.times[-1] + 1 / cfg.fps
            for seg in clean_segments(video.video_id, captions.get(video.video_id), dur).segments:
                win = plan_window(dec.times, seg.start, seg.end, cfg.window_frames, cfg.fps, video_end=dur)
                members = {f"f{k:02d}.jpg": dec.frames[i] for k, i in enumerate(win.indices)}
                members["json"] = json.dumps({
                    "video_id": video.video_id, "segment": seg.index, "caption": seg.text, "asr_start": seg.start,
                    "asr_end": seg.end, "window_start": win.start, "window_end": win.end,
                    "frame_times": [dec.times[i] for i in win.indices], "valid_frames": win.valid, "fps": cfg.fps,
                    "size": cfg.size, "video_duration": dur, "video_width": dec.width,
                    "video_height": dec.height}, sort_keys=True).encode()
                writer.write(sample_key(video.video_id, seg.index), members)
        writer.close()
    return os.path.getsize(path)


def shard_format2(cfg: ShardConfig) -> int:
    """The format-2 writer (shards.shard.process_video) in the format-1 baseline's loop: one tar, no pipeline
    around it (plan, stats, manifest, atomic publish), so the two formats compare like for like."""
    import tempfile as _tempfile

    from shards.shard import process_video

    captions = read_captions(os.path.join(os.path.dirname(cfg.manifest), "caption.json"))
    os.makedirs(cfg.output)
    path = os.path.join(cfg.output, "shard-000000.tar")
    with open(path, "wb") as f, _tempfile.TemporaryDirectory() as work:
        writer = TarWriter(f)
        for video in read_manifest(cfg.manifest):
            process_video(video, captions.get(video.video_id), cfg, writer, work, [])
        writer.close()
    return os.path.getsize(path)


def read_format1(output: str) -> tuple[int, int]:
    """The format-1 loader's work per window: tar members, json, every one of its U JPEGs decoded (PIL, as
    shards.reader decodes on the CPU), windows stacked into batches. Returns (windows, JPEG decodes)."""
    from collections import Counter

    from shards.jpeg import decode_jpegs
    from shards.reader import raw_samples

    n = decodes = 0
    batch = []
    for raw in raw_samples(os.path.join(output, "shard-000000.tar"), Counter()):
        meta = json.loads(raw["json"])
        frames = decode_jpegs([raw[f"f{i:02d}.jpg"] for i in range(len(meta["frame_times"]))])
        n, decodes = n + 1, decodes + len(frames)
        batch.append(np.stack(frames))
        if len(batch) == BATCH:  # the loader's batch, as it stacks it
            np.stack(batch)
            batch = []
    return n, decodes


def read_format2(output: str) -> tuple[int, int]:
    """Every window of a format-2 shard set through shards.reader (the loader's cut), stacked into batches.
    Returns (windows, decodes)."""
    from shards import jpeg, reader

    before, n, batch = jpeg.decoded_frames, 0, []
    for w in reader.read_samples([u for u, _ in reader.shard_urls(output)]):
        n += 1
        batch.append(w["frames"])
        if len(batch) == BATCH:
            np.stack(batch)
            batch = []
    return n, jpeg.decoded_frames - before


def read_loader(output: str, windows: int, clips_per_video: int) -> tuple[int, int]:
    """Pretraining's RankLoader over a format-2 shard set (shards drawn with replacement, shuffle buffers, batches),
    for about `windows` windows. On a set of a few videos a video is often drawn again while windows of its last read
    still wait in the buffer, which decodes its frames again: decodes per window are higher here than on a large
    set. Returns (windows, decodes)."""
    from pretrain import data

    loader = data.RankLoader(data.read_manifest(output), micro_batch=BATCH, batches_per_epoch=10**9, seed=0, rank=0,
                             shuffle_buffer=16, clips_per_video=clips_per_video, decode="cpu")
    n = decodes = 0
    while n < windows:
        b = loader.next()
        n, decodes = n + len(b["keys"]), decodes + b["jpeg_decodes"]
    return n, decodes


def _best(runs: list[tuple[float, int, int]]) -> dict:
    cpu, n, decodes = min(runs)
    return {"windows": n, "cpu_s": round(cpu, 3), "windows_per_core_s": round(n / cpu, 1),
            "jpeg_decodes_per_window": round(decodes / max(n, 1), 2)}


def measure(args, manifest: str, tmp: str) -> dict:
    import pretrain.data  # noqa: F401 - imported (torch) before any timing

    paths = [v.path for v in read_manifest(manifest)]
    base, shard, shard1, shard2, report, outputs, bytes1 = [], [], [], [], {}, [], {}
    for r in range(args.rounds):  # interleaved: ffmpeg, format 1, format 2 in each round
        kw = dict(manifest=manifest, distributor="sequential", fps=args.fps, size=args.size,
                  window_frames=args.window, progress=False)
        cfg1 = ShardConfig(output=os.path.join(tmp, f"v1-{r}"), **kw)
        outputs.append(os.path.join(tmp, f"v2-{r}"))
        cfg = ShardConfig(output=outputs[-1], videos_per_shard=max(1, len(paths) // 2), **kw)
        base.append(measure_cpu(lambda: baseline(paths, args.fps, args.size)))
        cfg2 = ShardConfig(output=os.path.join(tmp, f"v2direct-{r}"), **kw)
        shard1.append(measure_cpu(lambda: bytes1.update(n=shard_format1(cfg1))))
        shard2.append(measure_cpu(lambda: shard_format2(cfg2)))
        shard.append(measure_cpu(lambda: report.update(run(cfg))))
    video_s = report["seconds_decoded"]
    b_cpu, b_wall = min(base)
    s_cpu, s_wall = min(shard)
    s1_cpu, s2_cpu = min(shard1)[0], min(shard2)[0]
    nbytes, nbytes1 = shard_bytes(outputs[-1]), bytes1["n"]
    reads = {"format1": [], "format2": [], "loader": [], "loader_k4": []}
    v1_dir = os.path.join(tmp, f"v1-{args.rounds - 1}")
    windows = report["total_samples"]
    for _ in range(args.rounds):  # interleaved again
        for name, fn in (("format1", lambda: read_format1(v1_dir)), ("format2", lambda: read_format2(outputs[-1])),
                         ("loader", lambda: read_loader(outputs[-1], windows, 1)),
                         ("loader_k4", lambda: read_loader(outputs[-1], windows, 4))):
            got = [0, 0]

            def passes():  # enough windows that each side's CPU time is well above the clock's resolution
                for _ in range(args.read_passes):
                    n, decodes = fn()
                    got[0], got[1] = got[0] + n, got[1] + decodes

            cpu, _ = measure_cpu(passes)
            reads[name].append((cpu, *got))
    read = {k: _best(v) for k, v in reads.items()}
    per1 = read["format1"]["windows_per_core_s"]
    out = {
        "videos": len(paths), "video_seconds": video_s, "windows": windows, "window_frames": args.window,
        "segment_every_s": SEGMENT_EVERY, "failures": report["failures"], "rounds": args.rounds, "fps": args.fps,
        "size": args.size,
        "baseline_ffmpeg": {"cpu_s": round(b_cpu, 3), "wall_s": round(b_wall, 3),
                            "video_s_per_core_s": round(video_s / b_cpu, 2)},
        "sharder": {"cpu_s": round(s_cpu, 3), "wall_s": round(s_wall, 3),
                    "video_s_per_core_s": round(video_s / s_cpu, 2),
                    "core_s_per_video_s": round(s_cpu / video_s, 4)},
        "sharder_format1": {"cpu_s": round(s1_cpu, 3), "core_s_per_video_s": round(s1_cpu / video_s, 4)},
        "sharder_format2_same_loop": {"cpu_s": round(s2_cpu, 3), "core_s_per_video_s": round(s2_cpu / video_s, 4)},
        "ratio": round(b_cpu / s_cpu, 3), "target": 0.85,
        "sharding_cpu_format1_over_format2": round(s1_cpu / s2_cpu, 3),
        "sharding_cpu_format1_over_sharder": round(s1_cpu / s_cpu, 3),
        "shard_bytes": nbytes, "bytes_per_window": round(nbytes / max(1, windows)),
        "bytes_per_video_s": round(nbytes / max(video_s, 1e-9)),
        "format1_bytes_per_video_s": round(nbytes1 / max(video_s, 1e-9)),
        "bytes_format1_over_format2": round(nbytes1 / max(nbytes, 1), 2), "bytes_target": 4.0,
        "read": read,
        "read_windows_per_core_s_format2_over_format1": round(read["format2"]["windows_per_core_s"] / per1, 2),
        "loader_windows_per_core_s_over_format1": round(read["loader"]["windows_per_core_s"] / per1, 2),
        "loader_k4_windows_per_core_s_over_format1": round(read["loader_k4"]["windows_per_core_s"] / per1, 2),
        "read_target": 3.0,
    }
    out["meets_target"] = out["ratio"] >= out["target"]
    out["meets_bytes_target"] = out["bytes_format1_over_format2"] >= out["bytes_target"]
    out["meets_read_target"] = out["read_windows_per_core_s_format2_over_format1"] >= out["read_target"]
    out["sharding_no_worse"] = out["sharding_cpu_format1_over_format2"] >= 0.97  # within this machine's noise
    return out


def growth(sizes: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(size): cost ~ size ** slope (1: linear)."""
    import math

    pts = [(math.log(x), math.log(y)) for x, y in zip(sizes, values) if y > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", help="an existing corpus (contract 1); default: make lavfi videos")
    ap.add_argument("--videos-dir", help="shard the .mp4 files of this folder (one caption every 4 s)")
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--sizes", help="comma-separated seconds per lavfi video: one measurement each, and growth")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--window", type=int, default=16, help="U: frames per window")
    ap.add_argument("--read-passes", type=int, default=10, help="times each reading side reads the shard set")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stg-bench-") as tmp:
        if not args.sizes:
            manifest = args.manifest or (corpus_of_videos(os.path.join(tmp, "corpus"), args.videos_dir)
                                         if args.videos_dir else
                                         make_corpus(os.path.join(tmp, "corpus"), args.videos, args.seconds,
                                                     args.height))
            print(json.dumps(measure(args, manifest, os.path.join(tmp, "work"))))
            return
        sizes = sorted({int(v) for v in args.sizes.split(",") if v.strip()})
        runs = []
        for sec in sizes:
            root = os.path.join(tmp, f"s{sec}")
            manifest = make_corpus(os.path.join(root, "corpus"), args.videos, sec, args.height)
            runs.append({"seconds_per_video": sec, **measure(args, manifest, os.path.join(root, "work"))})
        video_s = [r["video_seconds"] for r in runs]
        print(json.dumps({
            "sizes_seconds_per_video": sizes, "videos": args.videos, "height": args.height,
            "growth_exponent_vs_video_seconds": {
                "sharder_cpu_s": growth(video_s, [r["sharder"]["cpu_s"] for r in runs]),
                "baseline_cpu_s": growth(video_s, [r["baseline_ffmpeg"]["cpu_s"] for r in runs]),
                "shard_bytes": growth(video_s, [r["shard_bytes"] for r in runs]),
                "windows": growth(video_s, [r["windows"] for r in runs]),
                "read_cpu_s": growth(video_s, [r["read"]["format2"]["cpu_s"] for r in runs])},
            "runs": runs}))


if __name__ == "__main__":
    main()
