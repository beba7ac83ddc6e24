"""The index's per-vector data in numpy files, read by id range (memory-mapped), never whole.

One segment per `build` or `add` run; `add` writes a segment for the vectors it adds and leaves the earlier ones
as they are. A segment `NNNNNN` (the version that wrote it) holds, for its ids first_id .. first_id + count - 1:
  keys-NNNNNN.off.npy + keys-NNNNNN.bin            sample keys: int64 offsets (count + 1) into UTF-8 bytes
  video_ids-NNNNNN.off.npy + video_ids-NNNNNN.bin  video ids, likewise
  captions-NNNNNN.off.npy + captions-NNNNNN.bin    caption texts (absent when the embeddings predate them)
  video_codes-NNNNNN.npy                           (count,) int64 hash of the video id (mining compares videos by it)
  times-NNNNNN.npy                                 (count, 2) float32 window start/end
  text-NNNNNN.npy                                  (count, dim) float32 L2-normalised caption vectors (mining's gate)
Why .npy and not Parquet: numpy is already every stage's dependency, `np.load(mmap_mode="r")` reads any id range
with no decoding and no row-group granularity, and an appended segment is new files, never a rewrite. Strings are
variable-length (offsets + bytes), so no fixed width is guessed before the data is seen.

A reader maps a file only for the duration of one call, so what it touched leaves its resident set again.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

STRINGS = ("keys", "video_ids", "captions")
ARRAYS = ("video_codes", "times", "text")


def files_of(column: str, version: int) -> list[str]:
    if column in STRINGS:
        return [f"{column}-{version:06d}.off.npy", f"{column}-{version:06d}.bin"]
    return [f"{column}-{version:06d}.npy"]


def _npy_header(path: str) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not column files")
        return shape, dtype, f.tell()


def _random_rows(path: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a .npy file at scattered positions, read with pread: nothing of the file is mapped, so the page
    cache holds what was read and the resident set only the copy returned. (A memory map, even with MADV_RANDOM,
    makes every touched page resident in this process: over a mining block's ~32k scattered rows that grew with
    the column, i.e. with the index, see docs/results/memory.md.)"""
    shape, dtype, offset = _npy_header(path)
    row_shape = tuple(shape[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    rows = np.asarray(rows, np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
        raise IndexError(f"{path}: rows outside 0..{shape[0] - 1}")
    uniq, inv = np.unique(rows, return_inverse=True)
    buf = bytearray(len(uniq) * row_bytes)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        # runs of consecutive rows are read in one call (an id range, or neighbours of one video)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for lo, hi in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(uniq)]])):
            want = (hi - lo) * row_bytes
            got = os.preadv(fd, [view[lo * row_bytes:hi * row_bytes]], offset + int(uniq[lo]) * row_bytes)
            if got != want:
                raise ValueError(f"{path}: truncated (rows {uniq[lo]}..{uniq[hi - 1]} not all there)")
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=dtype).reshape((len(uniq),) + row_shape)[inv]


def video_codes(video_ids) -> np.ndarray:
    """A stable 64-bit code per video id (blake2b), the same in every process: a vectorised same-video test."""
    return np.array([int.from_bytes(hashlib.blake2b(str(v).encode("utf-8", "surrogateescape"), digest_size=8)
                                    .digest(), "little", signed=True) for v in video_ids], dtype=np.int64)


def _npy(path: str, dtype, shape: tuple):
    """An open .npy file with its header written, for the rows to be appended in order."""
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": shape})
    return f


class SegmentWriter:
    """Writes one segment of `count` rows in order, a shard at a time, into `folder`."""

    def __init__(self, folder: str, version: int, count: int, dim: int):
        self.folder, self.version, self.count = folder, version, count
        self.columns = list(STRINGS) + list(ARRAYS)
        self.written = 0
        self.captions_missing = False  # a shard embedded before captions were stored: the segment has none
        # plain appending writes, not memory maps: pages written through a map stay in the writer's resident set
        self._off = {c: _npy(self._path(c, 0), np.int64, (count + 1,)) for c in STRINGS}
        self._last = {c: 0 for c in STRINGS}
        self._bin = {c: open(self._path(c, 1), "wb") for c in STRINGS}
        self._arr = {"video_codes": _npy(self._path("video_codes", 0), np.int64, (count,)),
                     "times": _npy(self._path("times", 0), np.float32, (count, 2)),
                     "text": _npy(self._path("text", 0), np.float32, (count, dim))}
        for c in STRINGS:
            self._off[c].write(np.zeros(1, np.int64).tobytes())

    def _path(self, column: str, i: int) -> str:
        return os.path.join(self.folder, files_of(column, self.version)[i])

    def append(self, keys, video_ids, times, text, captions=None) -> None:
        n = len(keys)
        hi = self.written + n
        if hi > self.count:
            raise RuntimeError(f"segment {self.version} planned for {self.count} rows, got {hi}")
        if captions is None:
            self.captions_missing = True
            captions = [""] * n
        values = {"keys": keys, "video_ids": video_ids, "captions": captions}
        for c in STRINGS:
            data = [str(x).encode("utf-8", "surrogateescape") for x in values[c]]
            ends = self._last[c] + np.cumsum([len(b) for b in data], dtype=np.int64)
            self._off[c].write(ends.tobytes())
            self._last[c] = int(ends[-1]) if n else self._last[c]
            self._bin[c].write(b"".join(data))
        self._arr["video_codes"].write(video_codes(video_ids).tobytes())
        self._arr["times"].write(np.ascontiguousarray(np.asarray(times, np.float32).reshape(-1, 2)).tobytes())
        self._arr["text"].write(np.ascontiguousarray(text, dtype=np.float32).tobytes())
        self.written = hi

    def close(self) -> dict:
        """The segment's entry for the sidecar (without first_id)."""
        if self.written != self.count:
            raise RuntimeError(f"segment {self.version}: {self.written} rows written of {self.count}")
        for f in list(self._bin.values()) + list(self._off.values()) + list(self._arr.values()):
            f.close()
        kept = [c for c in self.columns if not (c == "captions" and self.captions_missing)]
        return {"count": self.count, "columns": {c: files_of(c, self.version) for c in kept}}


class Columns:
    """Read access to the segments of one index version, all files local under `folder`."""

    def __init__(self, folder: str, segments: list[dict]):
        self.folder = folder
        self.segments = segments
        end = segments[-1]["first_id"] + segments[-1]["count"] if segments else 0  # a view may start past id 0
        self.starts = np.array([s["first_id"] for s in segments] + [end], np.int64)

    def has(self, column: str) -> bool:
        return all(column in s["columns"] for s in self.segments)

    def _path(self, seg: dict, column: str, i: int = 0) -> str:
        return os.path.join(self.folder, seg["columns"][column][i])

    def _pieces(self, lo: int, hi: int):
        """(segment, local lo, local hi) covering ids lo .. hi - 1."""
        for s in self.segments:
            a, b = max(lo, s["first_id"]), min(hi, s["first_id"] + s["count"])
            if a < b:
                yield s, a - s["first_id"], b - s["first_id"]

    def array(self, column: str, lo: int, hi: int) -> np.ndarray:
        out = [np.array(np.load(self._path(s, column), mmap_mode="r")[a:b]) for s, a, b in self._pieces(lo, hi)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def strings(self, column: str, lo: int, hi: int) -> list[str]:
        out: list[str] = []
        for s, a, b in self._pieces(lo, hi):
            off = np.array(np.load(self._path(s, column, 0), mmap_mode="r")[a:b + 1])
            with open(self._path(s, column, 1), "rb") as f:
                f.seek(int(off[0]))
                blob = f.read(int(off[-1] - off[0]))
            rel = off - off[0]
            out.extend(blob[rel[i]:rel[i + 1]].decode("utf-8", "surrogateescape") for i in range(b - a))
        return out

    def take(self, column: str, ids: np.ndarray) -> np.ndarray:
        """Rows of a numeric column at arbitrary ids (in the order given)."""
        ids = np.asarray(ids, np.int64)
        seg = np.searchsorted(self.starts, ids, side="right") - 1
        out = None
        for si in np.unique(seg):
            s = self.segments[si]
            sel = seg == si
            rows = _random_rows(self._path(s, column), ids[sel] - s["first_id"])
            if out is None:
                out = np.empty((len(ids),) + rows.shape[1:], rows.dtype)
            out[sel] = rows
        return out if out is not None else np.zeros((0,), np.float32)

    def take_strings(self, column: str, ids: np.ndarray) -> np.ndarray:
        """Strings of a column at arbitrary ids (in the order given), as an object array."""
        ids = np.asarray(ids, np.int64)
        out = np.empty(len(ids), dtype=object)
        seg = np.searchsorted(self.starts, ids, side="right") - 1
        for si in np.unique(seg):
            s = self.segments[si]
            sel = np.flatnonzero(seg == si)
            local = ids[sel] - s["first_id"]
            bounds = _random_rows(self._path(s, column, 0), np.concatenate([local, local + 1]))  # one read
            starts, ends = bounds[:len(local)], bounds[len(local):]
            with open(self._path(s, column, 1), "rb") as f:
                for j, a, b in zip(sel, starts, ends):
                    f.seek(int(a))
                    out[j] = f.read(int(b - a)).decode("utf-8", "surrogateescape")
        return out

    def chunks(self, column: str, size: int = 1 << 16):
        """(first id, list of strings) over the whole column, `size` ids at a time."""
        total = int(self.starts[-1])
        for lo in range(int(self.starts[0]), total, size):
            yield lo, self.strings(column, lo, min(total, lo + size))
