"""training.metrics against values worked out by hand on tiny examples."""

from __future__ import annotations

import math

import pytest

from training.metrics import bleu, distinct_n, perplexity, rouge_l, strategy_accuracy, unigram_f1

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


def test_bleu_by_hand() -> None:
    # n-gram matches of HYP against REF (clipped counts):
    #   1-grams: the, cat, on, the, mat match; sat does not     -> p1 = 5/6
    #   2-grams: "the cat", "on the", "the mat" of 5            -> p2 = 3/5
    #   3-grams: "on the mat" of 4                              -> p3 = 1/4
    #   4-grams: none of 3; sacrebleu's exp smoothing counts the first zero as 1/(2*3)
    #                                                           -> p4 = 1/6
    # Same length, so no brevity penalty; BLEU-n is the geometric mean of p1..pn.
    assert bleu([HYP], [REF], 1) == pytest.approx(5 / 6)
    assert bleu([HYP], [REF], 2) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))  # 0.7071
    assert bleu([HYP], [REF], 4) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)  # 0.3799
    # Brevity penalty: 2 words against 6 -> exp(1 - 6/2); both unigrams match.
    assert bleu(["the cat"], [REF], 1) == pytest.approx(math.exp(-2))
    assert bleu([REF], [REF], 4) == pytest.approx(1.0)
    assert bleu([], [], 4) == 0.0


def test_rouge_l_by_hand() -> None:
    # LCS(HYP, REF) = "the cat on the mat", 5 words: P = R = 5/6, F = 5/6.
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7.
    assert rouge_l([HYP], [REF]) == pytest.approx(5 / 6)
    assert rouge_l([HYP, "a b c d"], [REF, "a c e"]) == pytest.approx((5 / 6 + 4 / 7) / 2)


def test_distinct_by_hand() -> None:
    texts = ["a b a b", "A b c"]  # lower-cased: a b a b | a b c
    # unigrams: 7 in all, distinct {a, b, c}         -> 3/7
    # bigrams: ab ba ab | ab bc: 5, distinct {ab, ba, bc} -> 3/5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0


def test_unigram_f1_by_hand() -> None:
    # [the cat the hat] vs [the the cat]: shared the x2 + cat = 3 -> F1 = 2*3/(4+3) = 6/7.
    # "hello" vs "bye": nothing shared -> 0. Mean: 3/7.
    assert unigram_f1(["The cat, the hat!", "hello"], ["the the cat", "bye"]) == pytest.approx(
        3 / 7
    )
    assert unigram_f1([REF], [REF]) == 1.0
    with pytest.raises(ValueError):
        unigram_f1(["a"], [])


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
