"""Errors for bad index input. Each names the file or key at fault so a user can act on it."""
from __future__ import annotations

from common.errors import UserError


class IndexInputError(UserError, ValueError):
    """Base class: input the index stage refuses to use (a UserError: one `error:` line and exit 2 at the CLI)."""


class DimensionMismatch(IndexInputError):
    pass


class CorruptIndex(IndexInputError):
    """An index file that is truncated, altered or unreadable, or a sidecar that does not match it."""


class EmbeddingShardError(IndexInputError):
    """An embedding shard that cannot be read or whose arrays disagree with each other."""


class UnknownKeys(IndexInputError):
    pass


class IndexExists(IndexInputError):
    pass


class NoIndex(IndexInputError, FileNotFoundError):
    """No index (no sidecar) where one is needed."""


class StaleEmbeddings(IndexInputError):
    """Embeddings, an index or a table made by another export than the one asked for or found beside them."""
