"""python -m tubes.frames --videos DIR|--manifest CSV --out DIR [--stride K]: the frames a detector must see.

Every K-th native frame of each video (K = 1: all of them), at the video's own size, as
`DIR/<video id>/<native frame index:06d>.jpg`: the file name is the frame id the detections file uses, so the
mapping back is exact whatever the stride. `DIR/images.json` is a COCO-style image list (`images` with `id`,
`file_name`, `width`, `height`, plus `video` and `frame`; empty `annotations` and `categories`), the input
Detectron2, MMDetection and Grounding DINO take for inference over a folder of images, and `videos`
(`{vid: {"path", "fps", "frames", "width", "height", "stride"}}`, probed from the video) that
`python -m tubes.from_coco` checks the results against. Prints a JSON summary as its last line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

from common import cli, fsio
from common.errors import UserError
from tubes.videos import probe

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def find_videos(folder: str) -> dict[str, str]:
    """{file stem: path} of the videos under folder, any depth (VidOR and HC-STVG v1 nest them)."""
    if not os.path.isdir(folder):
        raise UserError(f"video folder [{folder}]: not found")
    out: dict[str, str] = {}
    for d, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_SUFFIXES:
                if stem in out:
                    raise UserError(f"video folder [{folder}]: {stem} found twice ({out[stem]} and "
                                    f"{os.path.join(d, name)})")
                out[stem] = os.path.join(d, name)
    return out


def extract(vid: str, path: str, out_dir: str, stride: int) -> tuple[dict, list[int]]:
    """The video's every stride-th native frame as JPEGs named by native index; (video info, frame ids)."""
    from shards.decode import ffmpeg_exe

    info = probe(path)
    target = os.path.join(out_dir, vid)
    os.makedirs(target, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".part-") as tmp:
        # select on n (the frame's index as decoded, in presentation order) keeps native frames 0, K, 2K, ...;
        # passthrough keeps ffmpeg from duplicating or dropping frames to fit an output rate
        vf = ["-vf", f"select=not(mod(n\\,{stride}))"] if stride > 1 else []
        r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path, "-map",
                            "0:v:0", *vf, "-fps_mode", "passthrough", "-q:v", "2", "-start_number", "0",
                            os.path.join(tmp, "%08d.jpg")], capture_output=True, text=True, errors="replace")
        written = sorted(os.listdir(tmp))
        if r.returncode != 0:
            raise UserError(f"video [{path}]: ffmpeg could not extract frames ({r.stderr.strip()[-200:]})")
        want = math.ceil(info.frames / stride)
        if len(written) != want:
            raise UserError(f"video [{path}]: {len(written)} frames decoded at stride {stride}, expected {want} of "
                            f"its {info.frames} frames (a damaged file? re-encode it)")
        frames = []
        for i, name in enumerate(written):
            frames.append(i * stride)
            os.replace(os.path.join(tmp, name), os.path.join(target, f"{i * stride:06d}.jpg"))
    return {"path": os.path.abspath(path), **info.as_dict(), "stride": stride}, frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tubes.frames", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="a folder of videos (any depth; the file stem is the video id)")
    src.add_argument("--manifest", help="a manifest.csv (video_id,path; docs/contracts.md section 1)")
    p.add_argument("--out", required=True, help="output folder (frames and images.json)")
    p.add_argument("--stride", type=int, default=1, help="keep every K-th native frame (default 1: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing images.json")
    p.add_argument("--debug", action="store_true", help="tracebacks for expected errors too")
    args = p.parse_args(argv)
    if args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    index = os.path.join(args.out, "images.json")
    if os.path.exists(index) and not args.overwrite:
        raise UserError(f"output [{index}]: exists (--overwrite replaces it)")
    if args.videos:
        videos = find_videos(args.videos)
    else:
        from shards.corpus import read_manifest

        videos = {v.video_id: v.path for v in read_manifest(args.manifest)}
    missing = sorted(v for v, path in videos.items() if not os.path.isfile(path))
    if missing:
        raise UserError(f"manifest [{args.manifest}]: {len(missing)} videos not found, first {missing[0]} "
                        f"({videos[missing[0]]})")
    images, infos = [], {}
    for vid, path in videos.items():
        infos[vid], frames = extract(vid, path, args.out, args.stride)
        images += [{"id": len(images) + i, "file_name": f"{vid}/{f:06d}.jpg", "width": infos[vid]["width"],
                    "height": infos[vid]["height"], "video": vid, "frame": f} for i, f in enumerate(frames)]
    fsio.write_text_atomic(index, json.dumps({"images": images, "annotations": [], "categories": [],
                                              "videos": infos}) + "\n")
    print(json.dumps({"videos": len(infos), "images": len(images), "stride": args.stride, "index": index}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
