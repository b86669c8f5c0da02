"""training.noise on synthetic scores: the paired bootstrap tells a clear difference from none,
always the same way, fast; each statistic recomputes its metric as training.metrics does."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from training import metrics as m
from training import noise


def test_a_clear_difference_is_beyond_noise_and_none_is_not() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0.1, 0.5, size=60)
    better = base + 0.1 + rng.normal(0, 0.05, size=60)
    interval = noise.paired_bootstrap(noise.mean(base), noise.mean(better), 60)
    assert interval.low > 0 and interval.excludes_zero
    assert interval.low < (better - base).mean() < interval.high

    same = noise.paired_bootstrap(noise.mean(base), noise.mean(base), 60)
    assert (same.low, same.high) == (0.0, 0.0) and not same.excludes_zero

    # As often better as worse: the interval straddles 0.
    jitter = base + rng.normal(0, 0.05, size=60)
    jitter += (base - jitter).mean()  # the same mean exactly
    level = noise.paired_bootstrap(noise.mean(base), noise.mean(jitter), 60)
    assert level.low < 0 < level.high and not level.excludes_zero

    worse = noise.paired_bootstrap(noise.mean(better), noise.mean(base), 60)
    assert worse.high < 0 and worse.excludes_zero


def test_the_bootstrap_is_deterministic_and_fast() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(size=500)
    first = noise.paired_bootstrap(noise.mean(a), noise.mean(b), 500)
    noise.draws.cache_clear()
    assert noise.paired_bootstrap(noise.mean(a), noise.mean(b), 500) == first
    weights = noise.draws(500)
    assert weights.shape == (noise.RESAMPLES, 500) == (1000, 500)
    assert (weights.sum(axis=1) == 500).all()  # each resample draws every reply's place once

    texts = [" ".join(random.Random(k).choices("abcdefgh", k=12)) for k in range(500)]
    started = time.perf_counter()
    noise.paired_bootstrap(noise.distinct(texts, 2), noise.distinct(texts[::-1], 2), 500)
    assert time.perf_counter() - started < 2


def test_undefined_resamples_are_left_out() -> None:
    # Strategy accuracy counts only replies with a gold strategy: most draws of these 30 have one.
    hits, counted = [1.0] + [0.0] * 29, [1.0] + [0.0] * 29
    interval = noise.paired_bootstrap(
        noise.ratio(hits, counted), noise.ratio([0.0] * 30, counted), 30
    )
    assert interval == noise.Interval(-1.0, -1.0)
    nothing = noise.paired_bootstrap(
        noise.ratio([0.0] * 30, [0.0] * 30), noise.ratio([0.0] * 30, [0.0] * 30), 30
    )
    assert math.isnan(nothing.low) and not nothing.excludes_zero
    with pytest.raises(ValueError):
        noise.paired_bootstrap(noise.mean([]), noise.mean([]), 0)


def test_each_statistic_recomputes_its_metric_on_a_draw() -> None:
    refs = ["the cat sat on the mat", "how did that feel for you", "you did well today"]
    hyps = ["the cat is on the mat", "how did you feel", "well done"]
    once = np.ones((1, 3))  # every reply drawn once: the metric of the whole set
    stats = noise.esconv_statistics(refs, hyps)
    for key, value in m.esconv_scores(hyps, refs).items():
        assert stats[key](once)[0] == pytest.approx(value), key
    for n in (1, 2):
        assert noise.distinct(hyps, n)(once)[0] == pytest.approx(m.esconv_distinct(hyps, n) / 100)
    assert noise.perplexity([2.0, 4.0, 0.0], [1, 2, 1])(once)[0] == pytest.approx(math.exp(1.5))

    # Drawn twice, the first reply counts twice in BLEU's sums and adds no new distinct word.
    twice = np.array([[2.0, 1.0, 0.0]])
    assert stats["bleu-1"](twice)[0] == pytest.approx(
        m.esconv_scores([hyps[0], hyps[0], hyps[1]], [refs[0], refs[0], refs[1]])["bleu-1"]
    )
    assert noise.distinct(hyps, 1)(twice)[0] == pytest.approx(
        m.esconv_distinct([hyps[0], hyps[0], hyps[1]], 1) / 100
    )


def test_stored_samples_are_compared_pair_by_pair_from_the_minimum() -> None:
    def rows(count: int, student: str) -> list[dict]:
        return [
            {
                "id": str(k),
                "turn": 2,
                "reference": f"[Question] How did that feel, {k}?",
                "base": "ok",
                "student": student.format(k=k),
            }
            for k in range(count)
        ]

    few = noise.compare_samples(rows(29, ""), "base", rows(29, ""), "student")
    assert (few.replies, few.intervals, few.enough) == (29, {}, False)
    many = rows(30, "[Question] How did that feel, {k}?")
    enough = noise.compare_samples(many, "base", many, "student")
    assert enough.enough and enough.direction("strategy-accuracy") == 1
    assert enough.direction("distinct-2") == 1  # the base says "ok" thirty times
    # Without stored per-reply scores (rows from before the ESConv convention) they are
    # computed from the texts.
    assert enough.direction("bleu-1") == 1 and enough.direction("perplexity") == 0
    other = [row | {"id": f"x{k}"} for k, row in enumerate(many)]
    assert noise.compare_samples(many, "base", other, "student").replies == 0
