"""Type stubs of the native module (the Rust half of vigil_sentinel)."""

from os import PathLike
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

MODEL_HELP: str
FAST_KERNEL: str
__version__: str

_Floats2D = Union[npt.NDArray[np.floating], Sequence[Sequence[float]]]
_Floats1D = Union[npt.NDArray[np.floating], Sequence[float]]

class Encoder:
    """The native all-MiniLM-L6-v2 encoder."""

    def __init__(
        self, model: Optional[Union[str, PathLike[str]]] = None, precision: str = "f32"
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def model_dir(self) -> str: ...
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> npt.NDArray[np.float32]: ...

class Index:
    """A Sentinel index and its scorer."""

    def __init__(
        self,
        positive: _Floats2D,
        negative: _Floats2D,
        positive_corpus: Optional[List[str]] = None,
        negative_corpus: Optional[List[str]] = None,
        encoder_model_name_or_path: Optional[str] = None,
        encoding_kwargs: Optional[str] = None,
        model_card: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def load(
        path: str,
        negative_to_positive_ratio: Optional[float] = 5.0,
        seed: Optional[int] = None,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
    ) -> "Index": ...
    def save(
        self,
        path: str,
        encoder_model_name_or_path: Optional[str] = None,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def from_texts(
        encoder: Encoder,
        positives: List[str],
        negatives: List[str],
        neg_to_pos_ratio: Optional[float] = None,
        seed: Optional[int] = None,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> "Index": ...
    def subsample(
        self,
        n_positive: Optional[int] = None,
        neg_to_pos_ratio: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> "Index": ...
    @property
    def positive_embeddings(self) -> npt.NDArray[np.float32]: ...
    @property
    def negative_embeddings(self) -> npt.NDArray[np.float32]: ...
    @property
    def positive_corpus(self) -> Optional[List[str]]: ...
    @property
    def negative_corpus(self) -> Optional[List[str]]: ...
    @property
    def encoder_model_name_or_path(self) -> str: ...
    @property
    def encoding_kwargs(self) -> str: ...
    @property
    def model_card(self) -> Optional[str]: ...
    @property
    def dim(self) -> int: ...
    def __len__(self) -> int: ...
    def score_group(
        self,
        texts: List[str],
        embeddings: _Floats2D,
        top_k: int = 5,
        min_score_to_consider: float = 0.1,
        prevent_exact_match: bool = False,
        aggregator: str = "skewness",
        aggregator_param: Optional[float] = None,
        scale: str = "identity",
        explain: bool = True,
        neighbors_limit: int = 5,
        include_neighbors: bool = True,
    ) -> Tuple[
        float, List[Tuple[str, float]], List[float], str, Dict[str, float], Optional[Dict[str, dict]]
    ]: ...
    def score_groups(
        self,
        observations: List[List[str]],
        embeddings: List[_Floats2D],
        top_k: int = 5,
    ) -> List[npt.NDArray[np.float64]]: ...

def log_to_stderr(level: str = "warn") -> bool: ...
def aggregate(name: str, scores: _Floats1D, param: Optional[float] = None) -> float: ...
def contrastive_components(
    positive: List[float], negative: List[float]
) -> Tuple[float, float, float]: ...
def evaluate_groups(
    scores: List[_Floats1D],
    labels: List[int],
    aggregator: str,
    aggregator_param: Optional[float] = None,
    name: Optional[str] = None,
    min_score_to_consider: float = 0.1,
    top_n: Optional[int] = None,
    decision_threshold: Optional[float] = None,
) -> str: ...
def evaluate_affinities(
    affinities: List[float],
    labels: List[int],
    name: str,
    min_score_to_consider: float = 0.1,
    top_n: Optional[int] = None,
    decision_threshold: Optional[float] = None,
) -> str: ...

class Table:
    """Arrow record batches with the PyCapsule stream interface."""

    @property
    def num_rows(self) -> int: ...
    @property
    def column_names(self) -> List[str]: ...
    def __arrow_c_stream__(self, requested_schema: object = None) -> object: ...
    def __len__(self) -> int: ...

def generate(
    out: str,
    events: int = 50000,
    users: Optional[int] = None,
    days: int = 14,
    abuse_rate: float = 0.04,
    seed: int = 42,
    end: Optional[str] = None,
    incident_day: Optional[int] = None,
    drift: bool = False,
    rings: int = 0,
    scenario: str = "notebook",
    text_pool: Optional[str] = None,
) -> Dict[str, object]: ...
def run(
    inputs: List[str],
    out: str,
    data: Optional[str] = None,
    profile: Optional[str] = None,
    config_path: Optional[str] = None,
    ground_truth: Optional[str] = None,
    sentinel_index: Optional[str] = None,
    sentinel_model: Optional[str] = None,
    model: Optional[str] = None,
    format: Optional[str] = None,
    strict: bool = False,
    progress: Optional[Callable[[str, str, float, float], object]] = None,
) -> str: ...
def sql(
    query: str,
    out: Optional[str] = None,
    data: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Table: ...
