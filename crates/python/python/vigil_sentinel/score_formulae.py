"""Score formulae with the reference library's names and signatures, computed by Vigil's Rust
scorer (``vigil_sentinel._native``)."""

from typing import List, Tuple

import numpy as np

from vigil_sentinel import _native


def _scores(scores) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def mean_of_positives(scores: np.ndarray) -> float:
    """Mean of the scores > 0, else 0."""
    return _native.aggregate("mean_of_positives", _scores(scores))


def skewness(scores: np.ndarray, min_size_of_scores: int = 10) -> float:
    """``(mean - median) / std`` (population std); 0 below ``min_size_of_scores`` scores or
    when the std is 0."""
    return _native.aggregate("skewness", _scores(scores), float(min_size_of_scores))


def top_k_mean(scores: np.ndarray, k: int = 3) -> float:
    """Mean of the ``k`` largest scores > 0, else 0."""
    return _native.aggregate("top_k_mean", _scores(scores), float(k))


def percentile_score(scores: np.ndarray, q: float = 90.0) -> float:
    """The ``q``-th percentile (linear interpolation) of the scores > 0, else 0."""
    return _native.aggregate("percentile_score", _scores(scores), float(q))


def softmax_weighted_mean(scores: np.ndarray, temperature: float = 1.0) -> float:
    """``sum(softmax(x / t) * x)`` over the scores > 0, else 0."""
    return _native.aggregate("softmax_weighted_mean", _scores(scores), float(temperature))


def max_score(scores: np.ndarray) -> float:
    """Largest score > 0, else 0."""
    return _native.aggregate("max_score", _scores(scores))


def contrastive_components(
    similarities_topk_pos: List[float], similarities_topk_neg: List[float]
) -> Tuple[float, float, float]:
    """``(positive_term, negative_term, log_ratio)``: ``mean(exp(s))`` of each side and
    ``ln(positive_term / negative_term)`` (not clipped)."""
    return _native.contrastive_components(
        [float(x) for x in similarities_topk_pos], [float(x) for x in similarities_topk_neg]
    )


def calculate_contrastive_score(
    similarities_topk_pos: List[float], similarities_topk_neg: List[float]
) -> float:
    """The contrastive score: the log-ratio clipped at 0."""
    _, _, log_ratio = contrastive_components(similarities_topk_pos, similarities_topk_neg)
    return log_ratio if log_ratio > 0 else 0.0


# Aggregators the native scorer runs itself: function -> (name, parameter keyword, default).
BUILTIN_AGGREGATORS = {
    skewness: ("skewness", "min_size_of_scores", 10),
    mean_of_positives: ("mean_of_positives", None, None),
    top_k_mean: ("top_k_mean", "k", 3),
    percentile_score: ("percentile_score", "q", 90.0),
    softmax_weighted_mean: ("softmax_weighted_mean", "temperature", 1.0),
    max_score: ("max_score", None, None),
}


def native_aggregator(fn):
    """``(name, parameter)`` when ``fn`` is one of the six built-in aggregators (or a
    ``functools.partial`` of one setting only its parameter) or a built-in's name; ``None``
    for any other callable, which is then applied in Python to the scores."""
    if isinstance(fn, str):
        for name, _, _ in BUILTIN_AGGREGATORS.values():
            if fn == name:
                return name, None
        return None
    base = getattr(fn, "func", None)
    if base in BUILTIN_AGGREGATORS and not getattr(fn, "args", ()):
        name, keyword, _ = BUILTIN_AGGREGATORS[base]
        kw = dict(getattr(fn, "keywords", {}) or {})
        if not kw:
            return name, None
        if keyword is not None and set(kw) == {keyword}:
            return name, float(kw[keyword])
        return None
    try:
        entry = BUILTIN_AGGREGATORS.get(fn)
    except TypeError:
        entry = None
    if entry is None:
        return None
    return entry[0], None


__all__ = [
    "mean_of_positives",
    "skewness",
    "top_k_mean",
    "percentile_score",
    "softmax_weighted_mean",
    "max_score",
    "contrastive_components",
    "calculate_contrastive_score",
]
