"""The pipeline from Python: the same tables as the `vigil` binary on the same input, Arrow
tables readable by pyarrow and pandas, and errors of the right classes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vigil
from conftest import REPO

END = "2026-02-15T05:26:38Z"


def vigil_bin() -> str:
    b = os.environ.get("VIGIL_BIN", str(REPO / "target" / "debug" / "vigil"))
    if not Path(b).is_file():
        pytest.fail(f"the vigil binary is needed at {b}: run ./scripts/test.sh (cargo test "
                    "builds it) or set VIGIL_BIN")
    return b


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """20,000 generated events run once through Python and once through the CLI."""
    root = tmp_path_factory.mktemp("pipeline")
    summary = vigil.generate(root / "gen" / "events.csv", events=20_000, rings=3, seed=7,
                             end=END, incident_day=9)
    assert summary["events"] == 20_000 and Path(summary["ground_truth"]).is_file()
    events = root / "gen" / "events.csv"
    seen = []
    run = vigil.run(events, root / "py", progress=lambda *a: seen.append(a))
    cli = subprocess.run([vigil_bin(), "run", "--input", str(events), "--out", str(root / "cli")],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    return root, run, seen


def test_generate_matches_the_cli(tmp_path):
    vigil.generate(tmp_path / "a.csv", events=3_000, seed=3, end=END, drift=True)
    out = subprocess.run([vigil_bin(), "generate", "--events", "3000", "--seed", "3", "--end", END,
                          "--drift", "--out", str(tmp_path / "b.csv")], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_run_writes_the_same_tables_as_the_cli(world):
    root, run, seen = world
    for name in ("user_day_scored.csv", "review_queue.csv", "core_user_day.csv",
                 "monitoring_metrics.csv", "model_eval.csv", "enforcement_actions.csv"):
        py, cli = root / "py" / name, root / "cli" / name
        assert cli.is_file(), name
        assert py.read_bytes() == cli.read_bytes(), name
    assert run.manifest["command"] == "run"
    assert run.manifest["queue_size"] > 0
    assert "user_day_scored" in run.tables
    # progress: every stage started and ended, in order
    ends = [a[1] for a in seen if a[0] == "end"]
    starts = [a[1] for a in seen if a[0] == "start"]
    assert starts and ends == starts


def test_sql_returns_arrow_tables_equal_to_the_cli(world):
    import pyarrow as pa  # installed by scripts/test-python.sh
    root, run, _ = world
    query = "SELECT user_id, day, risk_score, uncertainty FROM user_day_scored ORDER BY risk_score DESC, user_id, day LIMIT 50"
    t = vigil.sql(root / "py", query)
    assert t.num_rows == 50 and t.column_names == ["user_id", "day", "risk_score", "uncertainty"]
    table = pa.table(t)  # through __arrow_c_stream__
    rows = table.to_pylist()
    cli = subprocess.run([vigil_bin(), "sql", "--out", str(root / "cli"), "--format", "json", query],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    want = [json.loads(line) for line in cli.stdout.splitlines() if line.strip()]
    assert len(rows) == len(want)
    for a, b in zip(rows, want):
        assert a["user_id"] == b["user_id"] and str(a["day"]) == str(b["day"])
        assert math.isclose(a["risk_score"], b["risk_score"], rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(a["uncertainty"], b["uncertainty"], rel_tol=1e-12, abs_tol=1e-12)
    df = t.to_pandas()
    assert list(df.columns) == t.column_names and len(df) == 50
    # the same stream twice: each consumer gets its own
    assert pa.table(t).num_rows == 50
    whole = run.table("review_queue")
    assert whole.num_rows == run.manifest["queue_size"]


def test_score_applies_the_saved_bundle(world):
    root, run, _ = world
    scored = vigil.score(root / "py" / "model", root / "gen" / "events.csv", root / "scored",
                         progress=False)
    assert scored.manifest["command"] == "score"
    assert (root / "scored" / "user_day_scored.csv").read_bytes() == (
        root / "py" / "user_day_scored.csv").read_bytes()
    with pytest.raises(ValueError):
        vigil.score(root / "py" / "model", root / "gen" / "events.csv", root / "py")


def test_log_lines_reach_stderr_once_asked_for(tmp_path):
    # A child process (a logger is installed once per process): an invalid load ratio keeps
    # every negative with a warning, which must reach stderr.
    script = f"""
import numpy as np, vigil, vigil_sentinel
assert vigil.log_to_stderr("warn")
assert not vigil.log_to_stderr("info")
index = vigil_sentinel.SentinelLocalIndex(positive_embeddings=np.eye(4)[:1],
                                          negative_embeddings=np.eye(4)[1:])
index.save(r"{tmp_path / 'idx'}", "all-MiniLM-L6-v2")
vigil_sentinel.SentinelLocalIndex.load(r"{tmp_path / 'idx'}", negative_to_positive_ratio=-1.0)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "WARN" in out.stderr and "ratio" in out.stderr, out.stderr
    with pytest.raises(ValueError):
        vigil.log_to_stderr("vigil=loud")


def test_errors_have_the_right_classes(world, tmp_path):
    root, _, _ = world
    with pytest.raises(ValueError) as e:
        vigil.sql(root / "py", "SELECT * FROM no_such_table")
    assert "tables available" in str(e.value) and "user_day_scored" in str(e.value)
    with pytest.raises(ValueError):
        vigil.sql(root / "py", "DELETE FROM user_day_scored")
    with pytest.raises(OSError):
        vigil.sql(tmp_path / "missing", "SELECT 1")
    with pytest.raises(ValueError):
        vigil.run(root / "gen" / "events.csv", tmp_path / "o", profile="no-such-profile")
    with pytest.raises(ValueError):
        vigil.generate(tmp_path / "x.csv", events=10, end="yesterday")
    with pytest.raises(vigil.errors.VigilError):
        vigil.run(tmp_path / "missing.csv", tmp_path / "o2", progress=False)
