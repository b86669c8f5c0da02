"""The crisis gate's second layer: paraphrases of risk the rules do not name, by meaning.

Every sentence of a text, and every window of two consecutive sentences, is embedded with the
project's sentence-embedding model (generation.embeddings) and compared with a bank of written
exemplars (crisis_exemplars.jsonl beside this file): positives per category, and hard negatives
(figures of speech, resolved past history, grief, third parties, fiction, clinical talk, ...). A
unit is flagged for a category when its nearest positive exemplar of that category is at least
`similarity` close (cosine) and closer than its nearest hard negative by at least `margin`.

The two thresholds are calibrated on the bank itself, never on the evaluation set: each exemplar
is scored against the others (leave one out), and the pair kept is the one with the best F2
(recall weighs twice precision) over a grid. Each flag names the exemplar it matched and both
similarities, for the lead.

Not yet part of the studio's gate: on the held-out snippets it finds most paraphrases but flags
too many look-alikes (precision about 0.65), and embedding every sentence at import is too slow
to do inline on a CPU. It waits for a screening step done by a worker and a stronger check.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BANK = Path(__file__).with_name("crisis_exemplars.jsonl")
CATEGORIES: tuple[str, ...] = ("suicide", "self_harm", "harm_to_others", "abuse")
NONE = "none"
SIMILARITIES = np.round(np.arange(0.30, 0.851, 0.01), 2)
MARGINS = np.round(np.arange(0.0, 0.151, 0.01), 2)
BETA = 2.0

_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class Thresholds:
    similarity: float
    margin: float
    f2: float  # on the bank, leave one out


@dataclass(frozen=True)
class Hit:
    """One unit (sentence or window) flagged, and why."""

    unit: str
    category: str
    exemplar: str
    similarity: float
    negative: str
    negative_similarity: float

    def reason(self) -> str:
        return (
            f"like “{self.exemplar}” ({self.similarity:.2f}; nearest look-alike "
            f"{self.negative_similarity:.2f})"
        )


def units(text: str) -> list[str]:
    """A text's sentences, and each pair of consecutive sentences."""
    sentences = [s.strip() for s in _SPLIT.split(text or "") if s and s.strip()]
    return [*sentences, *(f"{a} {b}" for a, b in itertools.pairwise(sentences))]


def read_bank(path: Path = BANK) -> list[dict[str, str]]:
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    for row in rows:
        if row.get("label") not in (*CATEGORIES, NONE) or not str(row.get("text", "")).strip():
            raise ValueError(f"{path}: a bad exemplar {row!r}")
    return rows


class SemanticGate:
    """The bank embedded once, its thresholds calibrated; `check(texts)` per text."""

    def __init__(self, embedder: Any, bank: list[dict[str, str]] | None = None) -> None:
        self.embedder = embedder
        self.bank = bank if bank is not None else read_bank()
        self.texts = [row["text"] for row in self.bank]
        self.labels = np.array([row["label"] for row in self.bank])
        self.vectors = np.asarray(embedder.embed(self.texts), dtype=np.float32)
        self.thresholds = calibrate(self.vectors, self.labels)

    def check(self, texts: Sequence[str]) -> list[list[Hit]]:
        """For each text, its flagged units (the best category of each), strongest first."""
        per_text = [units(text) for text in texts]
        flat = [unit for found in per_text for unit in found]
        if not flat:
            return [[] for _ in texts]
        scores = np.asarray(self.embedder.embed(flat), dtype=np.float32) @ self.vectors.T
        hits: list[list[Hit]] = []
        row = 0
        for found in per_text:
            mine = []
            for unit in found:
                hit = self._hit(unit, scores[row])
                row += 1
                if hit is not None:
                    mine.append(hit)
            hits.append(sorted(mine, key=lambda h: -h.similarity))
        return hits

    def _hit(self, unit: str, scores: np.ndarray) -> Hit | None:
        negatives = np.flatnonzero(self.labels == NONE)
        best_negative = int(negatives[np.argmax(scores[negatives])]) if negatives.size else -1
        negative = float(scores[best_negative]) if best_negative >= 0 else -1.0
        best: Hit | None = None
        for category in CATEGORIES:
            members = np.flatnonzero(self.labels == category)
            if not members.size:
                continue
            index = int(members[np.argmax(scores[members])])
            similarity = float(scores[index])
            if flags(similarity, negative, self.thresholds) and (
                best is None or similarity > best.similarity
            ):
                best = Hit(
                    unit, category, self.texts[index], similarity,
                    self.texts[best_negative] if best_negative >= 0 else "", negative,
                )  # fmt: skip
        return best


def flags(similarity: float, negative: float, thresholds: Thresholds) -> bool:
    return similarity >= thresholds.similarity and similarity - negative >= thresholds.margin


def calibrate(vectors: np.ndarray, labels: np.ndarray) -> Thresholds:
    """The (similarity, margin) pair with the best F2 on the bank, each exemplar scored against
    all the others: its nearest positive of any category, and its nearest hard negative."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)  # leave one out
    positive = labels != NONE
    best_pos = np.max(np.where(positive[None, :], sims, -np.inf), axis=1)
    best_neg = np.max(np.where(~positive[None, :], sims, -np.inf), axis=1)
    chosen = Thresholds(float(SIMILARITIES[0]), float(MARGINS[0]), -1.0)
    for similarity in SIMILARITIES:
        for margin in MARGINS:
            flagged = (best_pos >= similarity) & (best_pos - best_neg >= margin)
            tp = int(np.sum(flagged & positive))
            fp = int(np.sum(flagged & ~positive))
            fn = int(np.sum(~flagged & positive))
            if not tp:
                continue
            precision, recall = tp / (tp + fp), tp / (tp + fn)
            f2 = (1 + BETA**2) * precision * recall / (BETA**2 * precision + recall)
            if f2 > chosen.f2:
                chosen = Thresholds(float(similarity), float(margin), round(f2, 4))
    return chosen


_lock = threading.Lock()


@functools.cache
def _gate() -> SemanticGate:
    from generation.embeddings import get_embedder

    return SemanticGate(get_embedder())


def get_gate() -> SemanticGate:
    """The process's gate: the bank embedded on first use (seconds), then shared."""
    with _lock:
        return _gate()
