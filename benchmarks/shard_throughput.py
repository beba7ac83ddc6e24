"""Sharder throughput against a plain ffmpeg decode of the same files, in the same run.

  python benchmarks/shard_throughput.py [--videos 4 --seconds 60 --height 480 | --manifest DIR/manifest.csv]

Prints one JSON object: seconds of video processed per core-second (user+sys CPU of this process and its ffmpeg
children) by the sharder (sequential distributor, so all work is in this process tree) and by
`ffmpeg -vf fps=1,scale=...` writing rgb24 to /dev/null, and their ratio (target >= 0.85). Both use one decoder
thread per video, as the sharder does per Ray task. Each side runs `--rounds` times, alternating; the best round counts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("video_id,path\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "caption.json"), "w") as f:
        json.dump(captions, f)
    return os.path.join(root, "manifest.csv")


def baseline(paths: list[str], fps: float, size: int) -> float:
    vf = f"fps={fps},scale={size}:{size}:force_original_aspect_ratio=increase"
    for p in paths:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", p,
                        "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null"], check=True)


def measure(fn) -> tuple[float, float]:
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - c0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", help="an existing corpus (contract 1); default: make lavfi videos")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stg-bench-") as tmp:
        manifest = args.manifest or make_corpus(os.path.join(tmp, "corpus"), args.videos, args.seconds, args.height)
        paths = [v.path for v in read_manifest(manifest)]
        base, shard, report = [], [], {}
        for r in range(args.rounds):
            base.append(measure(lambda: baseline(paths, args.fps, args.size)))
            cfg = ShardConfig(manifest=manifest, output=os.path.join(tmp, f"out{r}"), distributor="sequential",
                              fps=args.fps, size=args.size, videos_per_shard=max(1, len(paths) // 2), progress=False)
            shard.append(measure(lambda: report.update(run(cfg))))
        video_s = report["seconds_decoded"]
        b_cpu, b_wall = min(base)
        s_cpu, s_wall = min(shard)
        out = {
            "videos": len(paths), "video_seconds": video_s, "samples": report["total_samples"],
            "failures": report["failures"], "rounds": args.rounds, "fps": args.fps, "size": args.size,
            "baseline_ffmpeg": {"cpu_s": round(b_cpu, 3), "wall_s": round(b_wall, 3),
                                "video_s_per_core_s": round(video_s / b_cpu, 2)},
            "sharder": {"cpu_s": round(s_cpu, 3), "wall_s": round(s_wall, 3),
                        "video_s_per_core_s": round(video_s / s_cpu, 2)},
            "ratio": round(b_cpu / s_cpu, 3), "target": 0.85,
        }
        out["meets_target"] = out["ratio"] >= out["target"]
        print(json.dumps(out))


if __name__ == "__main__":
    main()
