"""YouCook2-Interactions (converted here from the original pickles): segments.json [[vid, start, end]] in seconds
and boxes.json {vid: {second: [x1, y1, x2, y2]}}. As the official loader, every second of start..end (inclusive)
that has a box is one pointing-game frame; a second shared by two segments counts once per segment."""
from __future__ import annotations

from dataclasses import dataclass

from common import fsio
from grounding.readers.common import InputError, as_box, as_int_key, as_pair, is_dir, parent, read_json


@dataclass(frozen=True)
class PointingFrame:
    video: str
    second: int
    box: tuple[float, float, float, float]
    segment: int  # index of the segment it belongs to


def read_youcook_interactions(url: str) -> tuple[list[PointingFrame], list[str]]:
    """(pointing-game frames, every video named in either file)."""
    root = url if is_dir(url) else parent(url)
    seg_url, box_url = fsio.join(root, "segments.json"), fsio.join(root, "boxes.json")
    segments = read_json(seg_url, "YouCook-Interactions segments")
    boxes = read_json(box_url, "YouCook-Interactions boxes")
    if not isinstance(segments, list):
        raise InputError(f"{seg_url}: expected [[video, start, end], ...]")
    if not isinstance(boxes, dict):
        raise InputError(f"{box_url}: expected {{video: {{second: box}}}}")
    frames = []
    for i, s in enumerate(segments):
        if not isinstance(s, list) or len(s) != 3:
            raise InputError(f"{seg_url}[{i}]: expected [video, start, end], got {s!r}")
        start, end = as_pair(s[1:], f"{seg_url}[{i}]")
        if start != int(start) or end != int(end) or not 0 <= start <= end:
            raise InputError(f"{seg_url}[{i}]: need whole seconds 0 <= start <= end, got {s!r}")
        vid, start, end = str(s[0]), int(start), int(end)
        per_sec = boxes.get(vid, {})
        for t in range(start, end + 1):
            if str(t) in per_sec:
                b = as_box(per_sec[str(t)], f"{box_url} [{vid!r}][{t}]")
                frames.append(PointingFrame(vid, t, tuple(b), i))
    for vid, per_sec in boxes.items():  # keys must be seconds even where no segment uses them
        for k in per_sec:
            as_int_key(k, f"{box_url} [{vid!r}]")
    if not frames:
        raise InputError(f"{root}: no annotated frame inside any segment")
    return frames, sorted({str(s[0]) for s in segments} | set(boxes))
