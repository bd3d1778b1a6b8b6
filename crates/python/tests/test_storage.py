"""Saving and loading: the reference's three files, local and on S3, explicit keys or the
environment."""

import json

import numpy as np
import pytest

from vigil_sentinel import SentinelLocalIndex
from vigil_sentinel.errors import CorruptIndexError, InvalidInputError, StorageError


def small_index():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(4, 8)).astype(np.float32)
    neg = rng.normal(size=(9, 8)).astype(np.float32)
    pos /= np.linalg.norm(pos, axis=1, keepdims=True)
    neg /= np.linalg.norm(neg, axis=1, keepdims=True)
    return SentinelLocalIndex(
        positive_embeddings=pos,
        negative_embeddings=neg,
        positive_corpus=[f"p{i}" for i in range(4)],
        negative_corpus=[f"n{i}" for i in range(9)],
        model_card={"purpose": "test"},
    ), pos, neg


def test_local_round_trip_keeps_rows_corpora_and_config(tmp_path):
    index, pos, neg = small_index()
    cfg = index.save(str(tmp_path / "idx"), encoder_model_name_or_path="all-MiniLM-L6-v2")
    assert cfg.encoder_model_name_or_path == "all-MiniLM-L6-v2"
    raw = json.loads((tmp_path / "idx" / "sentinel_local_index_config.json").read_text())
    assert raw["encoder_model_name_or_path"] == "all-MiniLM-L6-v2"
    assert json.loads(raw["encoding_kwargs"]) == {"normalize_embeddings": True}
    assert raw["model_card"] == {"purpose": "test"}
    back = SentinelLocalIndex.load(str(tmp_path / "idx"), negative_to_positive_ratio=None)
    assert np.array_equal(back.positive_embeddings, pos)
    assert np.array_equal(back.negative_embeddings, neg)
    assert back.negative_corpus == [f"n{i}" for i in range(9)]
    assert back.model_card == {"purpose": "test"}
    # the default ratio 5.0 keeps floor(4 * 5) = 20 >= 9 negatives: all of them
    assert SentinelLocalIndex.load(str(tmp_path / "idx")).negative_embeddings.shape[0] == 9
    assert SentinelLocalIndex.load(
        str(tmp_path / "idx"), negative_to_positive_ratio=1.0, seed=3
    ).negative_embeddings.shape[0] == 4


def test_s3_round_trip_with_explicit_keys_and_with_the_environment(tmp_path, moto, monkeypatch):
    index, pos, neg = small_index()
    index.save("s3://my-bucket/a/idx", "all-MiniLM-L6-v2",
               aws_access_key_id="key", aws_secret_access_key="secret")
    back = SentinelLocalIndex.load("s3://my-bucket/a/idx", negative_to_positive_ratio=None,
                                   aws_access_key_id="key", aws_secret_access_key="secret")
    assert np.array_equal(back.positive_embeddings, pos)
    assert back.positive_corpus == [f"p{i}" for i in range(4)]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    again = SentinelLocalIndex.load("s3://my-bucket/a/idx", negative_to_positive_ratio=None)
    assert np.array_equal(again.negative_embeddings, neg)
    # the same bytes as a local save
    index.save(str(tmp_path / "local"), "all-MiniLM-L6-v2")
    back.save(str(tmp_path / "copy"), "all-MiniLM-L6-v2")
    for name in ("embeddings.safetensors", "corpus.json", "sentinel_local_index_config.json"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "copy" / name).read_bytes()
    with pytest.raises(StorageError):
        SentinelLocalIndex.load("s3://my-bucket/missing", negative_to_positive_ratio=None)
    with pytest.raises(InvalidInputError):
        SentinelLocalIndex.load("s3://my-bucket/a/idx", aws_access_key_id="only-one")


def test_bad_files_and_paths_raise_the_right_classes(tmp_path):
    index, _, _ = small_index()
    index.save(str(tmp_path / "idx"), "all-MiniLM-L6-v2")
    with pytest.raises(FileNotFoundError):
        SentinelLocalIndex.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        SentinelLocalIndex.load(str(tmp_path / "empty"))
    assert "sentinel_local_index_config.json" in str(e.value)
    emb = tmp_path / "idx" / "embeddings.safetensors"
    emb.write_bytes(emb.read_bytes()[:-7])
    with pytest.raises(CorruptIndexError) as e:
        SentinelLocalIndex.load(str(tmp_path / "idx"))
    assert isinstance(e.value, ValueError) and "embeddings.safetensors" in str(e.value)
    (tmp_path / "idx" / "sentinel_local_index_config.json").write_text("{not json")
    with pytest.raises(ValueError):
        SentinelLocalIndex.load(str(tmp_path / "idx"))
