"""Checkpoint + untrimmed videos -> a prediction file for `python -m grounding.evaluate`.

    python -m grounding.predict --checkpoint RUN/export --videos DIR/test --out preds.json
    python -m grounding.predict --checkpoint RUN/export --videos a.mp4 b.mp4 --pool "crack eggs;whisk eggs" \
        --out preds.json tau=0.5

`--videos` is a split folder (its manifest.csv), a manifest CSV (`video_id,path`) or mp4 files. The action pool of
each video is `--pool` (a `;`-separated list or a JSON list / vid2step.json file), else the split's
`truth/vid2step.json` / a `vid2step.json` beside the manifest. The output is the per-second format shared by
groundingyoutube, youcook_interactions and miningyoutube (docs/evaluation.md), points and boxes in source-video
pixels. Each video is decoded once at `fps` (default 1: the benchmarks annotate integer seconds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from common import cli, fsio
from common import config as C
from grounding.inference import CropGeometry, FramePrediction, InferenceConfig, ground_video, locate, spatial_heatmaps
from grounding.readers import InputError

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    fps: float = 1.0                  # frames decoded per second of video
    size: int = 0                     # decode size (short side + centre crop); 0: the model's image size
    max_decode_mb: float = 4096.0     # raw frames one video's decode may produce (frames x size^2 x 3 bytes)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # per-frame labelling and boxes

    def validate(self) -> "PredictConfig":
        check_rate(self.fps, "PredictConfig [fps]")
        if self.size < 0:
            raise C.ConfigError(f"PredictConfig [size]: must be >= 0 (0: the model's image size), got {self.size}")
        check_decode_mb(self.max_decode_mb, "PredictConfig [max_decode_mb]")
        self.inference.validate()
        return self


def check_rate(fps: float, where: str) -> float:
    if not (np.isfinite(fps) and fps > 0):
        raise C.ConfigError(f"{where}: frames per second must be a positive number, got {fps!r}")
    return fps


def check_decode_mb(mb: float, where: str) -> float:
    if not (np.isfinite(mb) and mb > 0):
        raise C.ConfigError(f"{where}: must be a positive number of MB, got {mb!r}")
    return mb


@dataclass
class DecodedClip:
    video_id: str
    frames: np.ndarray                # (n, S, S, 3) uint8
    times: np.ndarray                 # (n,) seconds
    geometry: CropGeometry


def list_videos(args: list[str]) -> list[tuple[str, str]]:
    """(video_id, local path or URL) from a split folder, a manifest CSV, or video files."""
    from shards.corpus import read_manifest

    if len(args) == 1 and fsio.is_local(args[0]) and os.path.isdir(args[0]):
        return [(v.video_id, v.path) for v in read_manifest(os.path.join(args[0], "manifest.csv"))]
    if len(args) == 1 and args[0].endswith(".csv"):
        return [(v.video_id, v.path) for v in read_manifest(args[0])]
    return [(os.path.splitext(os.path.basename(a))[0], a) for a in args]


def read_pools(pool_arg: str | None, videos_arg: list[str]) -> tuple[dict[str, list[str]] | None, list[str] | None]:
    """(per-video pools, shared pool): exactly one is not None."""
    if pool_arg is not None:
        if pool_arg.strip() and fsio.exists(pool_arg) and not (fsio.is_local(pool_arg) and os.path.isdir(pool_arg)):
            return _pool_file(pool_arg)
        if _names_a_file(pool_arg):  # a pool file that is not there is not an action description
            raise InputError(f"--pool [{pool_arg}]: no such file (a pool is ';'-separated descriptions or a JSON "
                             f"list / {{video: [steps]}} file)")
        shared = [p.strip() for p in pool_arg.split(";") if p.strip()]
        if not [p for p in shared if p != "background"]:
            raise InputError(f"--pool [{pool_arg!r}]: no action description in it (';'-separated, besides "
                             f"'background')")
        return None, shared
    base = videos_arg[0] if os.path.isdir(videos_arg[0]) else os.path.dirname(videos_arg[0])
    for cand in (os.path.join(base, "truth", "vid2step.json"), os.path.join(base, "vid2step.json")):
        if os.path.exists(cand):
            return _pool_file(cand)
    raise InputError(f"--pool: no action pool for {videos_arg[0]}: pass --pool or put vid2step.json beside the "
                     f"videos")


def _names_a_file(arg: str) -> bool:
    """A --pool value that can only mean a file: a .json name, or a path with no space (descriptions have
    spaces)."""
    arg = arg.strip()
    return arg.lower().endswith(".json") or "://" in arg or (os.sep in arg and " " not in arg and ";" not in arg)


def _pool_file(url: str) -> tuple[dict[str, list[str]] | None, list[str] | None]:
    from grounding.readers.common import read_json

    data = read_json(url, "action pool")
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return {str(k): [str(s) for s in v] for k, v in data.items()}, None
    if isinstance(data, list) and data:
        return None, [str(x) for x in data]
    raise InputError(f"action pool [{url}]: expected a non-empty JSON list of descriptions or {{video: [steps]}}")


class VideoError(InputError):
    """A video that cannot be decoded; `reason` is a failure reason of docs/contracts.md section 2."""

    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(f"video [{path}]: {reason}: {detail}")
        self.reason = reason


def decode(video_id: str, path: str, fps: float, size: int, max_decode_mb: float | None = None) -> DecodedClip:
    """One video as frames; InputError naming the file when it is missing, no video, or over the decode bound."""
    from shards.decode import DecodeError, decode_video

    if not fsio.exists(path):
        raise VideoError(path, "missing_file", "not found")
    local = path
    if not fsio.is_local(path):
        import tempfile

        tmp = tempfile.NamedTemporaryFile(suffix=os.path.splitext(path)[1], delete=False)
        fs, remote = fsio.filesystem(path)
        fs.get_file(remote, tmp.name)
        local = tmp.name
    limit = None if max_decode_mb is None else int(max_decode_mb * 2**20)
    try:
        dec = decode_video(local, fps=fps, size=size, max_bytes=limit)
    except DecodeError as e:
        hint = "; raise max_decode_mb or lower the fps if this is meant" if e.reason == "too_large" else ""
        raise VideoError(path, e.reason, e.detail + hint) from None
    finally:
        if local != path:
            os.remove(local)
    return DecodedClip(video_id, np.stack(dec.frames), np.asarray(dec.times, dtype=np.float64),
                       CropGeometry(dec.width, dec.height, size))


def to_seconds(preds: list[FramePrediction]) -> dict[str, dict]:
    """Per integer second (the benchmarks' grid): the prediction of the frame nearest to it."""
    out: dict[str, dict] = {}
    for p in preds:
        sec = str(int(round(p.time)))
        if sec in out:
            continue
        entry: dict = {"step": p.step, "score": round(float(p.score), 5)}
        if p.point is not None:
            entry["point"] = [round(v, 2) for v in p.point]
        if p.box is not None:
            entry["box"] = [round(v, 2) for v in p.box]
        out[sec] = entry
    return out


@torch.no_grad()
def point_true_steps(model, clip: DecodedClip, steps: dict[int, str], cfg: InferenceConfig) -> dict[str, dict]:
    """Spatial grounding alone (paper Table 3): for each annotated second, the heatmap peak of the *true* step's
    query and the box around it."""
    out: dict[str, dict] = {}
    by_step: dict[str, list[int]] = {}
    secs = np.rint(clip.times).astype(int)
    for i, t in enumerate(secs):
        if int(t) in steps and str(int(t)) not in out:
            by_step.setdefault(steps[int(t)], []).append(i)
            out[str(int(t))] = {}
    for step, idx in by_step.items():
        heat = spatial_heatmaps(model, clip.frames[idx], step, cfg.batch_frames)
        for i, h in zip(idx, heat):
            point, box = locate(h, clip.geometry, cfg.box_threshold, cfg.box_upsample)
            out[str(int(secs[i]))] = {"step": step, "point": [round(v, 2) for v in point],
                                      "box": [round(v, 2) for v in box]}
    return out


def predict_videos(model, videos: list[tuple[str, str]], pools: dict | None, shared: list[str] | None,
                   cfg: PredictConfig, truth_steps: dict[str, dict[int, str]] | None = None) -> tuple[dict, dict]:
    """(predictions in the per-second format, counts). A video that cannot be decoded is counted and skipped.
    With `truth_steps` ({vid: {second: true step}}) only the spatial part runs, on the true steps (pointing)."""
    size = cfg.size or model.image_size
    result: dict[str, dict] = {}
    counts: dict = {"videos": 0, "skipped": {}, "failed": []}
    for vid, path in videos:
        pool = shared if shared is not None else (pools or {}).get(vid)
        if not pool and truth_steps is None:
            counts["skipped"]["no_pool"] = counts["skipped"].get("no_pool", 0) + 1
            log.warning("%s: no action pool, skipped", vid)
            continue
        try:
            clip = decode(vid, path, cfg.fps, size, cfg.max_decode_mb)
        except VideoError as e:  # bad video: count, go on
            counts["skipped"][e.reason] = counts["skipped"].get(e.reason, 0) + 1
            counts["failed"].append(str(e))
            log.warning("%s: %s, skipped", vid, e)
            continue
        if truth_steps is not None:
            result[vid] = point_true_steps(model, clip, truth_steps.get(vid, {}), cfg.inference)
        else:
            preds = ground_video(model, clip.frames, clip.times, pool, clip.geometry, cfg.inference)
            result[vid] = to_seconds(preds)
        counts["videos"] += 1
    return result, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="PredictConfig fields (key=value; inference.* may drop its prefix):\n"
                                       + "\n".join(C.describe_fields(PredictConfig)))
    p.add_argument("--checkpoint", required=True, help="export folder (model.pt + model_config.json) or model.pt")
    p.add_argument("--videos", nargs="+", required=True)
    p.add_argument("--pool", help="';'-separated descriptions, or a JSON list / {vid: [steps]} file")
    p.add_argument("--out", required=True)
    p.add_argument("--pointing", metavar="ANNOTATIONS",
                   help="spatial grounding alone: point the true step of every annotated second (GroundingYouTube "
                        "annotations); read the pointing_game metric of the result")
    p.add_argument("--config", help="YAML of PredictConfig")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too (or STG_DEBUG=1)")
    p.add_argument("overrides", nargs="*", help="key=value (e.g. inference.tau=0.5, fps=2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    top = {f.name for f in dataclasses.fields(PredictConfig)}
    overrides = [o if "." in o.split("=")[0] or o.split("=")[0] in top else f"inference.{o}"
                 for o in args.overrides]
    cfg = C.load(PredictConfig, args.config, overrides).validate()
    if fsio.is_local(args.out) and os.path.isdir(args.out):
        raise InputError(f"--out [{args.out}]: is a folder; give the prediction file's path")
    # everything the user named is checked before the model loads
    videos = list_videos(args.videos)
    if not videos:
        raise InputError(f"--videos [{' '.join(args.videos)}]: no video listed")
    explicit = not (len(args.videos) == 1 and (os.path.isdir(args.videos[0]) or args.videos[0].endswith(".csv")))
    for _, path in videos if explicit else []:
        if not fsio.exists(path):
            raise InputError(f"video [{path}]: not found")
    truth_steps = None
    if args.pointing:
        from grounding.readers.groundingyoutube import read_groundingyoutube

        truth_steps = {vid: {t: step for t, (step, _) in v.boxes.items()}
                       for vid, v in read_groundingyoutube(args.pointing).items()}
        pools, shared = None, None
    else:
        pools, shared = read_pools(args.pool, args.videos)
    from pretrain.export_ref import Export

    model = Export.of(args.checkpoint).load_model()
    preds, counts = predict_videos(model, videos, pools, shared, cfg, truth_steps)
    if not counts["videos"]:
        first = counts["failed"][0] if counts["failed"] else "no action pool"
        raise InputError(f"--videos: none of the {len(videos)} video(s) could be grounded "
                         f"({counts['skipped']}), e.g. {first}")
    fsio.write_json_atomic(args.out, preds)
    print(json.dumps({"out": args.out, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
