"""The configuration saved beside an index (``sentinel_local_index_config.json``)."""

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional


@dataclass
class SavedIndexConfig:
    """What ``SentinelLocalIndex.save`` wrote beside the embeddings."""

    encoder_model_name_or_path: str
    encoding_kwargs: Dict[str, Any] = field(default_factory=dict)
    model_card: Optional[Mapping[str, Any]] = None
