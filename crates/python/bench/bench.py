"""Sentinel from Python, the workloads of `crates/sentinel/examples/bench.rs` (and the
reference's BASELINES.md), so the two can be run alternately on one machine:

    python crates/python/bench/bench.py scoring     # 400 groups of 50 precomputed embeddings
    python crates/python/bench/bench.py e2e         # 40 groups of 50 lines, encoded + scored
    VIGIL_PRECISION=int16 python crates/python/bench/bench.py e2e

Needs VIGIL_SHARED (conformance texts) and VIGIL_MODEL for e2e."""

import json
import os
import sys
import time

import numpy as np

from vigil_sentinel import SentinelLocalIndex
from vigil_sentinel.embeddings.sbert import SentenceEncoder


def random_unit(rng, rows, dim=384):
    m = rng.random((rows, dim), dtype=np.float32) - 0.5
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def pool():
    shared = os.environ.get("VIGIL_SHARED", "../shared")
    with open(f"{shared}/conformance/texts.json") as f:
        texts = json.load(f)
    out = []

    def collect(v):  # the Rust bench's order: object keys sorted
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            for x in v:
                collect(x)
        elif isinstance(v, dict):
            for k in sorted(v):
                collect(v[k])

    collect(texts)
    return out


def percentile(v, q):
    s = sorted(v)
    return s[round((len(s) - 1) * q)]


def scoring(groups=400):
    rng = np.random.default_rng(1)
    index = SentinelLocalIndex(positive_embeddings=random_unit(rng, 1000),
                               negative_embeddings=random_unit(rng, 5000))
    texts = [f"message {i}" for i in range(50)]
    queries = [random_unit(rng, 50) for _ in range(groups)]
    index.calculate_rare_class_affinity(texts, sample_embeddings=queries[0])
    lat = []
    t = time.perf_counter()
    for q in queries:
        s = time.perf_counter()
        index.calculate_rare_class_affinity(texts, sample_embeddings=q)
        lat.append((time.perf_counter() - s) * 1e3)
    secs = time.perf_counter() - t
    print(f"scoring from Python: index 1000+5000, {groups} groups of 50, explain on: "
          f"{groups * 50 / secs:.0f} messages/s, group latency p50 {percentile(lat, 0.5):.2f} ms "
          f"p99 {percentile(lat, 0.99):.2f} ms")


def e2e():
    precision = os.environ.get("VIGIL_PRECISION", "f32")
    enc = SentenceEncoder(precision=precision)
    rng = np.random.default_rng(2)
    index = SentinelLocalIndex(sentence_model=enc, positive_embeddings=random_unit(rng, 1000),
                               negative_embeddings=random_unit(rng, 5000))
    lines = pool()
    stream = [lines[(7 + i) % len(lines)] for i in range(2000)]
    groups = [stream[i:i + 50] for i in range(0, 2000, 50)]
    index.calculate_rare_class_affinity(groups[0])
    lat = []
    t = time.perf_counter()
    for g in groups:
        s = time.perf_counter()
        index.calculate_rare_class_affinity(g)
        lat.append((time.perf_counter() - s) * 1e3)
    secs = time.perf_counter() - t
    print(f"end to end from Python ({precision}): {len(groups)} groups of 50 encoded and scored: "
          f"{2000 / secs:.0f} messages/s, group latency p50 {percentile(lat, 0.5):.1f} ms "
          f"p99 {percentile(lat, 0.99):.1f} ms")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "scoring"
    {"scoring": scoring, "e2e": e2e}[what]()
