"""Deterministic WebDataset tars: fixed member order, mtime 0, no owner, so a re-run gives the same bytes."""
from __future__ import annotations

import io
import re
import tarfile
from typing import BinaryIO

# Contract 2's format: manifest.json "format" and each sample json's "format" (1, absent, was one sample per ASR
# segment). It lives with the writer so the sharding driver need not import the reader (webdataset imports torch:
# ~470 MB more resident in the driver).
FORMAT = 2

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def video_key(video_id: str) -> str:
    """The tar key of a video sample; a dot or slash in the id would split the WebDataset key, so those become `_`."""
    return _KEY_UNSAFE.sub("_", video_id)


def sample_key(video_id: str, segment: int) -> str:
    """`<vid>__s<segment:04d>`: the key of one window (one ASR segment) of a video, as embeddings and
    pseudo-positives name it."""
    return f"{video_key(video_id)}__s{segment:04d}"


def frame_name(i: int) -> str:
    """The member name of a video's i-th frame (five digits: 27 hours at 1 fps)."""
    return f"f{i:05d}.jpg"


def _member_order(ext: str) -> tuple:
    m = re.fullmatch(r"f(\d+)\.jpg", ext)
    return (0, int(m.group(1)), "") if m else (1, 0, ext)


class TarWriter:
    def __init__(self, fileobj: BinaryIO):
        # GNU format: no pax headers with host-dependent fields
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT)
        self.bytes = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """All members of one sample, contiguous, frames in index order then the rest by name."""
        for ext in sorted(members, key=_member_order):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
            self.bytes += len(data)

    def close(self) -> None:
        self.tar.close()
