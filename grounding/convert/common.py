"""What both converters share: finding files in a nested release folder, refusing or counting what is missing,
writing an output without losing one already there."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from common import fsio
from grounding.readers.common import InputError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def index_files(root: str, suffixes: tuple[str, ...], what: str) -> dict[str, str]:
    """{file stem: path relative to root} for every file under root (any depth) ending in one of `suffixes`.
    Two files with one stem are refused: the release's ids are unique, so a duplicate means two releases mixed."""
    fs, base = fsio.filesystem(root)
    if not fs.isdir(base):
        raise InputError(f"{what} folder not found: {root}")
    out: dict[str, str] = {}
    for path in sorted(fs.find(base)):
        name = path.rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if not dot or "." + ext.lower() not in suffixes:
            continue
        rel = os.path.relpath(path, base) if fsio.is_local(root) else path[len(base.rstrip("/")) + 1:]
        if stem in out:
            raise InputError(f"{what} folder {root}: {stem} found twice ({out[stem]} and {rel})")
        out[stem] = rel
    return out


@dataclass
class Missing:
    """Missing inputs: refused at the first one (the default) or, with allow=True, counted and named."""
    allow: bool
    videos: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)
    dropped_queries: int = 0

    def video(self, vid: str, where: str, queries: int) -> None:
        if not self.allow:
            raise InputError(f"{where}: video {vid} not found (--allow-missing counts and leaves it out)")
        self.videos.append(vid)
        self.dropped_queries += queries

    def annotation(self, vid: str, where: str, queries: int) -> None:
        if not self.allow:
            raise InputError(f"{where}: no annotation file for video {vid} (--allow-missing counts and leaves it out)")
        self.annotations.append(vid)
        self.dropped_queries += queries

    def report(self) -> dict:
        return {"missing_videos": sorted(set(self.videos)), "missing_annotations": sorted(set(self.annotations)),
                "dropped_queries": self.dropped_queries}


def output_path(out_dir: str, name: str, overwrite: bool) -> str:
    path = fsio.join(out_dir, name)
    if fsio.exists(path) and not overwrite:
        raise InputError(f"output {path} exists (--overwrite replaces it)")
    return path


def write(path: str, obj) -> None:
    fsio.makedirs(path.rsplit("/", 1)[0] if "/" in path else ".")
    fsio.write_text_atomic(path, json.dumps(obj) + "\n")
