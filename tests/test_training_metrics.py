"""training.metrics against values worked out by hand: perplexity and strategy accuracy (the text
metrics, in the ESConv convention, are in test_training_metrics_esconv.py)."""

from __future__ import annotations

import math

import pytest

from training.metrics import perplexity, strategy_accuracy


def test_perplexity_by_hand() -> None:
    # Two tokens each with probability 1/4: NLL sum 2 ln 4, mean ln 4 -> perplexity 4.
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert perplexity(0.0, 5) == 1.0
    assert math.isnan(perplexity(0.0, 0))


def test_strategy_accuracy_by_hand() -> None:
    # Gold known for 3 pairs: a hit, a hit up to case and spaces, a missing tag -> 2/3.
    predicted = ["Question", "question ", None, "Affirmation"]
    gold = ["Question", "Question", "Question", None]
    assert strategy_accuracy(predicted, gold) == pytest.approx(2 / 3)
    assert math.isnan(strategy_accuracy(["Question"], [None]))
