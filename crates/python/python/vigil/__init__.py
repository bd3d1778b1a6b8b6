"""Vigil's protection-science pipeline from Python, run natively in Rust.

The same stages as the ``vigil`` command line, returning Arrow tables a notebook can read
without a copy (``pyarrow.table(t)``, ``t.to_pandas()``)::

    import vigil
    vigil.generate("gen/events.csv", events=200_000, rings=8, seed=7)
    run = vigil.run("gen/events.csv", "out")          # fit the models, write out/model
    queue = vigil.sql("out", "SELECT * FROM review_queue ORDER BY priority DESC LIMIT 20")
    queue.to_pandas()
    vigil.score("out/model", "new/events.csv", "scored")   # the saved models, no refit

Errors are the classes of :mod:`vigil.errors` (``ValueError`` and ``OSError`` subclasses).
"""

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from vigil_sentinel import _native
from vigil import errors

__all__ = ["generate", "run", "score", "sql", "log_to_stderr", "Table", "Run", "errors"]

PathLike = Union[str, "os.PathLike[str]"]


class Table:
    """A table in Arrow memory: ``__arrow_c_stream__`` hands it to any Arrow library
    without a copy (``pyarrow.table(t)``, ``polars.from_arrow(t)``, DuckDB)."""

    def __init__(self, native):
        self._native = native

    @property
    def num_rows(self) -> int:
        """Rows in the table."""
        return self._native.num_rows

    @property
    def column_names(self) -> List[str]:
        """Column names, in order."""
        return self._native.column_names

    def __len__(self) -> int:
        return self._native.num_rows

    def __arrow_c_stream__(self, requested_schema=None):
        return self._native.__arrow_c_stream__(requested_schema)

    def to_pyarrow(self):
        """As a ``pyarrow.Table`` (needs pyarrow >= 14)."""
        try:
            import pyarrow as pa
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("Table.to_pyarrow needs pyarrow: pip install pyarrow") from None
        return pa.table(self)

    def to_pandas(self, **kwargs):
        """As a ``pandas.DataFrame`` (through pyarrow)."""
        return self.to_pyarrow().to_pandas(**kwargs)

    def __repr__(self) -> str:
        return f"vigil.Table({self.num_rows} rows: {', '.join(self.column_names)})"


class Run:
    """What a ``run`` or ``score`` did: its ``run.json`` manifest and its output tables."""

    def __init__(self, out: str, manifest: Dict[str, Any], data: Optional[str]):
        self.out = out
        self.manifest = manifest
        self._data = data

    def table(self, name: str) -> Table:
        """One output table by its file name (``user_day_scored``, ``review_queue``, ...)."""
        if not name.replace("_", "").isalnum():
            raise errors.InvalidInputError(f"{name!r} is not a table name")
        return sql(self.out, f'SELECT * FROM "{name}"', data=self._data)

    @property
    def tables(self) -> List[str]:
        """The tables the run wrote."""
        return sorted(self.manifest.get("row_counts", {}))

    def __repr__(self) -> str:
        m = self.manifest
        return (f"vigil.Run({m.get('command')} -> {self.out}: {m.get('events_in_dataset')} events, "
                f"{m.get('queue_size')} cases, risk model {m.get('risk_model')})")


def log_to_stderr(level: str = "warn") -> bool:
    """Show Vigil's log lines on stderr (quarantined rows, refused inputs, which fast-mode
    kernel runs); ``level`` is ``error``, ``warn``, ``info`` or ``debug`` (``RUST_LOG``
    overrides it). Returns False when logging was already set up."""
    return _native.log_to_stderr(level)


def _progress(progress) -> Optional[Callable]:
    """``True``: one line per finished stage on stderr (a notebook shows a short log, not a
    flood); a callable gets ``(event, name, done, total)``; ``False``/``None``: silent."""
    if progress is None or progress is False:
        return None
    if callable(progress):
        return progress
    last = [0.0]

    def show(event, name, done, total):
        if event == "end":
            sys.stderr.write(f"  {name:<18} {done:8.2f}s\n")
            sys.stderr.flush()
        elif event == "messages" and total:
            now = time.monotonic()
            if now - last[0] >= 2.0 or done >= total:
                last[0] = now
                sys.stderr.write(f"  rare harm: {int(done)}/{int(total)} texts\n")
                sys.stderr.flush()

    return show


def _paths(inputs: Union[PathLike, Sequence[PathLike], None]) -> List[str]:
    if inputs is None:
        return []
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(p) for p in inputs]


def generate(out: PathLike, *, events: int = 50_000, users: Optional[int] = None,
             days: int = 14, abuse_rate: float = 0.04, seed: int = 42,
             end: Optional[str] = None, incident_day: Optional[int] = None,
             drift: bool = False, rings: int = 0, scenario: str = "notebook",
             text_pool: Optional[PathLike] = None) -> Dict[str, Any]:
    """Synthetic telemetry (``vigil generate``): events written to ``out`` (CSV, JSONL or
    Parquet by extension) and ``ground_truth.csv`` beside it. Deterministic per ``seed`` and
    ``end`` (RFC 3339; default now). Returns the counts written."""
    return _native.generate(os.fspath(out), events, users, days, abuse_rate, seed, end,
                            incident_day, drift, rings, scenario,
                            None if text_pool is None else os.fspath(text_pool))


def run(input: Union[PathLike, Sequence[PathLike], None], out: PathLike, *,
        profile: Optional[str] = None, config: Optional[PathLike] = None,
        data: Optional[PathLike] = None, ground_truth: Optional[PathLike] = None,
        sentinel_index: Optional[str] = None, sentinel_model: Optional[PathLike] = None,
        format: Optional[str] = None, strict: bool = False,
        progress: Union[bool, Callable, None] = True) -> Run:
    """Every stage (``vigil run``): ingest ``input`` (files; ``None`` to rerun on stored
    ``data``), build the tables, fit the models (saved to ``out/model``), queue, enforce,
    report. ``profile="notebook"`` reproduces the notebook. The GIL is released while it
    runs."""
    text = _native.run(_paths(input), os.fspath(out),
                       None if data is None else os.fspath(data), profile,
                       None if config is None else os.fspath(config),
                       None if ground_truth is None else os.fspath(ground_truth),
                       sentinel_index,
                       None if sentinel_model is None else os.fspath(sentinel_model),
                       None, format, strict, _progress(progress))
    return Run(os.fspath(out), json.loads(text), None if data is None else os.fspath(data))


def score(model: PathLike, input: Union[PathLike, Sequence[PathLike], None], out: PathLike, *,
          profile: Optional[str] = None, config: Optional[PathLike] = None,
          data: Optional[PathLike] = None, sentinel_index: Optional[str] = None,
          sentinel_model: Optional[PathLike] = None, format: Optional[str] = None,
          strict: bool = False, progress: Union[bool, Callable, None] = True) -> Run:
    """Apply a saved model bundle (``vigil score``): the bundle's models, thresholds and
    policy on new events, no refit. ``out`` must not be the run that trained the bundle."""
    model, out = os.fspath(model), os.fspath(out)
    if os.path.isdir(out) and os.path.samefile(os.path.dirname(os.path.abspath(model)), out):
        raise errors.InvalidInputError(
            f"out={out!r} is the run that trained the bundle: scoring there would replace its "
            "outputs and review queue; choose another out")
    text = _native.run(_paths(input), out, None if data is None else os.fspath(data), profile,
                       None if config is None else os.fspath(config), None, sentinel_index,
                       None if sentinel_model is None else os.fspath(sentinel_model),
                       model, format, strict, _progress(progress))
    return Run(out, json.loads(text), None if data is None else os.fspath(data))


def sql(out: Optional[PathLike], query: str, *, data: Optional[PathLike] = None,
        timeout: Optional[float] = None) -> Table:
    """A read-only SQL query (DataFusion) over a finished run's output tables (by file name)
    and its stored events (``events``, the core tables); ``timeout`` in seconds."""
    native = _native.sql(query, None if out is None else os.fspath(out),
                         None if data is None else os.fspath(data), timeout)
    return Table(native)
