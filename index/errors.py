"""Errors for bad index input. Each names the file or key at fault so a user can act on it."""
from __future__ import annotations


class IndexInputError(ValueError):
    """Base class: input the index stage refuses to use."""


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
