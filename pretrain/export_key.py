"""The identity of a pretrain export (contract 3): a hash of its model.pt and model_config.json.

Whatever is derived from an export (finetune features, embedding shards, indices, mined tables) is keyed by it, so
stale results of another export are never mixed with fresh ones, whatever path the export is read from."""
from __future__ import annotations

import hashlib

from common import fsio
from common.errors import UserError


def export_folder(checkpoint: str) -> str:
    """The export folder of `checkpoint` (the folder itself, or the folder of a model.pt)."""
    folder = checkpoint.rstrip("/")
    if folder.endswith(".pt"):
        folder = folder.rsplit("/", 1)[0] if "/" in folder else "."
    return folder


def export_key(checkpoint: str) -> str:
    """sha256 over model_config.json and model.pt of an export (first 16 hex digits); a UserError naming the
    missing file when the folder is not an export."""
    folder = export_folder(checkpoint)
    h = hashlib.sha256()
    for name in ("model_config.json", "model.pt"):
        url = fsio.join(folder, name)
        try:
            fs, path = fsio.filesystem(url)
            with fs.open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise UserError(f"pretrain export [{url}]: not found (an export holds model.pt and "
                            f"model_config.json)") from e
    return h.hexdigest()[:16]
