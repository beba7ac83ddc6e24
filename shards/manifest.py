"""python -m shards.manifest DIR --captions caption.json [--out DIR/manifest.csv]: the manifest of a folder tree of
videos (HowTo100M ships mp4, webm and mkv files, in sub-folders when downloaded by category).

The video id is the file's name without its extension (HowTo100M's YouTube ids); paths are written relative to the
manifest's folder. Only videos with a caption entry are listed (a video without one would only be counted as
`no_captions` by every sharding run); videos without captions and captions without videos are counted and the
first few named in the summary (the last line of stdout, one JSON object). The captions may be `caption.json` or
`raw_caption.json` (docs/contracts.md section 1). Two files with one id are refused; an existing manifest is not
replaced without --overwrite.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

from common import cli, fsio
from shards.corpus import CorpusError, read_captions

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")
SHOWN = 10   # names listed per count in the summary


def find_videos(root: str) -> dict[str, str]:
    """{video id: absolute path} under root, any depth, sorted by id."""
    if not os.path.isdir(root):
        raise CorpusError(f"video folder [{root}]: not found")
    found: dict[str, str] = {}
    for d, _, files in os.walk(root):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_SUFFIXES:
                path = os.path.join(d, name)
                if stem in found:
                    raise CorpusError(f"video folder [{root}]: video id {stem} found twice ({found[stem]} and {path})")
                found[stem] = path
    return dict(sorted(found.items()))


def build(root: str, captions_url: str, out: str) -> tuple[str, dict]:
    """(manifest CSV text, counts)."""
    videos = find_videos(root)
    captions = read_captions(captions_url)
    base = os.path.dirname(os.path.abspath(out))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "path"])
    listed = [vid for vid in videos if vid in captions]
    for vid in listed:
        w.writerow([vid, os.path.relpath(videos[vid], base)])
    no_caps = [vid for vid in videos if vid not in captions]
    no_video = sorted(vid for vid in captions if vid not in videos)
    counts = {"videos": len(listed), "videos_without_captions": len(no_caps),
              "captions_without_videos": len(no_video), "first_videos_without_captions": no_caps[:SHOWN],
              "first_captions_without_videos": no_video[:SHOWN],
              "by_extension": {ext: sum(videos[v].lower().endswith(ext) for v in listed) for ext in VIDEO_SUFFIXES}}
    return buf.getvalue(), counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.manifest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("root", help="folder of videos (any depth)")
    p.add_argument("--captions", required=True, help="caption.json or raw_caption.json")
    p.add_argument("--out", help="manifest to write (default: ROOT/manifest.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    p.add_argument("--debug", action="store_true", help="tracebacks for expected errors too")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.root, "manifest.csv")
    if os.path.exists(out) and not args.overwrite:
        raise CorpusError(f"manifest [{out}]: exists (--overwrite replaces it)")
    text, counts = build(args.root, args.captions, out)
    fsio.write_text_atomic(out, text)
    if counts["videos_without_captions"] or counts["captions_without_videos"]:
        print(f"warning: {counts['videos_without_captions']} videos without captions left out, "
              f"{counts['captions_without_videos']} caption entries without a video", file=sys.stderr)
    print(json.dumps({"manifest": out, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
