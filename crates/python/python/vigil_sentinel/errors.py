"""Exceptions raised by vigil_sentinel, by whose fault they are.

Every class derives from :class:`VigilError` and from the built-in exception a Python user
would catch for that kind of problem, so ``except ValueError`` and ``except OSError`` keep
working:

* :class:`InvalidInputError` (``ValueError``): bad arguments or inputs, e.g. an empty example
  list, ``top_k=0``, embeddings whose row count differs from the texts.
* :class:`CorruptIndexError` (``ValueError``): an index file that is truncated, corrupt or of
  the wrong shape; the message names the file.
* :class:`ModelNotFoundError` (``FileNotFoundError``): the encoder model is missing; the
  message says how to get it.
* :class:`IndexNotFoundError` (``FileNotFoundError``): no index directory at a local path.
* :class:`StorageError` (``OSError``): reading or writing a file or an S3 object failed.
* :class:`InternalError` (``RuntimeError``): a bug in Vigil; please report it.
"""


class VigilError(Exception):
    """Base class of every error vigil_sentinel raises."""


class InvalidInputError(VigilError, ValueError):
    """Invalid arguments or inputs (the caller's to fix)."""


class CorruptIndexError(VigilError, ValueError):
    """An index file is corrupt, truncated or of the wrong shape."""


class ModelNotFoundError(VigilError, FileNotFoundError):
    """The encoder model is missing or unreadable."""


class IndexNotFoundError(VigilError, FileNotFoundError):
    """No index directory at the given local path."""


class StorageError(VigilError, OSError):
    """Reading or writing a local file or an S3 object failed."""


class InternalError(VigilError, RuntimeError):
    """A bug in Vigil."""


__all__ = [
    "VigilError",
    "InvalidInputError",
    "CorruptIndexError",
    "ModelNotFoundError",
    "IndexNotFoundError",
    "StorageError",
    "InternalError",
]
