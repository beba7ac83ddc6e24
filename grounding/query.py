"""Where and when does a description happen in a video?

    python -m grounding.query --checkpoint RUN/export --video V.mp4 --text "crack eggs" [--picture out.png]
    python -m grounding.query --checkpoint RUN/export --video V.mp4 --text "crack eggs" --out DIR [--truth 4 9]

Prints one JSON object: the segments where the query beats the background threshold (start, end, mean score) and,
for the best-scoring second, the point and box in source-video pixels; with --picture or --out it draws the
grounding (grounding.visualize): a PNG grid of sampled frames, and with --out an MP4 of every frame too, against
the true segments given by --truth. With a single query there is no pool to compete with, so a frame is foreground when its z-scored similarity to the
query (over the video's frames) is at least `tau` (default 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from common import cli, fsio
from grounding.inference import InferenceConfig, ground_video, segments_of
from grounding.readers import InputError


def check_request(video: str, text: str, fps: float, tau: float = 0.0, max_decode_mb: float = 1.0) -> None:
    """What query and visualize refuse before loading a model: each a one-line InputError/ConfigError."""
    from grounding.predict import check_decode_mb, check_rate

    if not text.strip():
        raise InputError(f"--text [{text!r}]: the description is empty")
    check_rate(fps, "--fps")
    if not np.isfinite(tau):
        raise InputError(f"--tau [{tau}]: must be a finite number")
    check_decode_mb(max_decode_mb, "--max-decode-mb (max_decode_mb)")
    if not fsio.exists(video):
        raise InputError(f"video [{video}]: not found")


def ground_query(checkpoint, video: str, text: str, fps: float = 1.0, tau: float = 0.5, model=None,
                 max_decode_mb: float | None = None) -> dict:
    from grounding.predict import decode
    from pretrain.export_ref import Export

    model = model if model is not None else Export.of(checkpoint).load_model()
    clip = decode(os.path.splitext(os.path.basename(video))[0], video, fps, model.image_size, max_decode_mb)
    preds = ground_video(model, clip.frames, clip.times, [text], clip.geometry, InferenceConfig(tau=tau))
    period = 1.0 / fps
    segments = []
    for start, end in segments_of(preds, text, period):
        scores = [p.score for p in preds if p.step == text and start <= p.time < end]
        segments.append({"start": round(start, 3), "end": round(end, 3), "score": round(float(np.mean(scores)), 4)})
    fg = [p for p in preds if p.step == text]
    best = max(fg, key=lambda p: p.score) if fg else None
    summary = {"video": video, "query": text, "segments": segments,
               "best": None if best is None else {"time": best.time, "score": round(best.score, 4),
                                                  "point": [round(v, 1) for v in best.point],
                                                  "box": [round(v, 1) for v in best.box]}}
    return {"summary": summary, "frames": clip.frames, "times": clip.times, "predictions": preds,
            "geometry": clip.geometry}


def main(argv: list[str] | None = None) -> int:
    from grounding.predict import PredictConfig
    from grounding.visualize import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="export folder (model.pt + model_config.json) or model.pt")
    p.add_argument("--video", required=True)
    p.add_argument("--text", required=True, help="the description to ground")
    p.add_argument("--fps", type=float, default=1.0, help="frames decoded per second of video")
    p.add_argument("--max-decode-mb", type=float, default=PredictConfig.max_decode_mb,
                   help="raw frames the decode may produce (frames x size^2 x 3 bytes), default %(default)s")
    p.add_argument("--tau", type=float, default=0.5, help="foreground threshold on the z-scored similarity")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--picture", help="also draw the grounding into this PNG (default: no picture)")
    out.add_argument("--out", help="folder for <video stem>.png and an MP4 of every frame, <video stem>.mp4")
    p.add_argument("--truth", nargs=2, type=float, action="append", default=[], metavar=("START", "END"),
                   help="a true segment in seconds, drawn beside the prediction (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too (or STG_DEBUG=1)")
    args = p.parse_args(argv)
    for s, e in args.truth:
        if not (np.isfinite(s) and np.isfinite(e) and 0 <= s < e):
            raise InputError(f"--truth [{s:g} {e:g}]: a true segment needs 0 <= START < END in seconds")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f"--out [{args.out}]: exists and is not a folder")
    check_request(args.video, args.text, args.fps, args.tau, args.max_decode_mb)
    res = ground_query(args.checkpoint, args.video, args.text, args.fps, args.tau,
                       max_decode_mb=args.max_decode_mb)
    drawn = {}
    if args.picture or args.out:  # only where asked: a query writes nothing into the folder it is run from
        stem = os.path.splitext(os.path.basename(args.video))[0]
        png = os.path.join(args.out, f"{stem}.png") if args.out else args.picture
        mp4 = os.path.join(args.out, f"{stem}.mp4") if args.out else None
        written = render(res["frames"], res["times"], res["predictions"], args.text, res["geometry"],
                         [tuple(t) for t in args.truth], png, mp4)
        drawn = {"movie": mp4} if mp4 else {}
        drawn["picture"] = written["png"]
    print(json.dumps({**res["summary"], "picture": drawn.pop("picture", None), **drawn}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
