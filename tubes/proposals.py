"""Object proposals per video frame behind one interface, whatever made them (docs/stvg.md, "Detections file").

A source has a `name` (part of the region-feature cache key) and `video(vid) -> Proposals`:
- DetectionsFile: a user's detections (Faster R-CNN, Detectron2, Grounding DINO exports) as JSON or npz;
- synthetic(corpus, split): the STVG synthetic corpus's `detections.json` (the same format);
- ModelProposals (tubes.model_proposals): class-agnostic boxes from the pretrained model's patch maps.
Malformed files are refused with a UserError naming the file, the video and the frame.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np

from common import fsio
from common.errors import UserError

FORMAT = "stground-detections/1"


@dataclass
class Proposals:
    """One video's boxes, padded to the most boxes in any frame. Frames without a detection have valid all False."""
    video: str
    frames: np.ndarray                 # (F,) int64 frame indices, ascending
    boxes: np.ndarray                  # (F, N, 4) float32 x1, y1, x2, y2 in source-video pixels
    scores: np.ndarray                 # (F, N) float32, 0 at padding
    valid: np.ndarray                  # (F, N) bool
    fps: float | None = None           # the frame rate the frame indices count in (None: not given)
    features: np.ndarray | None = None  # (F, N, D) float32 detector features, when the file has them

    @property
    def counts(self) -> np.ndarray:
        return self.valid.sum(1)


def _fail(url: str, vid: str | None, frame, problem: str):
    where = url + (f" video {vid}" if vid is not None else "") + (f" frame {frame}" if frame is not None else "")
    raise UserError(f"detections file [{where}]: {problem}")


def _frame_rows(url, vid, frame, boxes, scores, feats, box_format: str, dim: list):
    """Validated (boxes (n, 4) xyxy, scores (n,), features (n, D) or None) of one frame."""
    bad = next((i for i, x in enumerate(boxes) if not isinstance(x, (list, tuple)) or len(x) != 4), None)
    if bad is not None:
        _fail(url, vid, frame, f"box {bad} must be [x1, y1, x2, y2] (4 numbers), got {str(boxes[bad])[:80]}")
    try:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        _fail(url, vid, frame, f"boxes must hold numbers, got {str(boxes)[:80]}")
    try:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        _fail(url, vid, frame, f"scores must be numbers, got {str(scores)[:80]}")
    if len(s) != len(b):
        _fail(url, vid, frame, f"{len(b)} boxes but {len(s)} scores")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        _fail(url, vid, frame, "boxes and scores must be finite numbers")
    if box_format == "xywh":
        b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if len(bad):
        _fail(url, vid, frame, f"box {int(bad[0])} {b[bad[0]].tolist()} is empty or inverted (need x2 > x1, y2 > y1)")
    f = None
    if feats is not None and len(b):
        try:
            f = np.asarray(feats, dtype=np.float32).reshape(len(b), -1)
        except (TypeError, ValueError):
            _fail(url, vid, frame, f"features must be one vector of numbers per box ({len(b)} boxes)")
        if len(b) and dim and f.shape[1] != dim[0]:
            _fail(url, vid, frame, f"features have {f.shape[1]} dimensions, earlier frames {dim[0]}")
        if len(b):
            dim[:] = [f.shape[1]]
    return b.astype(np.float32), s.astype(np.float32), f


def pack(vid: str, rows: dict[int, tuple], fps: float | None) -> Proposals:
    frames = np.asarray(sorted(rows), dtype=np.int64)
    n = max([len(rows[f][0]) for f in frames] + [1])
    F = len(frames)
    boxes = np.zeros((F, n, 4), np.float32)
    scores = np.zeros((F, n), np.float32)
    valid = np.zeros((F, n), bool)
    with_feats = any(rows[f][2] is not None and len(rows[f][0]) for f in frames)
    dims = [rows[f][2].shape[1] for f in frames if rows[f][2] is not None and len(rows[f][0])]
    feats = np.zeros((F, n, dims[0]), np.float32) if with_feats else None
    for i, f in enumerate(frames):
        b, s, x = rows[int(f)]
        k = len(b)
        order = np.argsort(-s, kind="stable")  # best score first, as detectors write them
        boxes[i, :k], scores[i, :k], valid[i, :k] = b[order], s[order], True
        if feats is not None and k:
            if x is None:
                raise UserError(f"detections of video {vid} frame {int(f)}: some frames have features, this one not")
            feats[i, :k] = x[order]
    return Proposals(vid, frames, boxes, scores, valid, fps, feats)


def _frame_index(url, vid, key) -> int:
    try:
        f = int(key)
    except (TypeError, ValueError):
        _fail(url, vid, key, "frame keys must be integer frame indices")
    if f < 0:
        _fail(url, vid, key, "frame indices must be >= 0")
    return f


def _read_json(url: str, data) -> dict[str, Proposals]:
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        _fail(url, None, None, f"expected {{'format': '{FORMAT}', 'videos': {{video: {{'frames': ...}}}}}}")
    if data.get("format", FORMAT) != FORMAT:
        _fail(url, None, None, f"format must be {FORMAT!r}, got {data['format']!r}")
    box_format = data.get("box_format", "xyxy")
    if box_format not in ("xyxy", "xywh"):
        _fail(url, None, None, f"box_format must be xyxy or xywh, got {box_format!r}")
    out = {}
    dim: list = []
    for vid, v in data["videos"].items():
        if not isinstance(v, dict) or not isinstance(v.get("frames"), dict):
            _fail(url, vid, None, "expected {'fps': f, 'frames': {'<frame>': {'boxes': [...], 'scores': [...]}}}")
        fps = v.get("fps")
        if fps is not None and (not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0):
            _fail(url, vid, None, f"fps must be a positive number, got {fps!r}")
        rows = {}
        for key, e in v["frames"].items():
            f = _frame_index(url, vid, key)
            if not isinstance(e, dict) or "boxes" not in e or "scores" not in e:
                _fail(url, vid, key, "expected {'boxes': [[x1, y1, x2, y2], ...], 'scores': [...]}")
            if not isinstance(e["boxes"], list) or not isinstance(e["scores"], list):
                _fail(url, vid, key, "boxes and scores must be lists")
            rows[f] = _frame_rows(url, vid, key, e["boxes"], e["scores"], e.get("features"), box_format, dim)
        out[str(vid)] = pack(str(vid), rows, float(fps) if fps is not None else None)
    return out


def _read_npz(url: str, blob: bytes) -> dict[str, Proposals]:
    try:
        z = np.load(io.BytesIO(blob), allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        _fail(url, None, None, f"not a readable npz ({e})")
    for k in ("video", "frame", "boxes", "scores"):
        if k not in arrays:
            _fail(url, None, None, f"npz needs arrays video (R,), frame (R,), boxes (R, 4), scores (R,); no {k!r}")
    vids, frames, boxes, scores = arrays["video"], arrays["frame"], arrays["boxes"], arrays["scores"]
    feats = arrays.get("features")
    r = len(vids)
    if boxes.shape != (r, 4) or frames.shape != (r,) or scores.shape != (r,) or (
            feats is not None and (feats.ndim != 2 or len(feats) != r)):
        _fail(url, None, None, f"{r} rows: need frame ({r},), boxes ({r}, 4), scores ({r},), features ({r}, D)")
    box_format = str(arrays.get("box_format", "xyxy"))
    fps_of = {}
    if "fps" in arrays:
        fv = arrays["fps"]
        fps_of = ({str(v): float(f) for v, f in zip(arrays["fps_video"], fv)} if "fps_video" in arrays
                  else {str(v): float(fv) for v in set(vids.tolist())})
        for v, f in fps_of.items():  # the JSON reader's rule: a given fps is a positive number
            if not math.isfinite(f) or f <= 0:
                _fail(url, v, None, f"fps must be a positive number, got {f!r}")
    out = {}
    for vid in dict.fromkeys(str(v) for v in vids.tolist()):
        idx = np.flatnonzero(vids == vid)
        rows = {}
        for f in np.unique(frames[idx]):
            fi = _frame_index(url, vid, f)
            sel = idx[frames[idx] == f]
            rows[fi] = _frame_rows(url, vid, fi, boxes[sel].tolist(), scores[sel].tolist(),
                                   feats[sel] if feats is not None else None, box_format, [])
        out[vid] = pack(vid, rows, fps_of.get(vid))
    return out


def read_detections(url: str) -> dict[str, Proposals]:
    """{video: Proposals} from a detections file (.json or .npz; docs/stvg.md)."""
    if not fsio.exists(url):
        raise UserError(f"detections file [{url}]: not found")
    blob = fsio.read_bytes(url)
    if url.endswith(".npz"):
        return _read_npz(url, blob)
    try:
        data = json.loads(blob)
    except ValueError as e:
        _fail(url, None, None, f"not valid JSON ({e})")
    return _read_json(url, data)


class DetectionsFile:
    """A detections file as a proposal source (read once, on first use)."""

    def __init__(self, url: str, name: str | None = None):
        self.url = url
        self.name = name or "file-" + fsio.join(url).rsplit("/", 1)[-1]
        self._videos: dict[str, Proposals] | None = None

    def videos(self) -> dict[str, Proposals]:
        if self._videos is None:
            self._videos = read_detections(self.url)
        return self._videos

    def video(self, vid: str) -> Proposals:
        v = self.videos().get(vid)
        if v is None:
            raise UserError(f"detections file [{self.url} video {vid}]: no detections for this video")
        return v


def synthetic(corpus: str, split: str) -> DetectionsFile:
    """The STVG synthetic corpus's proposals (shards.synthetic mode=stvg) as a source."""
    return DetectionsFile(fsio.join(corpus, split, "detections.json"), name=f"synthetic-{split}")
