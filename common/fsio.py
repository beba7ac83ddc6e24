"""fsspec I/O for local paths and s3:// (or any fsspec URL) with commit-by-rename semantics.

Remote object stores have no rename, but a single PUT (or a completed multipart upload) becomes visible
atomically, so "write locally, then upload once" gives the same guarantee as os.replace on disk.
Storage options (endpoint, credentials) come from the caller or the STG_STORAGE_OPTIONS env var (JSON),
so Ray workers inherit them through the runtime env.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
import uuid
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def storage_options(extra: dict | None = None) -> dict:
    opts: dict[str, Any] = {}
    env = os.environ.get("STG_STORAGE_OPTIONS")
    if env:
        opts.update(json.loads(env))
    if extra:
        opts.update(extra)
    return opts


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def filesystem(url: str, options: dict | None = None):
    """(fs, path) for a URL; local paths are made absolute."""
    # imported here, not at module level: modules that only name paths (tubes/, pretrain/) must import on a bare
    # GPU machine without fsspec (benchmarks/gpu/check.py)
    import fsspec

    if is_local(url):
        path = url[len("file://"):] if url.startswith("file://") else url
        return fsspec.filesystem("file"), os.path.abspath(path)
    protocol = url.split("://", 1)[0]
    fs = fsspec.filesystem(protocol, **storage_options(options))
    return fs, fs._strip_protocol(url)


def join(url: str, *parts: str) -> str:
    if is_local(url):
        return os.path.join(url, *parts)
    return posixpath.join(url, *parts)


def video_file_name(vid: str, source: str = "") -> str:
    """A cache file name for a video id (DiDeMo ids hold '@' and '.'; '/' and the like become '_') plus a short
    hash so two ids that map to the same name stay apart (the finetune feature store's and tubes' region cache).
    With `source` (the video file's url) the hash also covers source_identity(source): two corpora whose ids
    coincide (synthetic corpora made with one seed) never read or rewrite each other's entries (issue 29)."""
    key = vid if not source else f"{vid}\0{source_identity(source)}"
    return f"{_UNSAFE.sub('_', vid)}-{hashlib.sha1(key.encode()).hexdigest()[:12 if source else 6]}.npz"


def source_identity(url: str) -> str:
    """Where a file is and which version of it: its absolute url, size and modification time (or the store's
    ETag), read from the file system's metadata, not the bytes (a cache check must not read every video).
    A missing file has the url alone."""
    if is_local(url):
        path = os.path.abspath(url[7:] if url.startswith("file://") else url)
        try:
            st = os.stat(path)
        except OSError:
            return path
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except (OSError, ValueError):
        return url
    return f"{url}|{info.get('size')}|{info.get('ETag') or info.get('LastModified') or info.get('mtime')}"


def exists(url: str, options: dict | None = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


def makedirs(url: str, options: dict | None = None) -> None:
    if is_local(url):
        os.makedirs(filesystem(url)[1], exist_ok=True)


def read_bytes(url: str, options: dict | None = None) -> bytes:
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(url: str, options: dict | None = None) -> str:
    return read_bytes(url, options).decode("utf-8")


def read_json(url: str, options: dict | None = None) -> Any:
    return json.loads(read_bytes(url, options))


def put_file_atomic(local_path: str, url: str, options: dict | None = None) -> None:
    """Publish a finished local file at `url` so readers never see it half-written."""
    fs, path = filesystem(url, options)
    if is_local(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        # copy then rename: the source may live on another filesystem than the target
        with open(local_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
    else:
        fs.put_file(local_path, path)


def write_bytes_atomic(url: str, data: bytes, options: dict | None = None) -> None:
    if is_local(url):
        fs, path = filesystem(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs, path = filesystem(url, options)
        fs.pipe_file(path, data)


def write_text_atomic(url: str, text: str, options: dict | None = None) -> None:
    write_bytes_atomic(url, text.encode("utf-8"), options)


def write_json_atomic(url: str, obj: Any, options: dict | None = None) -> None:
    write_bytes_atomic(url, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"), options)


def listdir(url: str, options: dict | None = None) -> list[str]:
    """Base names directly under url ([] if it does not exist)."""
    fs, path = filesystem(url, options)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str, options: dict | None = None) -> None:
    fs, path = filesystem(url, options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def local_tempdir(prefix: str = "stg-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
