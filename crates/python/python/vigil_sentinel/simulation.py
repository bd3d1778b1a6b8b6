"""The tuning harness, with the reference library's names: score labelled groups once, then
compare aggregators, thresholds and index sizes cheaply. Scoring and every metric run in
Vigil's Rust harness; only the loops over configurations live here."""

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from vigil_sentinel import _native
from vigil_sentinel.errors import InvalidInputError
from vigil_sentinel.score_formulae import (
    max_score,
    mean_of_positives,
    native_aggregator,
    percentile_score,
    skewness,
    softmax_weighted_mean,
    top_k_mean,
)

LOG = logging.getLogger(__name__)

#: The six built-in aggregators by name.
DEFAULT_AGGREGATORS: Dict[str, Callable[[np.ndarray], float]] = {
    "skewness": skewness,
    "mean_of_positives": mean_of_positives,
    "top_k_mean": top_k_mean,
    "percentile_score": percentile_score,
    "softmax_weighted_mean": softmax_weighted_mean,
    "max_score": max_score,
}

COLUMN_TOP_K = "top_k"
COLUMN_INDEX_N_POSITIVE = "index_n_positive"
COLUMN_INDEX_NEG_TO_POS_RATIO = "index_neg_to_pos_ratio"
COLUMN_INDEX_N_POSITIVE_ACTUAL = "index_n_positive_actual"
COLUMN_INDEX_N_NEGATIVE_ACTUAL = "index_n_negative_actual"
GRID_SEARCH_COLUMNS = (
    COLUMN_TOP_K,
    COLUMN_INDEX_N_POSITIVE,
    COLUMN_INDEX_NEG_TO_POS_RATIO,
    COLUMN_INDEX_N_POSITIVE_ACTUAL,
    COLUMN_INDEX_N_NEGATIVE_ACTUAL,
)

# Metadata columns keep None; undefined metrics are NaN, as in the reference.
_METADATA = {"aggregator", "min_score_to_consider", "n_groups", "n_positive"}


@dataclass
class LabeledGroup:
    """One source's observations with a known label (1 = rare class)."""

    name: str
    label: int
    observations: Sequence[str]


@dataclass
class GroupObservationScores:
    """Raw per-observation scores of one group (before any ``min_score`` cut), one per
    distinct observation in order of first appearance."""

    name: str
    label: int
    observation_scores: np.ndarray


def _add_columns(row: Dict[str, Any], **columns: Any) -> Dict[str, Any]:
    clashes = sorted(name for name in columns if name in row)
    if clashes:
        raise ValueError(
            f"Refusing to overwrite existing result column(s): {', '.join(clashes)}."
        )
    row.update(columns)
    return row


def _row(text: str) -> Dict[str, Any]:
    row = json.loads(text)
    for k, v in row.items():
        if v is None and k not in _METADATA:
            row[k] = math.nan
    if row["n_positive"] in (0, row["n_groups"]):
        # with one class missing the reference lists the threshold first in its family
        keys = list(row)
        keys.remove("decision_threshold")
        keys.insert(keys.index("tp"), "decision_threshold")
        row = {k: row[k] for k in keys}
    return row


def encode_observations(
    index,
    groups: Sequence[LabeledGroup],
    *,
    show_progress_bar: bool = False,
    encoding_additional_kwargs: Optional[Mapping[str, object]] = None,
) -> Dict[str, np.ndarray]:
    """Embed every group's observations once (each distinct text encoded once), keyed by
    group name; groups without observations are omitted."""
    distinct: Dict[str, int] = {}
    for g in groups:
        for t in g.observations:
            distinct.setdefault(t, len(distinct))
    if not distinct:
        return {}
    kwargs = dict(getattr(index, "encoding_kwargs", {}) or {})
    kwargs.update(encoding_additional_kwargs or {})
    kwargs["show_progress_bar"] = show_progress_bar
    all_rows = index._encoder().encode(list(distinct), **kwargs)
    out: Dict[str, np.ndarray] = {}
    for g in groups:
        obs = list(g.observations)
        if obs:
            out[g.name] = all_rows[[distinct[t] for t in obs]]
    LOG.info("Encoded observations for %d groups", len(out))
    return out


def score_groups(
    index,
    groups: Sequence[LabeledGroup],
    *,
    top_k: int = 5,
    observation_embeddings: Optional[Mapping[str, np.ndarray]] = None,
    show_progress_bar: bool = False,
    encoding_additional_kwargs: Optional[Mapping[str, object]] = None,
) -> List[GroupObservationScores]:
    """Raw scores of every group's observations (no ``min_score`` cut), one entry per group
    in input order. Observations missing from ``observation_embeddings`` are encoded once."""
    groups = list(groups)
    if int(top_k) < 1:
        raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
    cached = dict(observation_embeddings or {})
    missing = [g for g in groups if g.observations and g.name not in cached]
    if missing:
        cached.update(
            encode_observations(
                index,
                missing,
                show_progress_bar=show_progress_bar,
                encoding_additional_kwargs=encoding_additional_kwargs,
            )
        )
    native = index._require()
    dim = native.dim
    embeddings = [
        cached[g.name] if g.observations else np.zeros((0, dim), dtype=np.float32)
        for g in groups
    ]
    scores = native.score_groups([list(g.observations) for g in groups], embeddings, int(top_k))
    return [
        GroupObservationScores(name=g.name, label=int(g.label), observation_scores=s)
        for g, s in zip(groups, scores)
    ]


def evaluate_groups(
    group_scores: Sequence[GroupObservationScores],
    aggregator: Callable[[np.ndarray], float],
    *,
    aggregator_name: Optional[str] = None,
    min_score_to_consider: float = 0.1,
    top_n: Optional[int] = None,
    decision_threshold: Optional[float] = None,
) -> Dict[str, float]:
    """Aggregate each group to one affinity (scores below ``min_score_to_consider`` set to
    0; an empty group is 0) and report ranking, threshold and separation metrics in one flat
    row. NaN marks a metric that is undefined (e.g. one class missing)."""
    labels = [int(g.label) for g in group_scores]
    builtin = native_aggregator(aggregator)
    name = aggregator_name or getattr(aggregator, "__name__", str(aggregator))
    if builtin is not None:
        text = _native.evaluate_groups(
            [np.asarray(g.observation_scores, dtype=np.float64) for g in group_scores],
            labels,
            builtin[0],
            builtin[1],
            name,
            float(min_score_to_consider),
            top_n,
            decision_threshold,
        )
        return _row(text)
    affinities = []
    for g in group_scores:
        s = np.asarray(g.observation_scores, dtype=np.float64)
        s = np.where(s < min_score_to_consider, 0.0, s)
        affinities.append(float(aggregator(s)) if s.size else 0.0)
    text = _native.evaluate_affinities(
        affinities, labels, name, float(min_score_to_consider), top_n, decision_threshold
    )
    return _row(text)


def compare_aggregators(
    group_scores: Sequence[GroupObservationScores],
    *,
    aggregators: Optional[Mapping[str, Callable[[np.ndarray], float]]] = None,
    min_score_to_consider: float = 0.1,
    top_n: Optional[int] = None,
    decision_threshold: Optional[float] = None,
) -> List[Dict[str, float]]:
    """:func:`evaluate_groups` for each aggregator (default: the six built-ins)."""
    if aggregators is None:
        aggregators = DEFAULT_AGGREGATORS
    return [
        evaluate_groups(
            group_scores,
            fn,
            aggregator_name=name,
            min_score_to_consider=min_score_to_consider,
            top_n=top_n,
            decision_threshold=decision_threshold,
        )
        for name, fn in aggregators.items()
    ]


def run_grid_search(
    index,
    groups: Sequence[LabeledGroup],
    *,
    n_positive_values: Optional[Sequence[int]] = None,
    neg_to_pos_ratios: Optional[Sequence[float]] = None,
    top_k_values: Sequence[int] = (5,),
    min_score_values: Sequence[float] = (0.1,),
    aggregators: Optional[Mapping[str, Callable[[np.ndarray], float]]] = None,
    top_n: Optional[int] = None,
    decision_threshold: Optional[float] = None,
    index_seed: Optional[int] = None,
    cache_observation_embeddings: bool = True,
    show_progress_bar: bool = False,
) -> List[Dict[str, float]]:
    """Sweep, outermost first: index size, ratio (cheap: ``subsample``), ``top_k`` (a
    re-scoring), ``min_score`` and aggregator (free). Observations are encoded once for the
    whole sweep. Each row is :func:`evaluate_groups`'s plus ``top_k``, ``index_n_positive``,
    ``index_neg_to_pos_ratio``, ``index_n_positive_actual``, ``index_n_negative_actual``."""
    if aggregators is None:
        aggregators = DEFAULT_AGGREGATORS
    groups = list(groups)
    positive_options = [None] if n_positive_values is None else list(n_positive_values)
    ratio_options = [None] if neg_to_pos_ratios is None else list(neg_to_pos_ratios)
    cached = (
        encode_observations(index, groups, show_progress_bar=show_progress_bar)
        if cache_observation_embeddings
        else None
    )
    total = len(positive_options) * len(ratio_options)
    rows: List[Dict[str, float]] = []
    configuration = 0
    for n_positive in positive_options:
        for ratio in ratio_options:
            configuration += 1
            if n_positive is None and ratio is None:
                working = index
            else:
                working = index.subsample(
                    n_positive=n_positive, neg_to_pos_ratio=ratio, seed=index_seed
                )
            native = working._require()
            n_pos_actual = native.positive_embeddings.shape[0]
            n_neg_actual = native.negative_embeddings.shape[0]
            if total > 1:
                LOG.info(
                    "Grid search index configuration %d/%d: n_positive=%s ratio=%s "
                    "(actual %s positives / %s negatives)",
                    configuration, total, n_positive, ratio, n_pos_actual, n_neg_actual,
                )
            for top_k in top_k_values:
                scored = score_groups(
                    working,
                    groups,
                    top_k=top_k,
                    observation_embeddings=cached,
                    show_progress_bar=show_progress_bar,
                )
                for min_score in min_score_values:
                    for name, fn in aggregators.items():
                        row = evaluate_groups(
                            scored,
                            fn,
                            aggregator_name=name,
                            min_score_to_consider=min_score,
                            top_n=top_n,
                            decision_threshold=decision_threshold,
                        )
                        _add_columns(
                            row,
                            **{
                                COLUMN_TOP_K: int(top_k),
                                COLUMN_INDEX_N_POSITIVE: n_positive,
                                COLUMN_INDEX_NEG_TO_POS_RATIO: ratio,
                                COLUMN_INDEX_N_POSITIVE_ACTUAL: n_pos_actual,
                                COLUMN_INDEX_N_NEGATIVE_ACTUAL: n_neg_actual,
                            },
                        )
                        rows.append(row)
    return rows
