"""Whether a difference between two models' scores on the same replies is beyond noise.

A paired bootstrap: the scored replies are drawn with replacement RESAMPLES times, the same draws
for both models, and each draw's difference of a metric is recomputed from the drawn replies
(corpus metrics such as BLEU, Distinct-n and perplexity from their summed counts, not as a mean
of per-reply scores). A difference counts when the middle 95% of those differences excludes 0,
and only with at least MIN_REPLIES_TO_COMPARE replies: below that the interval itself is too
rough to trust. The draws come from a fixed seed, so a page shows the same verdict every time.

Django's web process imports this module: numpy only, nothing from the `ml` extra. The per-reply
counts (`per_reply`) are computed by the worker (training.evaluate) and stored with each reply, so
that a page only resamples them.
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
    """The 95% interval of b - a over `resamples` paired draws of `replies` replies, centred on
    the difference of all the replies (`centred`). Resamples where the metric is undefined (no
    gold strategy drawn, say) are left out."""
    if replies < 1:
        raise ValueError("a bootstrap needs at least one reply")
    weights = draws(replies, resamples, seed)
    whole = np.ones((1, replies))
    point = float(b(whole)[0] - a(whole)[0])
    finite = centred(b(weights) - a(weights), point)
    if not finite.size:
        return Interval(math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))


def centred(values: np.ndarray, point: float) -> np.ndarray:
    """The finite draws, shifted so that their median is the value on all the replies.

    A draw repeats some replies and leaves others out, which biases statistics that count
    distinct things: Distinct-n of a draw is lower than that of the replies, so its percentile
    interval can sit wholly below the value it is meant to surround. Shifting the draws by that
    bias puts the interval around the value; for unbiased statistics the shift is about 0."""
    finite = values[np.isfinite(values)]
    if not finite.size or not math.isfinite(point):
        return finite
    return finite + (point - float(np.median(finite)))


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


def distinct(
    texts: Sequence[str],
    n: int,
    ngrams: Callable[[str, int], list[tuple[str, ...]]] = m.esconv_ngrams,
) -> Statistic:
    """Distinct-n of the drawn replies: a reply drawn twice adds its n-grams to the count of
    all n-grams twice, and no new distinct one. `ngrams` tokenizes (ESConv's way by default)."""
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


def esconv_statistics(
    references: Sequence[str],
    replies: Sequence[str],
    scores: Sequence[dict[str, Any]] | None = None,
    nll: Sequence[float] | None = None,
    tokens: Sequence[int] | None = None,
) -> dict[str, Statistic]:
    """A statistic per metric in the ESConv convention (training.metrics' esconv_*, 0-100), tags
    removed from the texts: bleu-1..4, rouge-l, distinct-1..3, unigram-f1, length, and
    perplexity with `nll` and `tokens`, strategy-accuracy when a reference is tagged. `scores`
    are the per-reply scores training.evaluate stores (`reply_scores`); without them they are
    computed here."""
    refs = [split_tag(r)[1] for r in references]
    hyps = [split_tag(r)[1] for r in replies]
    if scores is None:
        scores = per_reply(refs, hyps)
    table = np.asarray([s["bleu"] for s in scores], float).reshape(len(hyps), -1)

    def bleu_n(n: int) -> Statistic:
        return lambda weights: np.asarray(m.esconv_bleu_from_statistics(weights @ table, n))

    def scaled(statistic: Statistic) -> Statistic:
        return lambda weights: 100 * statistic(weights)

    found: dict[str, Statistic] = {f"bleu-{n}": bleu_n(n) for n in (1, 2, 3, 4)}
    found["rouge-l"] = mean([s["rouge_l"] for s in scores])
    for n in (1, 2, 3):
        found[f"distinct-{n}"] = scaled(distinct(tuple(hyps), n, m.esconv_ngrams))
    found["unigram-f1"] = mean([s["unigram_f1"] for s in scores])
    found["length"] = mean([float(s["length"]) for s in scores])
    if nll is not None and tokens is not None:
        found["perplexity"] = perplexity(nll, tokens)
    gold = [split_tag(r)[0] for r in references]
    if any(g is not None for g in gold):
        hits = [m.strategy_hit(split_tag(r)[0], g) for r, g in zip(replies, gold, strict=True)]
        found["strategy-accuracy"] = scaled(
            ratio([1.0 if hit else 0.0 for hit in hits], [0.0 if hit is None else 1.0 for hit in hits])
        )  # fmt: skip
    return found


def per_reply(references: Sequence[str], replies: Sequence[str]) -> list[dict[str, Any]]:
    """What esconv_statistics resamples, per reply (texts without tags): NLTK-style BLEU
    counts, ROUGE-L, unigram F1 and length, all in the ESConv convention."""
    refs, hyps = list(references), list(replies)
    return [
        {"convention": "esconv", "bleu": counts, "rouge_l": rouge, "unigram_f1": f1, "length": size}
        for counts, rouge, f1, size in zip(
            m.esconv_bleu_statistics(hyps, refs),
            m.esconv_rouge_l_scores(hyps, refs),
            m.esconv_unigram_f1_scores(hyps, refs),
            m.esconv_lengths(hyps),
            strict=True,
        )
    ]  # fmt: skip


# ---- what a job stored -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One model's replies to the same turns, in order, with the per-reply scores the worker
    stored (training.evaluate's `reply_scores`). Scores stored before the ESConv convention
    (no "convention" key) are recomputed from the texts."""

    references: list[str]
    replies: list[str]
    scores: list[dict[str, Any]] | None
    nll: list[float] | None
    tokens: list[int] | None

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], side: str) -> Scored:
        """From rows of a job's `samples`: the reference, and `side`'s reply and scores."""
        scores = [row.get(f"{side}_scores") or {} for row in rows]

        def column(key: str) -> list[Any] | None:
            values = [s.get(key) for s in scores]
            return None if any(v is None for v in values) else values

        current = all(s.get("convention") == "esconv" for s in scores)
        return cls(
            references=[str(row["reference"]) for row in rows],
            replies=[str(row[side]) for row in rows],
            scores=scores if current else None,
            nll=column("nll"),
            tokens=column("tokens"),
        )

    def statistics(self) -> dict[str, Statistic]:
        """A statistic per metric key of training.evaluate.score."""
        return esconv_statistics(self.references, self.replies, self.scores, self.nll, self.tokens)


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
