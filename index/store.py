"""Index directories: versioned FAISS files plus `index.json`, the sidecar that commits a version.

Layout under an index URL (local dir or s3 prefix):
  index-000003.faiss      the index (FAISS's own serialisation)
  index-000003.ivfdata    inverted lists of an on-disk index (memory-mapped; absent for in-memory indices)
  keys-000003.off.npy ... the per-vector columns (index.columns: keys, video ids, times, caption vectors and
                          texts), one segment per build or add run, read by id range
  index.json              sidecar naming the current version: factory, dim, metric, count, sizes and sha256 of
                          every file, the embedding shards added (with their id ranges) and the column segments.
                          It stays small (no per-vector data), whatever the index's size.
A new version's files are uploaded first and the sidecar is rewritten last, so a run that fails midway leaves the
previous version intact; superseded files are removed only after the new sidecar is in place.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import faiss

from common import fsio
from index.columns import Columns
from index.errors import CorruptIndex, IndexExists, NoIndex

SIDECAR = "index.json"
FORMAT = 2  # 2: per-vector data in column files (index.columns); 1 held it in the JSON
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity


@dataclasses.dataclass
class Meta:
    factory: str
    dim: int
    vectors: str                       # video | text
    embeddings: str                    # embedding dir the shards came from
    shards: list[dict]                 # [{"name", "first_id", "count"}], in id order
    count: int = 0
    segments: list[dict] = dataclasses.field(default_factory=list)  # [{"first_id", "count", "columns"}]
    metric: str = METRIC
    version: int = 0
    data: str = ""
    ivfdata: str | None = None
    trained: str = ""                  # the trained empty index, kept so new shards can be added later
    files: dict = dataclasses.field(default_factory=dict)   # name -> {"size", "sha256"}
    nprobe: int = 16
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "format": FORMAT}

    def column_files(self) -> list[str]:
        return [n for seg in self.segments for names in seg["columns"].values() for n in names]


def sidecar_url(url: str) -> str:
    return fsio.join(url, SIDECAR)


def exists(url: str) -> bool:
    return fsio.exists(sidecar_url(url))


def read_meta(url: str) -> Meta:
    side = sidecar_url(url)
    if not fsio.exists(side):
        raise NoIndex(f"index [{url}]: no index there (missing {SIDECAR}); run `cluster.index build` first")
    try:
        raw = fsio.read_json(side)
        if raw.get("format") == 1:
            raise CorruptIndex(f"{side}: format 1 (per-vector data inside the JSON) is no longer read; rebuild it "
                               f"with `cluster.index build build.rebuild=true`")
        if raw.get("format") != FORMAT:
            raise CorruptIndex(f"{side}: unknown format {raw.get('format')!r}")
        raw.pop("format")
        meta = Meta(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as e:
        raise CorruptIndex(f"{side}: unreadable sidecar ({e})") from e
    if sum(s["count"] for s in meta.segments) != meta.count or any(
            s["first_id"] != sum(t["count"] for t in meta.segments[:i]) for i, s in enumerate(meta.segments)):
        raise CorruptIndex(f"{side}: count {meta.count} disagrees with its column segments")
    return meta


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class Stage:
    """A local folder where one new version is assembled before it is published."""

    def __init__(self, url: str, overwrite: bool | None):
        """overwrite: None = adding to the current version; False = refuse if an index exists; True = replace."""
        self.url = url
        self.previous = read_meta(url) if exists(url) else None
        if self.previous is not None and overwrite is False:
            raise IndexExists(f"index [{url}]: an index already exists there; use `add` for new shards or "
                              f"build.rebuild=true")
        if self.previous is None and overwrite is None:
            raise NoIndex(f"index [{url}]: no index to add to; run `cluster.index build` first")
        self.version = (self.previous.version + 1) if self.previous else 1
        self.dir = tempfile.mkdtemp(prefix="stg-index-")
        self.data = f"index-{self.version:06d}.faiss"
        self.ivfdata = f"index-{self.version:06d}.ivfdata"

    def local(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def commit(self, index: faiss.Index, meta: Meta, trained: faiss.Index | None = None) -> Meta:
        """Publish `index` as the new version; `trained` (the empty trained index) is kept from the previous
        version when not given."""
        if index.ntotal != meta.count:
            raise RuntimeError(f"index holds {index.ntotal} vectors but the id map {meta.count}")
        faiss.write_index(index, self.local(self.data))
        names = [self.data] + ([self.ivfdata] if os.path.exists(self.local(self.ivfdata)) else [])
        files = {}
        for n in meta.column_files():  # segments of earlier versions stay as they are (an add never rewrites them)
            if os.path.exists(self.local(n)):
                names.append(n)
            else:
                assert self.previous is not None
                files[n] = self.previous.files[n]
        if trained is not None:
            meta.trained = f"trained-{self.version:06d}.faiss"
            faiss.write_index(trained, self.local(meta.trained))
            names.append(meta.trained)
        else:
            assert self.previous is not None
            meta.trained = self.previous.trained
            files[meta.trained] = self.previous.files[meta.trained]
        meta.version, meta.data = self.version, self.data
        meta.ivfdata = self.ivfdata if self.ivfdata in names else None
        files.update({n: {"size": os.path.getsize(self.local(n)), "sha256": _sha256(self.local(n))} for n in names})
        meta.files = files
        for n in names:
            fsio.put_file_atomic(self.local(n), fsio.join(self.url, n))
        fsio.write_json_atomic(sidecar_url(self.url), meta.to_json())
        if self.previous is not None:  # superseded only now that the new sidecar is live
            for n in self.previous.files:
                if n not in meta.files:
                    fsio.remove(fsio.join(self.url, n))
        return meta

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_copy(url: str, meta: Meta, verify: bool, names: list[str]) -> str:
    """Folder holding the version's files locally (the index dir itself when local; else a download)."""
    if fsio.is_local(url):
        folder = fsio.filesystem(url)[1]
    else:
        folder = tempfile.mkdtemp(prefix="stg-index-dl-")
        atexit.register(shutil.rmtree, folder, True)  # an on-disk index memory-maps its file while in use
        fs, base = fsio.filesystem(url)
        for n in names:  # streamed to disk: column files can be far larger than memory
            try:
                fs.get_file(base.rstrip("/") + "/" + n, os.path.join(folder, n))
            except FileNotFoundError as e:
                raise CorruptIndex(f"{fsio.join(url, n)}: missing (named by {SIDECAR})") from e
    for n in names:
        info = meta.files[n]
        path = os.path.join(folder, n)
        if not os.path.exists(path):
            raise CorruptIndex(f"{fsio.join(url, n)}: missing (named by {SIDECAR})")
        size = os.path.getsize(path)
        if size != info["size"]:
            raise CorruptIndex(f"{fsio.join(url, n)}: {size} bytes, {SIDECAR} says {info['size']} (truncated?)")
        if verify and _sha256(path) != info["sha256"]:
            raise CorruptIndex(f"{fsio.join(url, n)}: checksum differs from {SIDECAR} (corrupt file)")
    return folder


def load(url: str, verify: bool = True, meta: Meta | None = None) -> tuple[faiss.Index, Meta]:
    meta = meta or read_meta(url)
    folder = _local_copy(url, meta, verify, [meta.data] + ([meta.ivfdata] if meta.ivfdata else []))
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if meta.ivfdata else 0
    try:
        index = faiss.read_index(os.path.join(folder, meta.data), flags)
    except RuntimeError as e:
        raise CorruptIndex(f"{fsio.join(url, meta.data)}: FAISS cannot read it ({str(e).splitlines()[0]})") from e
    if index.d != meta.dim or index.ntotal != meta.count:
        raise CorruptIndex(f"{url}: index has dim {index.d} and {index.ntotal} vectors, "
                           f"{SIDECAR} says dim {meta.dim} and {meta.count}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CorruptIndex(f"{url}: index metric is not inner product")
    return index, meta


def columns(url: str, meta: Meta, verify: bool = False) -> Columns:
    """The version's per-vector columns (index.columns), sizes checked (and checksums with verify)."""
    return Columns(_local_copy(url, meta, verify, meta.column_files()), meta.segments)


def load_trained(url: str, meta: Meta, verify: bool = True) -> faiss.Index:
    folder = _local_copy(url, meta, verify, [meta.trained])
    try:
        index = faiss.read_index(os.path.join(folder, meta.trained))
    except RuntimeError as e:
        raise CorruptIndex(f"{fsio.join(url, meta.trained)}: FAISS cannot read it ({str(e).splitlines()[0]})") from e
    if index.d != meta.dim or index.ntotal != 0:
        raise CorruptIndex(f"{fsio.join(url, meta.trained)}: not an empty trained index of dim {meta.dim}")
    return index
