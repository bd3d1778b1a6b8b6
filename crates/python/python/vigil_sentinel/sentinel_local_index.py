"""``SentinelLocalIndex``: the reference library's index class, scored by Vigil's Rust scorer.

Same names, arguments, defaults and return shapes as the reference; what differs is listed in
the package README (embeddings are numpy arrays rather than torch tensors; the encoder is the
native all-MiniLM-L6-v2; a custom ``similarity_formula`` or ``scale_fn`` is refused).
"""

import json
import logging
import os
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np

from vigil_sentinel import _native
from vigil_sentinel._progress import Progress
from vigil_sentinel.embeddings.sbert import (
    e5_scaling_function,
    get_sentence_transformer_and_scaling_fn,
)
from vigil_sentinel.errors import IndexNotFoundError, InvalidInputError
from vigil_sentinel.io.saved_index_config import SavedIndexConfig
from vigil_sentinel.score_formulae import (
    calculate_contrastive_score,
    native_aggregator,
    skewness,
)
from vigil_sentinel.score_types import RareClassAffinityResult

LOG = logging.getLogger(__name__)

#: Encoding options every index records (the reference's defaults).
DEFAULT_ENCODING_KWARGS = {"normalize_embeddings": True}


def _validate_texts(name: str, texts: Any) -> List[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(f"{name} must be a list of strings, not a single string")
    try:
        out = list(texts)
    except TypeError:
        raise InvalidInputError(f"{name} must be a list of strings") from None
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InvalidInputError(f"{name}[{bad[0]}] is not a string")
    return out


def _as_matrix(name: str, embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach") and hasattr(embeddings, "cpu"):  # a torch tensor
        embeddings = embeddings.detach().cpu().numpy()
    a = np.asarray(embeddings, dtype=np.float32)
    if a.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array [rows, dim], got shape {a.shape}")
    return a


def _scale_name(scale_fn: Optional[Callable[[float], float]]) -> str:
    if scale_fn is None:
        return "identity"
    if scale_fn is e5_scaling_function:
        return "e5"
    raise InvalidInputError(
        "only scale_fn=None or the E5 scaling function are supported (the scorer runs "
        "natively and cannot call a Python scale function)"
    )


class SentinelLocalIndex:
    """Scores groups of texts for affinity to a rare class, by contrastive similarity to
    positive (rare-class) and negative (ordinary) examples.

    Args:
        sentence_model: The encoder (from
            :func:`vigil_sentinel.embeddings.sbert.get_sentence_transformer_and_scaling_fn`).
            Only needed to score texts without precomputed embeddings.
        positive_embeddings: ``[P, dim]`` embeddings of rare-class examples (numpy, a list,
            or a torch tensor).
        negative_embeddings: ``[N, dim]`` embeddings of ordinary examples.
        scale_fn: ``None`` or the E5 scaling function.
        encoding_additional_kwargs: Encoding options recorded in the index.
        positive_corpus: Texts of the positive rows (for explanations).
        negative_corpus: Texts of the negative rows.
        model_card: Free-form description stored with the index.
    """

    def __init__(
        self,
        sentence_model: Optional[Any] = None,
        positive_embeddings: Optional[Any] = None,
        negative_embeddings: Optional[Any] = None,
        scale_fn: Optional[Callable[[float], float]] = None,
        encoding_additional_kwargs: Mapping[str, Any] = {},
        positive_corpus: Optional[List[str]] = None,
        negative_corpus: Optional[List[str]] = None,
        model_card: Optional[Mapping[str, Any]] = None,
    ):
        self.sentence_model = sentence_model
        self.scale_fn = scale_fn
        _scale_name(scale_fn)
        self.encoding_kwargs = dict(DEFAULT_ENCODING_KWARGS)
        self.encoding_kwargs.update(encoding_additional_kwargs or {})
        self.model_card = model_card
        self._native = None
        if positive_embeddings is not None and negative_embeddings is not None:
            self._native = _native.Index(
                _as_matrix("positive_embeddings", positive_embeddings),
                _as_matrix("negative_embeddings", negative_embeddings),
                None if positive_corpus is None else _validate_texts("positive_corpus", positive_corpus),
                None if negative_corpus is None else _validate_texts("negative_corpus", negative_corpus),
                getattr(sentence_model, "model_name_or_path", None),
                json.dumps(self.encoding_kwargs),
                None if model_card is None else json.dumps(model_card),
            )
        elif positive_embeddings is not None or negative_embeddings is not None:
            raise InvalidInputError(
                "give both positive_embeddings and negative_embeddings, or neither"
            )
        self._model_name = None
        self._precision = "f32"
        self._model_dir = None

    @classmethod
    def _wrap(cls, native, sentence_model=None, scale_fn=None, model_name=None,
              precision="f32", model_dir=None):
        obj = cls.__new__(cls)
        obj.sentence_model = sentence_model
        obj.scale_fn = scale_fn
        obj.encoding_kwargs = dict(DEFAULT_ENCODING_KWARGS)
        try:
            obj.encoding_kwargs.update(json.loads(native.encoding_kwargs))
        except (TypeError, ValueError):
            LOG.warning("the index's encoding_kwargs are not a JSON object; using the defaults")
        card = native.model_card
        obj.model_card = None if card is None else json.loads(card)
        obj._native = native
        obj._model_name = model_name
        obj._precision = precision
        obj._model_dir = model_dir
        return obj

    # --- data -----------------------------------------------------------------------------

    def _require(self):
        if self._native is None:
            raise InvalidInputError(
                "this index has no embeddings: construct it with positive_embeddings and "
                "negative_embeddings, or use SentinelLocalIndex.load / from_texts"
            )
        return self._native

    @property
    def positive_embeddings(self) -> Optional[np.ndarray]:
        """``[P, dim]`` float32 embeddings of the rare class (a copy)."""
        return None if self._native is None else self._native.positive_embeddings

    @property
    def negative_embeddings(self) -> Optional[np.ndarray]:
        """``[N, dim]`` float32 embeddings of ordinary text (a copy)."""
        return None if self._native is None else self._native.negative_embeddings

    @property
    def positive_corpus(self) -> Optional[List[str]]:
        """Texts of the positive rows, if known."""
        return None if self._native is None else self._native.positive_corpus

    @property
    def negative_corpus(self) -> Optional[List[str]]:
        """Texts of the negative rows, if known."""
        return None if self._native is None else self._native.negative_corpus

    def _encoder(self):
        if self.sentence_model is None:
            name = self._model_dir or self._model_name or (
                None if self._native is None else self._native.encoder_model_name_or_path
            )
            model, _ = get_sentence_transformer_and_scaling_fn(
                name or "all-MiniLM-L6-v2", precision=self._precision
            )
            self.sentence_model = model
        return self.sentence_model

    # --- storage --------------------------------------------------------------------------

    def save(
        self,
        path: str,
        encoder_model_name_or_path: str,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
    ) -> SavedIndexConfig:
        """Save the index (three files, byte-compatible with the reference) to a directory
        or an ``s3://bucket/prefix`` URI. Returns the config written."""
        self._require().save(
            str(path), encoder_model_name_or_path, aws_access_key_id, aws_secret_access_key
        )
        return SavedIndexConfig(
            encoder_model_name_or_path=encoder_model_name_or_path,
            encoding_kwargs=dict(self.encoding_kwargs),
            model_card=self.model_card,
        )

    @classmethod
    def load(
        cls,
        path: str,
        *,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
        negative_to_positive_ratio: Optional[float] = 5.0,
        cache_model: bool = False,
        seed: Optional[int] = None,
        model: Optional[str] = None,
        precision: str = "f32",
    ) -> "SentinelLocalIndex":
        """Load an index from a directory or an ``s3://bucket/prefix`` URI.

        ``negative_to_positive_ratio`` keeps ``floor(P * ratio)`` random negatives (``None``
        keeps all); ``seed`` makes that choice reproducible. Vigil's additions: ``model`` (a
        model directory; default ``$VIGIL_MODEL``) and ``precision`` (``f32``, ``int16``,
        ``int8``). The encoder is loaded when texts are first encoded, so scoring precomputed
        embeddings needs no model. ``cache_model`` is accepted for compatibility."""
        path = os.fspath(path)
        if not path.startswith("s3://") and not os.path.isdir(path):
            raise IndexNotFoundError(f"no Sentinel index at {path}: no such directory")
        native = _native.Index.load(
            str(path),
            negative_to_positive_ratio,
            seed,
            aws_access_key_id,
            aws_secret_access_key,
        )
        name = native.encoder_model_name_or_path
        scale_fn = e5_scaling_function if "e5-" in name.lower() else None
        return cls._wrap(native, scale_fn=scale_fn, model_name=name, precision=precision,
                         model_dir=model)

    @classmethod
    def from_texts(
        cls,
        positive_texts: List[str],
        negative_texts: List[str],
        *,
        model_name: str = "all-MiniLM-L6-v2",
        neg_to_pos_ratio: Optional[float] = None,
        batch_size: int = 256,
        seed: Optional[int] = None,
        encoding_additional_kwargs: Optional[Mapping[str, Any]] = None,
        model_card: Optional[Mapping[str, Any]] = None,
        show_progress_bar: bool = False,
        precision: str = "f32",
    ) -> "SentinelLocalIndex":
        """Build an index from raw texts in one call: surplus negatives (beyond
        ``max(1, floor(P * ratio))``) are dropped before encoding, both corpora are kept.
        ``model_name`` is a supported model name or a model directory."""
        pos = _validate_texts("positive_texts", positive_texts)
        neg = _validate_texts("negative_texts", negative_texts)
        if not pos or not neg:
            raise InvalidInputError(
                "building an index needs at least one positive and one negative example"
            )
        if neg_to_pos_ratio is not None and not neg_to_pos_ratio > 0:
            raise InvalidInputError(f"neg_to_pos_ratio must be positive, got {neg_to_pos_ratio}")
        model, scale_fn = get_sentence_transformer_and_scaling_fn(model_name, precision=precision)
        progress = Progress("encoding examples", bool(show_progress_bar))
        try:
            native = _native.Index.from_texts(model._native, pos, neg, neg_to_pos_ratio, seed,
                                              progress)
        finally:
            progress.close()
        if encoding_additional_kwargs or model_card is not None:
            kwargs = dict(DEFAULT_ENCODING_KWARGS)
            kwargs.update(encoding_additional_kwargs or {})
            native = _native.Index(
                native.positive_embeddings,
                native.negative_embeddings,
                native.positive_corpus,
                native.negative_corpus,
                native.encoder_model_name_or_path,
                json.dumps(kwargs),
                None if model_card is None else json.dumps(model_card),
            )
        return cls._wrap(native, sentence_model=model, scale_fn=scale_fn,
                         model_name=model_name, precision=precision)

    def subsample(
        self,
        n_positive: Optional[int] = None,
        neg_to_pos_ratio: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> "SentinelLocalIndex":
        """A smaller copy keeping ``n_positive`` random positives and
        ``max(1, floor(kept * ratio))`` random negatives; rows keep their order, corpora stay
        aligned, the encoder is shared and this index is unchanged."""
        if n_positive is not None and n_positive <= 0:
            raise InvalidInputError(f"n_positive must be positive, got {n_positive}")
        if neg_to_pos_ratio is not None and not neg_to_pos_ratio > 0:
            raise InvalidInputError(f"neg_to_pos_ratio must be positive, got {neg_to_pos_ratio}")
        native = self._require().subsample(n_positive, neg_to_pos_ratio, seed)
        out = type(self)._wrap(native, sentence_model=self.sentence_model,
                               scale_fn=self.scale_fn, model_name=self._model_name,
                               precision=self._precision, model_dir=self._model_dir)
        out.encoding_kwargs = dict(self.encoding_kwargs)
        out.model_card = self.model_card
        return out

    # --- scoring --------------------------------------------------------------------------

    def calculate_rare_class_affinity(
        self,
        text_samples: List[str],
        sample_embeddings: Optional[np.ndarray] = None,
        *,
        top_k: int = 5,
        similarity_formula: Callable[[List[float], List[float]], float] = calculate_contrastive_score,
        aggregation_function: Callable[[np.ndarray], float] = skewness,
        min_score_to_consider: float = 0.1,
        prevent_exact_match: bool = False,
        encoding_additional_kwargs: Mapping[str, Any] = {},
        show_progress_bar: bool = False,
        explain: bool = True,
        include_neighbors: bool = True,
        neighbors_limit: int = 5,
        aggregation: Optional[Any] = None,
    ) -> RareClassAffinityResult:
        """Affinity of a group of texts (one source's recent messages) to the rare class.

        Each text is scored by the contrastive log-ratio of its ``top_k`` nearest positive
        and negative examples (0 below ``min_score_to_consider``), and the distinct texts'
        scores are aggregated (skewness by default; ``aggregation`` is an alias of
        ``aggregation_function`` that also takes a built-in's name). ``sample_embeddings``
        (``[len(texts), dim]``) skips encoding. The GIL is released while scoring."""
        if isinstance(text_samples, (str, bytes)):
            raise InvalidInputError("text_samples must be a list of strings, not a single string")
        texts = text_samples if isinstance(text_samples, list) else list(text_samples)
        if similarity_formula is not calculate_contrastive_score:
            raise InvalidInputError(
                "only the contrastive score is supported (the scorer runs natively and "
                "cannot call a Python similarity formula)"
            )
        if int(top_k) < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
        index = self._require()
        agg = aggregation if aggregation is not None else aggregation_function
        builtin = native_aggregator(agg)
        if builtin is None and not callable(agg):
            raise InvalidInputError(f"unknown aggregation {agg!r}")
        if sample_embeddings is None:
            if texts:
                kwargs = dict(self.encoding_kwargs)
                kwargs.update(encoding_additional_kwargs or {})
                kwargs["show_progress_bar"] = show_progress_bar
                sample_embeddings = self._encoder().encode(texts, **kwargs)
            else:
                sample_embeddings = np.zeros((0, index.dim), dtype=np.float32)
        emb = _as_matrix("sample_embeddings", sample_embeddings)
        if emb.shape[0] != len(texts):
            raise InvalidInputError(
                f"sample_embeddings has {emb.shape[0]} rows but there are {len(texts)} texts"
            )
        name, param = builtin if builtin is not None else ("max_score", None)
        affinity, obs, per_obs, agg_name, stats, expl = index.score_group(
            texts,
            emb,
            int(top_k),
            float(min_score_to_consider),
            bool(prevent_exact_match),
            name,
            param,
            _scale_name(self.scale_fn),
            bool(explain),
            int(neighbors_limit),
            bool(include_neighbors),
        )
        observation_scores = dict(obs)
        if builtin is None:
            values = np.array(list(observation_scores.values()), dtype=float)
            affinity = float(agg(values)) if values.size else 0.0
            agg_name = getattr(agg, "__name__", str(agg))
        return RareClassAffinityResult(
            rare_class_affinity_score=affinity,
            observation_scores=observation_scores,
            aggregation_name=agg_name,
            aggregation_stats=stats,
            explanations=expl,
            per_observation_scores=per_obs,
        )

    def __repr__(self) -> str:
        if self._native is None:
            return "SentinelLocalIndex(empty)"
        return f"SentinelLocalIndex({self._native!r})"
