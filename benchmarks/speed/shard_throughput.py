"""Sharder throughput against a plain ffmpeg decode of the same files, in the same run.

  python -m benchmarks.speed.shard_throughput [--videos 4 --seconds 60 --height 480 | --manifest DIR/manifest.csv
                                        | --videos-dir DIR]
  OMP_NUM_THREADS=1 python -m benchmarks.speed.shard_throughput --videos 2 --sizes 30,60,120   # growth (docs/scale.md)

Prints one JSON object: seconds of video processed per core-second (user+sys CPU of this process and its ffmpeg
children) by the sharder (sequential distributor, so all work is in this process tree) and by
`ffmpeg -vf fps=1,scale=...` writing rgb24 to /dev/null, and their ratio (target >= 0.85). Both use one decoder
thread per video, as the sharder does per Ray task. Each side runs `--rounds` times, alternating; the best round counts.
It also reports what the shards take: bytes (the stats files' sum), per sample and per second of video.
`--videos-dir DIR` shards the mp4s of DIR (real footage) with one caption every 4 s (HowTo100M's density);
`--sizes S1,S2,...` repeats the lavfi measurement with videos of S1, S2, ... seconds and fits how each cost grows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

from shards.config import ShardConfig  # noqa: E402
from shards.corpus import read_manifest  # noqa: E402
from shards.decode import ffmpeg_exe  # noqa: E402
from shards.pipeline import run  # noqa: E402


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_corpus(root: str, videos: int, seconds: int, height: int) -> str:
    """lavfi videos (x264, 30 fps, temporal noise so decoding costs what camera footage costs) with one ASR segment
    every 4 s, like HowTo100M's caption density."""
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
        starts = [float(s) for s in range(0, seconds - 2, 4)]
        captions[vid] = {"start": starts, "end": [s + 3.0 for s in starts], "text": [f"step {k}" for k in range(len(starts))]}
    return write_corpus(root, rows, captions)


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
    """A corpus (contract 1) of the mp4s of video_dir, one 3 s caption every 4 s (real videos come without ASR)."""
    os.makedirs(root)
    captions, rows = {}, []
    for name in sorted(f for f in os.listdir(video_dir) if f.endswith(".mp4")):
        vid, path = os.path.splitext(name)[0], os.path.abspath(os.path.join(video_dir, name))
        starts = [float(t) for t in range(0, max(1, int(duration(path)) - 3), 4)]
        captions[vid] = {"start": starts, "end": [t + 3.0 for t in starts], "text": [f"step {k}" for k in
                                                                                     range(len(starts))]}
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


def measure(args, manifest: str, tmp: str) -> dict:
    paths = [v.path for v in read_manifest(manifest)]
    base, shard, report, outputs = [], [], {}, []
    for r in range(args.rounds):
        base.append(measure_cpu(lambda: baseline(paths, args.fps, args.size)))
        outputs.append(os.path.join(tmp, f"out{r}"))
        cfg = ShardConfig(manifest=manifest, output=outputs[-1], distributor="sequential",
                          fps=args.fps, size=args.size, videos_per_shard=max(1, len(paths) // 2), progress=False)
        shard.append(measure_cpu(lambda: report.update(run(cfg))))
    video_s = report["seconds_decoded"]
    b_cpu, b_wall = min(base)
    s_cpu, s_wall = min(shard)
    nbytes = shard_bytes(outputs[-1])
    read_cpu, read_n = measure_read(outputs[-1])
    out = {
        "videos": len(paths), "video_seconds": video_s, "samples": report["total_samples"],
        "failures": report["failures"], "rounds": args.rounds, "fps": args.fps, "size": args.size,
        "baseline_ffmpeg": {"cpu_s": round(b_cpu, 3), "wall_s": round(b_wall, 3),
                            "video_s_per_core_s": round(video_s / b_cpu, 2)},
        "sharder": {"cpu_s": round(s_cpu, 3), "wall_s": round(s_wall, 3),
                    "video_s_per_core_s": round(video_s / s_cpu, 2)},
        "ratio": round(b_cpu / s_cpu, 3), "target": 0.85,
        "shard_bytes": nbytes, "bytes_per_sample": round(nbytes / max(1, report["total_samples"])),
        "bytes_per_video_s": round(nbytes / max(video_s, 1e-9)),
        # what pretraining's loader pays per sample to turn the shards back into frames (tar + JPEG decode)
        "read_back": {"samples": read_n, "cpu_s": round(read_cpu, 3),
                      "cpu_ms_per_sample": round(1e3 * read_cpu / max(read_n, 1), 3)},
    }
    out["meets_target"] = out["ratio"] >= out["target"]
    return out


def measure_read(output: str) -> tuple[float, int]:
    """CPU seconds to read every sample of a shard set back through shards.reader (the one reader of contract 2:
    tar members, JSON checks, JPEG decode to uint8 frames), and the number of samples read."""
    from shards.reader import read_samples, shard_urls

    n = 0

    def read():
        nonlocal n
        for _ in read_samples([u for u, _ in shard_urls(output)]):
            n += 1

    cpu, _ = measure_cpu(read)
    return cpu, n


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
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--sizes", help="comma-separated seconds per lavfi video: one measurement each, and growth")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
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
                "samples": growth(video_s, [r["samples"] for r in runs]),
                "read_back_cpu_s": growth(video_s, [r["read_back"]["cpu_s"] for r in runs])},
            "runs": runs}))


if __name__ == "__main__":
    main()
