"""vigil_sentinel: the reference Sentinel library's API on Vigil's native Rust scorer.

A drop-in for ``sentinel``: change ``from sentinel...`` to ``from vigil_sentinel...`` and an
existing script runs, with the encoder (all-MiniLM-L6-v2) and the scoring in Rust. See the
package README for the few differences.
"""

from vigil_sentinel import _native
from vigil_sentinel.errors import (
    CorruptIndexError,
    IndexNotFoundError,
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    StorageError,
    VigilError,
)
from vigil_sentinel.score_formulae import (
    calculate_contrastive_score,
    max_score,
    mean_of_positives,
    percentile_score,
    skewness,
    softmax_weighted_mean,
    top_k_mean,
)
from vigil_sentinel.score_types import RareClassAffinityResult
from vigil_sentinel.sentinel_local_index import SentinelLocalIndex
from vigil_sentinel.simulation import (
    DEFAULT_AGGREGATORS,
    GroupObservationScores,
    LabeledGroup,
    compare_aggregators,
    encode_observations,
    evaluate_groups,
    run_grid_search,
    score_groups,
)

__version__ = _native.__version__
#: Show Vigil's log lines on stderr: ``log_to_stderr("info")``.
log_to_stderr = _native.log_to_stderr

__all__ = [
    "SentinelLocalIndex",
    "log_to_stderr",
    "RareClassAffinityResult",
    "calculate_contrastive_score",
    "skewness",
    "mean_of_positives",
    "top_k_mean",
    "percentile_score",
    "softmax_weighted_mean",
    "max_score",
    "DEFAULT_AGGREGATORS",
    "LabeledGroup",
    "GroupObservationScores",
    "encode_observations",
    "score_groups",
    "evaluate_groups",
    "compare_aggregators",
    "run_grid_search",
    "VigilError",
    "InvalidInputError",
    "CorruptIndexError",
    "IndexNotFoundError",
    "ModelNotFoundError",
    "StorageError",
    "InternalError",
]
