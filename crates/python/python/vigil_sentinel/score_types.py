"""Result types, as in the reference library."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass
class RareClassAffinityResult:
    """Affinity of a group of texts to the rare class.

    Attributes:
        rare_class_affinity_score: The aggregated affinity of the whole group.
        observation_scores: Text to its score (after the ``min_score_to_consider`` cut). Keyed
            by text as in the reference: duplicate texts collapse into one entry, which keeps
            its first position and the score of its last occurrence.
        aggregation_name: Name of the aggregation function used.
        aggregation_stats: ``num_texts``, ``num_positive_scores``, ``top_k_per_observation``,
            ``min_score_to_consider``.
        explanations: Per distinct text: the similarities used, the contrastive components and
            the nearest neighbours; ``None`` when ``explain=False``.
        per_observation_scores: Vigil's addition: one score per input position, duplicates
            kept, in input order.
    """

    rare_class_affinity_score: float
    observation_scores: Dict[str, float]
    aggregation_name: Optional[str] = None
    aggregation_stats: Optional[Dict[str, Any]] = None
    explanations: Optional[Dict[str, Any]] = None
    per_observation_scores: Optional[List[float]] = None
