"""python -m tubes --detections FILE --videos DIR|manifest.csv [--out TUBES.json] [key=value ...]: check a
detections file (docs/stvg.md) against its videos and link its boxes into tubes per video, with the file's
features when it has them (otherwise IoU alone links). The check (tubes/videos.py: fps is the video's native rate,
no frame id past the video, no box outside the frame) needs the videos, so --videos is required: a file that
cannot be checked is not linked. Prints a JSON summary (videos, tubes, proposals) as its last line."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from common import cli, fsio
from common.errors import UserError
from common.config import load, parser
from tubes.config import TubeConfig
from tubes.linking import link_tubes
from tubes.proposals import read_detections
from tubes.videos import check_detections


@dataclass
class LinkConfig:
    detections: str = ""      # detections file (.json or .npz)
    videos: str = ""          # a folder of videos (any depth, stem = id) or a manifest.csv to check the file against
    out: str = ""             # where to write {video: [{"score", "start_frame", "end_frame", "boxes": {frame: box}}]}
    link: TubeConfig = field(default_factory=TubeConfig)  # linking knobs (link.min_iou=0.2, ...)


def _video_paths(where: str) -> dict[str, str]:
    if where.endswith(".csv"):
        from shards.corpus import read_manifest

        return {v.video_id: v.path for v in read_manifest(where)}
    from tubes.frames import find_videos

    return find_videos(where)


def main(argv=None) -> int:
    p = parser(LinkConfig, "Check a detections file and link its boxes into tubes.", "python -m tubes")
    p.add_argument("--detections", help="same as detections=FILE")
    p.add_argument("--out", help="same as out=FILE")
    p.add_argument("--videos", help="same as videos=DIR (or a manifest.csv); required")
    args = p.parse_args(argv)
    cfg = load(LinkConfig, args.config, args.overrides)
    cfg.detections = args.detections or cfg.detections
    cfg.out = args.out or cfg.out
    cfg.videos = args.videos or cfg.videos
    cfg.link.validate()
    if cfg.out and fsio.is_local(cfg.out) and os.path.isdir(cfg.out):  # before any work (else a stray temp file)
        raise UserError(f"--out [{cfg.out}]: is a folder; give the tubes file's path (e.g. {cfg.out}/tubes.json)")
    videos = read_detections(cfg.detections)
    if not cfg.videos:
        raise UserError("--videos is required (a folder of the file's videos or a manifest.csv): the detections "
                        "are checked against each video (native fps, frame ids, boxes inside the frame)")
    if not videos:
        raise UserError(f"detections file [{cfg.detections}]: holds no videos")
    check_detections(cfg.detections, videos, _video_paths(cfg.videos))
    result, n_tubes = {}, 0
    for vid, pr in videos.items():
        feats = pr.features if pr.features is not None else np.zeros((*pr.valid.shape, 1), np.float32)
        k = cfg.link
        tubes = link_tubes(pr.frames, feats, pr.boxes, pr.valid, k.tubes, k.alpha, k.max_gap, k.gap_discount, k.min_iou)
        n_tubes += len(tubes)
        result[vid] = [{"score": t.score, "start_frame": int(pr.frames[t.extent[0]]),
                        "end_frame": int(pr.frames[t.extent[1]]),
                        "boxes": {str(int(f)): [round(float(c), 2) for c in b]
                                  for f, b in zip(pr.frames, t.boxes) if not np.isnan(b[0])}} for t in tubes]
    if cfg.out:
        fsio.write_text_atomic(cfg.out, json.dumps(result) + "\n")
    print(json.dumps({"videos": len(videos), "tubes": n_tubes,
                      "proposals": int(sum(v.valid.sum() for v in videos.values()))}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
