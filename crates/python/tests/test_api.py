"""Bad inputs raise the right exception classes; the GIL is released while encoding; the
package ships its type information."""

import importlib.resources
import threading

import numpy as np
import pytest

import vigil_sentinel
from vigil_sentinel import SentinelLocalIndex
from vigil_sentinel.embeddings.sbert import SentenceEncoder, get_sentence_transformer_and_scaling_fn
from vigil_sentinel.errors import InvalidInputError, ModelNotFoundError, VigilError


def test_bad_inputs_raise_value_errors(model_dir):
    with pytest.raises(InvalidInputError):
        SentinelLocalIndex.from_texts([], ["ordinary"])
    with pytest.raises(ValueError):
        SentinelLocalIndex.from_texts("one string", ["ordinary"])
    with pytest.raises(ValueError):
        SentinelLocalIndex(positive_embeddings=np.zeros((2, 4)), negative_embeddings=np.zeros((2, 5)))
    with pytest.raises(ValueError):
        SentinelLocalIndex(positive_embeddings=np.full((1, 3), np.nan), negative_embeddings=np.ones((1, 3)))
    with pytest.raises(ValueError):
        SentinelLocalIndex(positive_embeddings=np.ones((2, 3)), negative_embeddings=np.ones((1, 3)),
                           positive_corpus=["only one"])
    index = SentinelLocalIndex(positive_embeddings=np.eye(3)[:1], negative_embeddings=np.eye(3)[1:])
    with pytest.raises(ValueError):
        index.calculate_rare_class_affinity(["a"], sample_embeddings=np.ones((1, 4)))
    with pytest.raises(ValueError):
        index.subsample(n_positive=0)
    with pytest.raises(ValueError):
        index.calculate_rare_class_affinity(["a"], sample_embeddings=np.ones((1, 3)), aggregation="median")
    with pytest.raises(ValueError):
        SentenceEncoder(precision="f64")
    # every error is also a VigilError
    assert issubclass(InvalidInputError, VigilError) and issubclass(ModelNotFoundError, OSError)


def test_a_missing_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("VIGIL_MODEL", raising=False)
    with pytest.raises(ModelNotFoundError) as e:
        get_sentence_transformer_and_scaling_fn("all-MiniLM-L6-v2", use_cache=False)
    assert "fetch-model.sh" in str(e.value) and "VIGIL_MODEL" in str(e.value)
    with pytest.raises(FileNotFoundError):
        SentenceEncoder(str(tmp_path))  # a directory without a model


def test_from_texts_builds_a_scoring_index(model_dir, tmp_path, capsys):
    pos = ["send me your password and i'll double your coins", "give me your login code"]
    neg = ["nice build!", "gg everyone", "who wants to race", "lol that was close"]
    index = SentinelLocalIndex.from_texts(pos, neg, neg_to_pos_ratio=1.0, seed=4,
                                          model_card={"by": "test"}, show_progress_bar=True)
    # without tqdm the progress is one stderr line, ending at every text encoded
    assert "4/4 texts" in capsys.readouterr().err
    assert index.positive_embeddings.shape == (2, 384)
    assert index.negative_embeddings.shape == (2, 384)  # surplus negatives dropped first
    assert set(index.negative_corpus) <= set(neg)
    r = index.calculate_rare_class_affinity(
        ["what's your login code? i'll double your coins", "gg"], min_score_to_consider=0.0)
    scores = r.observation_scores
    assert scores["what's your login code? i'll double your coins"] > scores["gg"]
    assert r.per_observation_scores == list(scores.values())
    index.save(str(tmp_path / "i"), "all-MiniLM-L6-v2")
    assert SentinelLocalIndex.load(str(tmp_path / "i")).model_card == {"by": "test"}


def test_encoding_releases_the_gil(model_dir):
    model = SentenceEncoder()
    texts = [f"message number {i} about the weekend trip to the lake" for i in range(600)]
    started, done = threading.Event(), threading.Event()

    def work():
        started.set()
        model._native.encode(texts, 100000)  # one native call for every text
        done.set()

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    spins = 0
    while not done.is_set():
        spins += 1
    t.join()
    # Were the GIL held for the whole call, this thread could not run again until the call
    # ended (it blocks on the GIL from the moment the worker enters native code): a handful
    # of spins at most. Released, it spins the whole encoding (about a second).
    assert spins > 10000, spins


def test_the_package_ships_type_stubs():
    files = importlib.resources.files(vigil_sentinel)
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_native.pyi").is_file()
