"""python -m tubes.from_coco --results R.json --frames DIR --out detections.json: a detector's COCO-style results
on the frames of `python -m tubes.frames` -> the detections file of docs/stvg.md.

The results are what Detectron2 (`coco_instances_results.json`), MMDetection (`--format-only`, `*.bbox.json`) and
Grounding DINO's COCO export write: a list of `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`, with
`image_id` the id of `DIR/images.json` (or its `file_name`). Each image maps back to its video and native frame
exactly; every extracted frame is listed (empty when nothing was found, so "seen, nothing there" is not "not
seen"); fps is the video's native rate. Checked against each video (the probe `tubes.frames` recorded): an
unknown image, a frame id past the video, a box outside the frame: one `error:` line naming the video and frame.
Boxes a detector clipped to nothing (zero width or height) are counted and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from common import cli, fsio
from common.errors import UserError
from tubes.proposals import FORMAT, pack
from tubes.videos import VideoInfo, check_proposals


def _image_table(frames_dir: str) -> tuple[dict, dict, dict[str, VideoInfo]]:
    url = os.path.join(frames_dir, "images.json")
    if not os.path.exists(url):
        raise UserError(f"frames [{url}]: not found (python -m tubes.frames writes it)")
    data = json.load(open(url))
    by_id = {img["id"]: img for img in data["images"]}
    by_name = {img["file_name"]: img for img in data["images"]}
    infos = {vid: VideoInfo(v["fps"], v["frames"], v["width"], v["height"]) for vid, v in data["videos"].items()}
    return by_id, by_name, infos


def convert(results_url: str, frames_dir: str, min_score: float = 0.0, top: int = 0) -> tuple[dict, dict]:
    """(detections file as a dict, counts)."""
    by_id, by_name, infos = _image_table(frames_dir)
    results = json.loads(fsio.read_bytes(results_url)) if fsio.exists(results_url) else None
    if results is None:
        raise UserError(f"results [{results_url}]: not found")
    if isinstance(results, dict) and "annotations" in results:  # a COCO file with detections as its annotations
        results = results["annotations"]
    if not isinstance(results, list):
        raise UserError(f"results [{results_url}]: expected COCO results, a list of "
                        "{image_id, category_id, bbox: [x, y, w, h], score}")
    rows: dict[str, dict[int, list]] = {vid: {} for vid in infos}
    for img in by_id.values():
        rows[img["video"]][img["frame"]] = []
    counts = {"results": len(results), "kept": 0, "empty_box": 0, "below_score": 0, "beyond_top": 0}
    for i, r in enumerate(results):
        try:
            key, (x, y, w, h), score = r["image_id"], (float(v) for v in r["bbox"]), float(r.get("score", 1.0))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"results [{results_url} #{i}]: need image_id, bbox [x, y, w, h], score ({e})") from None
        img = by_id.get(key) if not isinstance(key, str) else by_name.get(key, by_name.get(key.lstrip("./")))
        if img is None and isinstance(key, str) and key.isdigit():
            img = by_id.get(int(key))
        if img is None:
            raise UserError(f"results [{results_url} #{i}]: image_id {key!r} is not one of {frames_dir}/images.json")
        if not all(np.isfinite([x, y, w, h, score])):
            raise UserError(f"results [{results_url} #{i}] (video {img['video']} frame {img['frame']}): "
                            "bbox and score must be finite")
        if w <= 0 or h <= 0:
            counts["empty_box"] += 1
            continue
        if score < min_score:
            counts["below_score"] += 1
            continue
        rows[img["video"]][img["frame"]].append(([x, y, x + w, y + h], score))
    out = {}
    for vid, frames in rows.items():
        packed = {}
        for f, dets in frames.items():
            dets.sort(key=lambda d: -d[1])
            if top and len(dets) > top:
                counts["beyond_top"] += len(dets) - top
                dets = dets[:top]
            counts["kept"] += len(dets)
            packed[f] = dets
        props = pack(vid, {f: (np.asarray([d[0] for d in v], np.float32).reshape(-1, 4),
                               np.asarray([d[1] for d in v], np.float32), None) for f, v in packed.items()},
                     infos[vid].fps)
        check_proposals(results_url, vid, props, infos[vid])
        out[vid] = {"fps": infos[vid].fps, "frames": {
            str(f): {"boxes": [[round(c, 2) for c in d[0]] for d in v], "scores": [round(d[1], 5) for d in v]}
            for f, v in sorted(packed.items())}}
    return {"format": FORMAT, "box_format": "xyxy", "videos": out}, counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tubes.from_coco", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--results", required=True, help="COCO-style results JSON (a list of detections)")
    p.add_argument("--frames", required=True, help="the folder python -m tubes.frames wrote (its images.json)")
    p.add_argument("--out", required=True, help="detections file to write (.json)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop detections scoring below this")
    p.add_argument("--top", type=int, default=0, help="keep the N best boxes per frame (VCMA: 10); 0 keeps all")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--debug", action="store_true", help="tracebacks for expected errors too")
    args = p.parse_args(argv)
    if fsio.exists(args.out) and not args.overwrite:
        raise UserError(f"output [{args.out}]: exists (--overwrite replaces it)")
    data, counts = convert(args.results, args.frames, args.min_score, args.top)
    fsio.write_text_atomic(args.out, json.dumps(data) + "\n")
    print(json.dumps({"videos": len(data["videos"]), "frames": sum(len(v["frames"]) for v in data["videos"].values()),
                      **counts, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
