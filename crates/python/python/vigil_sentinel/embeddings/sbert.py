"""The sentence encoder, with the reference library's function names.

The reference loads a ``sentence_transformers.SentenceTransformer``; here the encoder is
Vigil's native all-MiniLM-L6-v2 (run in Rust, no torch). No model hub is contacted: the model
directory comes from the argument (a directory holding ``model.safetensors``,
``tokenizer.json`` and ``config.json``) or from ``$VIGIL_MODEL``. A missing model raises
:class:`vigil_sentinel.errors.ModelNotFoundError` saying how to get one.
"""

import os
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from vigil_sentinel import _native
from vigil_sentinel._progress import Progress
from vigil_sentinel.errors import ModelNotFoundError

#: The model names the native encoder runs (the reference's default, with and without its
#: organisation prefix).
SUPPORTED_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

_model_cache: Dict[Tuple[str, str], "SentenceEncoder"] = {}


def resolve_model_dir(model_name_or_path: Optional[str] = None) -> str:
    """The model directory for a name or path: an existing directory is used as is; a
    supported model name (or ``None``) resolves to ``$VIGIL_MODEL``."""
    if model_name_or_path and os.path.isdir(model_name_or_path):
        return model_name_or_path
    if model_name_or_path and model_name_or_path not in SUPPORTED_MODELS:
        raise ModelNotFoundError(
            f"{model_name_or_path!r} is neither a model directory nor a supported model "
            f"({', '.join(SUPPORTED_MODELS)}); {_native.MODEL_HELP}"
        )
    env = os.environ.get("VIGIL_MODEL")
    if not env:
        raise ModelNotFoundError(
            f"no model directory for {model_name_or_path or SUPPORTED_MODELS[0]!r}: "
            f"VIGIL_MODEL is not set; {_native.MODEL_HELP}"
        )
    return env


class SentenceEncoder:
    """A native sentence encoder with the ``encode`` method notebooks call on a
    ``SentenceTransformer``.

    Args:
        model_name_or_path: A model directory, or ``all-MiniLM-L6-v2`` (resolved through
            ``$VIGIL_MODEL``). ``None`` means ``$VIGIL_MODEL``.
        precision: ``"f32"`` (exact; the default), ``"int16"`` (near-lossless, faster) or
            ``"int8"`` (fastest, lossy).
    """

    def __init__(self, model_name_or_path: Optional[str] = None, precision: str = "f32"):
        self.model_dir = resolve_model_dir(model_name_or_path)
        self._native = _native.Encoder(self.model_dir, precision)
        if precision != "f32" and _native.FAST_KERNEL != "avx512-vnni":
            warnings.warn(
                f"this CPU has no AVX-512 VNNI: precision={precision!r} runs on the "
                f"{_native.FAST_KERNEL} kernel and is not faster than 'f32' here",
                RuntimeWarning,
                stacklevel=2,
            )
        self.model_name_or_path = model_name_or_path or self._native.name

    @property
    def precision(self) -> str:
        """``f32``, ``int16`` or ``int8``."""
        return self._native.precision

    def get_sentence_embedding_dimension(self) -> int:
        """Embedding dimension (384 for all-MiniLM-L6-v2)."""
        return self._native.dim

    def encode(
        self,
        sentences: Union[str, Sequence[str]],
        batch_size: int = 32,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
        **_ignored,
    ) -> np.ndarray:
        """Unit-length float32 embeddings, ``[len(sentences), dim]`` (a 1-D row for a single
        string). MiniLM's pipeline normalises every embedding, so they are unit length
        whatever ``normalize_embeddings`` says; other sentence-transformers options are
        accepted and ignored. The GIL is released while encoding."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else [str(s) for s in sentences]
        progress = Progress("encoding", bool(show_progress_bar))
        try:
            # The native encoder batches by token count itself; `batch_size` is accepted for
            # compatibility. Chunks of 256 texts set how often progress and Ctrl-C are seen.
            out = self._native.encode(texts, 256, progress)
        finally:
            progress.close()
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.model_dir!r}, precision={self.precision!r})"


def e5_scaling_function(score: float) -> float:
    """E5-family similarity rescaling: ``(clamp(s, 0.7, 1.0) - 0.7) / 0.3``."""
    return (min(max(score, 0.7), 1.0) - 0.7) / 0.3


def get_sentence_transformer_and_scaling_fn(
    sentence_model_name_or_path: str = SUPPORTED_MODELS[0],
    use_cache: bool = True,
    precision: str = "f32",
) -> Tuple[SentenceEncoder, Optional[Callable[[float], float]]]:
    """The encoder for a model name or directory and its similarity scaling function
    (``None`` except for E5-family models). ``precision`` is Vigil's addition."""
    key = (sentence_model_name_or_path, precision)
    model = _model_cache.get(key) if use_cache else None
    if model is None:
        model = SentenceEncoder(sentence_model_name_or_path, precision=precision)
        if use_cache:
            _model_cache[key] = model
    if "e5-" in sentence_model_name_or_path.lower():
        return model, e5_scaling_function
    return model, None


def clear_model_cache() -> None:
    """Forget cached encoders."""
    _model_cache.clear()


def get_cache_info() -> dict:
    """What the encoder cache holds."""
    return {"cached_models": [k[0] for k in _model_cache], "cache_size": len(_model_cache)}


def remove_from_cache(model_name: str) -> bool:
    """Forget one model's cached encoders; whether any was cached."""
    keys = [k for k in _model_cache if k[0] == model_name]
    for k in keys:
        del _model_cache[k]
    return bool(keys)
