"""The exception classes of the package (shared with :mod:`vigil_sentinel.errors`)."""

from vigil_sentinel.errors import (  # noqa: F401
    CorruptIndexError,
    IndexNotFoundError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    StorageError,
    VigilError,
)

__all__ = [
    "VigilError",
    "InvalidInputError",
    "CorruptIndexError",
    "IndexNotFoundError",
    "ModelNotFoundError",
    "StorageError",
    "InternalError",
]
