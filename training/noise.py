"""Whether a difference between two models' scores on the same replies is beyond noise.

A paired bootstrap: the scored replies are drawn with replacement RESAMPLES times, the same draws
for both models, and each draw's difference of a metric is recomputed from the drawn replies
(corpus metrics such as BLEU, Distinct-n and perplexity from their summed counts, not as a mean
of per-reply scores). A difference counts when the middle 95% of those differences excludes 0,
and only with at least MIN_REPLIES_TO_COMPARE replies: below that the interval itself is too
rough to trust. The draws come from a fixed seed, so a page shows the same verdict every time.

Django's web process imports this module: numpy only, nothing from the `ml` extra. What needs
sacrebleu or rouge-score per reply is computed by the worker (training.evaluate) and stored.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training import metrics as m
from training.data import split_tag

MIN_REPLIES_TO_COMPARE = 30
RESAMPLES = 1000
SEED = 0

# Maps draws (resamples x replies: how often each reply is drawn) to one score per resample.
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """The 2.5th and 97.5th percentiles of the resampled differences (b - a)."""

    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False when NaN: nothing to tell


@functools.lru_cache(maxsize=8)
def draws(replies: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each reply is drawn in each resample: a (resamples, replies) array of counts."""
    picks = np.random.default_rng(seed).integers(0, replies, size=(resamples, replies))
    rows = np.arange(resamples)[:, None] * replies
    counts = np.bincount((picks + rows).ravel(), minlength=resamples * replies)
    result = counts.reshape(resamples, replies).astype(float)
    result.flags.writeable = False  # shared by every caller through the cache
    return result


def paired_bootstrap(
    a: Statistic, b: Statistic, replies: int, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """The 95% interval of b - a over `resamples` paired draws of `replies` replies. Resamples
    where the metric is undefined (no gold strategy drawn, say) are left out."""
    if replies < 1:
        raise ValueError("a bootstrap needs at least one reply")
    weights = draws(replies, resamples, seed)
    differences = b(weights) - a(weights)
    finite = differences[np.isfinite(differences)]
    if not finite.size:
        return Interval(math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))


# ---- statistics: a metric recomputed on each draw ------------------------------------------------


def mean(values: Sequence[float]) -> Statistic:
    """The mean of per-reply values (ROUGE-L, unigram F1)."""
    return ratio(values, [1.0] * len(values))


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Statistic:
    """Summed numerators over summed denominators; NaN where the denominators sum to 0."""
    top, bottom = np.asarray(numerators, float), np.asarray(denominators, float)

    def statistic(weights: np.ndarray) -> np.ndarray:
        num, den = weights @ top, weights @ bottom
        return np.divide(num, den, out=np.full(len(weights), math.nan), where=den > 0)

    return statistic


def perplexity(nll: Sequence[float], tokens: Sequence[int]) -> Statistic:
    per_token = ratio(nll, tokens)
    return lambda weights: np.exp(per_token(weights))


def bleu(statistics: Sequence[Sequence[int]], n: int) -> Statistic:
    """Corpus BLEU-n from per-reply `metrics.bleu_statistics`."""
    table = np.asarray(statistics, float)
    return lambda weights: m.bleu_from_statistics(weights @ table, n)


def distinct(
    texts: Sequence[str],
    n: int,
    ngrams: Callable[[str, int], list[tuple[str, ...]]] = m.ngrams,
) -> Statistic:
    """Distinct-n of the drawn replies: a reply drawn twice adds its n-grams to the count of
    all n-grams twice, and no new distinct one. `ngrams` tokenizes (m.esconv_ngrams for the
    ESConv convention)."""
    grams = [ngrams(text, n) for text in texts]
    totals = np.array([len(g) for g in grams], float)
    holders: dict[tuple[str, ...], list[int]] = {}
    for reply, found in enumerate(grams):
        for gram in set(found):
            holders.setdefault(gram, []).append(reply)
    # An n-gram of one reply only is there exactly when that reply is drawn: counted per reply.
    # Only the shared ones need a column each.
    own = np.zeros(len(texts))
    shared = [replies for replies in holders.values() if len(replies) > 1]
    for replies in holders.values():
        if len(replies) == 1:
            own[replies[0]] += 1
    incidence = np.zeros((len(texts), len(shared)))
    for column, replies in enumerate(shared):
        incidence[replies, column] = 1

    def statistic(weights: np.ndarray) -> np.ndarray:
        drawn = (weights > 0).astype(float)
        found = drawn @ own + ((drawn @ incidence) > 0).sum(axis=1)
        total = weights @ totals
        return np.divide(found, total, out=np.zeros(len(weights)), where=total > 0)

    return statistic


# ---- what a job stored -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One model's replies to the same turns, in order, with the per-reply scores the worker
    stored (training.evaluate's `reply_scores`); a score is None when a reply lacks it (a job
    evaluated before they were stored)."""

    references: list[str]
    replies: list[str]
    bleu: list[list[int]] | None
    rouge_l: list[float] | None
    unigram_f1: list[float] | None
    nll: list[float] | None
    tokens: list[int] | None

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], side: str) -> Scored:
        """From rows of a job's `samples`: the reference, and `side`'s reply and scores."""
        scores = [row.get(f"{side}_scores") or {} for row in rows]

        def column(key: str) -> list[Any] | None:
            values = [s.get(key) for s in scores]
            return None if any(v is None for v in values) else values

        return cls(
            references=[str(row["reference"]) for row in rows],
            replies=[str(row[side]) for row in rows],
            bleu=column("bleu"),
            rouge_l=column("rouge_l"),
            unigram_f1=column("unigram_f1"),
            nll=column("nll"),
            tokens=column("tokens"),
        )

    def statistics(self) -> dict[str, Statistic]:
        """A statistic per metric key of training.evaluate.score that can be recomputed."""
        texts = [split_tag(reply)[1] for reply in self.replies]
        hits = [
            m.strategy_hit(split_tag(reply)[0], split_tag(ref)[0])
            for reply, ref in zip(self.replies, self.references, strict=True)
        ]
        found: dict[str, Statistic] = {
            "distinct1": distinct(texts, 1),
            "distinct2": distinct(texts, 2),
            "strategy_accuracy": ratio(
                [1.0 if hit else 0.0 for hit in hits], [0.0 if hit is None else 1.0 for hit in hits]
            ),
        }
        if self.bleu is not None:
            found |= {f"bleu{n}": bleu(self.bleu, n) for n in (1, 2, 4)}
        if self.rouge_l is not None:
            found["rouge_l"] = mean(self.rouge_l)
        if self.unigram_f1 is not None:
            found["unigram_f1"] = mean(self.unigram_f1)
        if self.nll is not None and self.tokens is not None:
            found["perplexity"] = perplexity(self.nll, self.tokens)
        return found


@dataclass(frozen=True)
class Comparison:
    replies: int  # scored by both
    intervals: dict[str, Interval]  # metric key -> interval of b - a; empty below the minimum

    @property
    def enough(self) -> bool:
        return self.replies >= MIN_REPLIES_TO_COMPARE

    def direction(self, key: str) -> int:
        """+1 when b is above a beyond noise, -1 when below, 0 when it cannot be told."""
        interval = self.intervals.get(key)
        if not self.enough or interval is None or not interval.excludes_zero:
            return 0
        return 1 if interval.low > 0 else -1


def compare_samples(
    a_rows: Sequence[dict[str, Any]], a_side: str, b_rows: Sequence[dict[str, Any]], b_side: str
) -> Comparison:
    """Compare `b_side` of `b_rows` with `a_side` of `a_rows` (rows of jobs' `samples`) on the
    turns both scored, paired by dialogue and turn."""
    by_turn = {(row["id"], row["turn"]): row for row in b_rows}
    pairs = [
        (row, by_turn[(row["id"], row["turn"])])
        for row in a_rows
        if (row["id"], row["turn"]) in by_turn
    ]
    if len(pairs) < MIN_REPLIES_TO_COMPARE:
        return Comparison(len(pairs), {})
    a = Scored.from_rows([first for first, _ in pairs], a_side).statistics()
    b = Scored.from_rows([second for _, second in pairs], b_side).statistics()
    return Comparison(
        len(pairs),
        {key: paired_bootstrap(a[key], b[key], len(pairs)) for key in a.keys() & b.keys()},
    )
