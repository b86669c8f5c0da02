"""training.metrics' esconv_* functions: by hand on tiny pairs, then against NLTK's corpus_bleu and
rouge-score's LCS on real ESConv supporter turns (read from the shared data, never copied here)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from rouge_score.rouge_scorer import RougeScorer

from training import noise
from training.metrics import (
    esconv_bleu_from_statistics,
    esconv_bleu_statistics,
    esconv_distinct,
    esconv_lengths,
    esconv_rouge_l_scores,
    esconv_scores,
    esconv_tokens,
    esconv_unigram_f1_scores,
)

# Tokens: A = the cat sat on the mat .   (7)     B = i hear you                   (3)
#         A_REF = the cat is on the mat !  (7)   B_REF = i hear you , it is hard   (7)
A, A_REF = "The cat sat on the mat.", "the cat is on the mat!"
B, B_REF = "I hear you", "I hear you, it is hard"


def bleu_n(hyps: list[str], refs: list[str], n: int) -> float:
    return esconv_scores(hyps, refs)[f"bleu-{n}"]


def test_tokens_by_hand() -> None:
    assert esconv_tokens("I don't KNOW... it's  hard!") == [
        *["i", "don", "'", "t", "know", ".", ".", "."],
        *["it", "'", "s", "hard", "!"],
    ]
    assert esconv_tokens("") == []


def test_bleu_of_one_pair_by_hand() -> None:
    # A against A_REF, clipped matches over the reply's n-grams:
    #   1-grams: the x2, cat, on, mat of 7                          -> 5/7
    #   2-grams: "the cat", "on the", "the mat" of 6                -> 3/6
    #   3-grams: "on the mat" of 5                                  -> 1/5
    #   4-grams: none of 4; method3: first order without a match
    #            counts 1 / (2^1 * 4)                               -> 1/8
    # Same length (7 = 7): brevity penalty exp(1 - 7/7) = 1.
    assert bleu_n([A], [A_REF], 1) == pytest.approx(100 * 5 / 7)  # 71.43
    assert bleu_n([A], [A_REF], 2) == pytest.approx(100 * (5 / 7 * 3 / 6) ** (1 / 2))  # 59.76
    assert bleu_n([A], [A_REF], 3) == pytest.approx(100 * (5 / 7 * 3 / 6 * 1 / 5) ** (1 / 3))
    assert bleu_n([A], [A_REF], 4) == pytest.approx(
        100 * (5 / 7 * 3 / 6 * 1 / 5 * 1 / 8) ** (1 / 4)  # 31.15
    )


def test_bleu_of_a_corpus_by_hand() -> None:
    # B against B_REF: 1-grams 3/3, 2-grams 2/2, 3-grams 1/1; no 4-gram in a 3-token reply, but
    # NLTK counts max(1, 0) = 1 of them, so 0/1. Summed with A's counts:
    #   1: (5+3)/(7+3) = 8/10   2: (3+2)/(6+2) = 5/8   3: (1+1)/(5+1) = 2/6
    #   4: 0/(4+1); method3 -> 1/(2*5) = 1/10
    # Lengths: replies 7+3 = 10 shorter than references 7+7 = 14: penalty exp(1 - 14/10).
    bp = math.exp(1 - 14 / 10)
    hyps, refs = [A, B], [A_REF, B_REF]
    assert bleu_n(hyps, refs, 1) == pytest.approx(100 * bp * 8 / 10)  # 53.63
    assert bleu_n(hyps, refs, 2) == pytest.approx(100 * bp * (8 / 10 * 5 / 8) ** (1 / 2))
    assert bleu_n(hyps, refs, 3) == pytest.approx(100 * bp * (8 / 10 * 5 / 8 * 2 / 6) ** (1 / 3))
    assert bleu_n(hyps, refs, 4) == pytest.approx(
        100 * bp * (8 / 10 * 5 / 8 * 2 / 6 * 1 / 10) ** (1 / 4)  # 23.97
    )


def test_bleu_smoothing_halves_for_each_further_order_by_hand() -> None:
    # "a b c" against "a c b": 1-grams 3/3; 2-grams "a b", "b c" vs "a c", "c b": 0/2 -> the
    # first order without a match, 1/(2^1 * 2) = 1/4; 3-grams 0/1 -> the second, 1/(2^2 * 1);
    # 4-grams 0/max(1, 0) -> the third, 1/(2^3 * 1). Same length: no penalty.
    assert bleu_n(["a b c"], ["a c b"], 2) == pytest.approx(100 * (1 * 1 / 4) ** (1 / 2))  # 50
    assert bleu_n(["a b c"], ["a c b"], 3) == pytest.approx(100 * (1 / 4 * 1 / 4) ** (1 / 3))
    assert bleu_n(["a b c"], ["a c b"], 4) == pytest.approx(100 * (1 / 4 * 1 / 4 * 1 / 8) ** 0.25)


def test_bleu_is_zero_without_a_matched_word() -> None:
    assert bleu_n(["yes"], ["no"], 1) == 0.0
    assert bleu_n(["", "yes"], ["hello there", "no"], 4) == 0.0
    assert esconv_scores([], [])["bleu-4"] == 0.0
    # A reply longer than its reference has no penalty: "the the cat" vs "the cat", 1-grams: the
    # twice in the reply but once in the reference -> clipped 2/3.
    assert bleu_n(["the the cat"], ["the cat"], 1) == pytest.approx(100 * 2 / 3)


def test_rouge_l_by_hand() -> None:
    # beta = 1.2, b2 = 1.44, F = (1 + b2) P R / (R + b2 P).
    # A vs A_REF: LCS "the cat on the mat" = 5; P = R = 5/7, so F = 5/7 whatever beta.
    # B vs B_REF: LCS "i hear you" = 3; P = 3/3, R = 3/7:
    #   F = 2.44 * 3/7 / (3/7 + 1.44) = 7.32 / 13.08 = 0.5596 (F1 would be 0.6: beta favours R)
    b_score = 2.44 * (3 / 7) / (3 / 7 + 1.44)
    assert esconv_rouge_l_scores([A, B], [A_REF, B_REF]) == pytest.approx(
        [100 * 5 / 7, 100 * b_score]
    )
    assert b_score == pytest.approx(7.32 / 13.08)
    assert esconv_scores([A, B], [A_REF, B_REF])["rouge-l"] == pytest.approx(
        100 * (5 / 7 + b_score) / 2  # 63.69
    )
    # "a b c d" vs "a c e": LCS "a c" = 2, P = 2/4, R = 2/3:
    #   F = 2.44 * (1/2)(2/3) / (2/3 + 1.44/2) = 0.81333 / 1.38667 = 0.5865
    assert esconv_rouge_l_scores(["a b c d"], ["a c e"]) == pytest.approx(
        [100 * 2.44 * (1 / 3) / (2 / 3 + 0.72)]
    )
    assert esconv_rouge_l_scores(["", "yes"], ["no", "no"]) == [0.0, 0.0]


def test_distinct_by_hand() -> None:
    texts = ["a b a b a", "A b c"]  # lower-cased: a b a b a | a b c
    # 1-grams: 5 + 3 = 8, distinct {a, b, c}                       -> 3/8
    # 2-grams: ab ba ab ba | ab bc = 6, distinct {ab, ba, bc}       -> 3/6
    # 3-grams: aba bab aba | abc = 4, distinct {aba, bab, abc}      -> 3/4
    # (skipping each reply's last n-gram, as some copies of ESConv's script do, would give 2/2.)
    assert esconv_distinct(texts, 1) == pytest.approx(100 * 3 / 8)
    assert esconv_distinct(texts, 2) == pytest.approx(100 * 3 / 6)
    assert esconv_distinct(texts, 3) == pytest.approx(100 * 3 / 4)
    # Punctuation marks are tokens: hi ! hi ! -> 4 unigrams, 2 distinct.
    assert esconv_distinct(["Hi! Hi!"], 1) == pytest.approx(50.0)
    assert esconv_distinct(["one two"], 3) == 0.0
    scores = esconv_scores(texts, ["x", "y"])
    assert (scores["distinct-1"], scores["distinct-3"]) == pytest.approx((37.5, 75.0))


def test_unigram_f1_and_length_by_hand() -> None:
    # A vs A_REF: shared the x2, cat, on, mat = 5 -> 2*5/(7+7) = 5/7.
    # B vs B_REF: shared i, hear, you = 3 -> 2*3/(3+7) = 3/5. Nothing shared -> 0.
    assert esconv_unigram_f1_scores([A, B, "yes"], [A_REF, B_REF, "no"]) == pytest.approx(
        [100 * 5 / 7, 100 * 3 / 5, 0.0]
    )
    assert esconv_lengths([A, B, ""]) == [7, 3, 0]
    scores = esconv_scores([A, B], [A_REF, B_REF])
    assert scores["unigram-f1"] == pytest.approx(100 * (5 / 7 + 3 / 5) / 2)  # 65.71
    assert scores["length"] == 5.0  # (7 + 3) / 2


def test_a_reply_equal_to_its_reference_scores_100() -> None:
    scores = esconv_scores(
        [A_REF, "Take care of yourself, okay?"], [A_REF, "take care of YOURSELF, okay?"]
    )
    for key in ("bleu-1", "bleu-2", "bleu-3", "bleu-4", "rouge-l", "unigram-f1"):
        assert scores[key] == pytest.approx(100.0), key
    assert set(scores) == {
        *("bleu-1", "bleu-2", "bleu-3", "bleu-4", "rouge-l"),
        *("distinct-1", "distinct-2", "distinct-3", "unigram-f1", "length"),
    }


def test_it_rejects_unpaired_lists() -> None:
    with pytest.raises(ValueError):
        esconv_scores(["a"], [])


# ---- against the published implementations, on real ESConv supporter turns ---------------------


def esconv_pairs(folder: Path) -> tuple[list[str], list[str]]:
    """60 (reply, reference) pairs of ESConv's validation supporter turns, fixed by a seed: 20 of
    two unrelated turns, 30 of a turn and itself with words dropped, repeated or swapped (many
    higher-order matches, replies shorter and longer), 10 with a reply of at most 3 tokens."""
    turns = []
    for line in (folder / "valid.txt").read_text(encoding="utf-8").splitlines():
        dialog = json.loads(line)["dialog"]
        turns += [t["text"] for t in dialog if t["speaker"] == "sys" and t["text"].strip()]
    rng = random.Random(0)
    short = [t for t in turns if 0 < len(esconv_tokens(t)) <= 3]
    hyps, refs = [], []
    for _ in range(20):
        hyps.append(rng.choice(turns))
        refs.append(rng.choice(turns))
    for _ in range(30):
        ref = rng.choice(turns)
        words = ref.split()
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(len(words))
            edit = rng.choice(["drop", "repeat", "swap"])
            if edit == "drop" and len(words) > 1:
                del words[k]
            elif edit == "repeat":
                words.insert(k, words[k])
            else:
                words[k], words[-1] = words[-1], words[k]
        hyps.append(" ".join(words))
        refs.append(ref)
    for _ in range(10):
        hyps.append(rng.choice(short))
        refs.append(rng.choice(turns))
    return hyps, refs


def nltk_bleu(hyps: list[str], refs: list[str], weights: list[float]) -> float:
    return 100 * corpus_bleu(
        [[esconv_tokens(r)] for r in refs],
        [esconv_tokens(h) for h in hyps],
        weights=weights,
        smoothing_function=SmoothingFunction().method3,
    )


def test_bleu_matches_nltk_corpus_bleu_with_method3(esconv_dir: Path) -> None:
    hyps, refs = esconv_pairs(esconv_dir)
    scores = esconv_scores(hyps, refs)
    for n in (1, 2, 3, 4):
        uniform = nltk_bleu(hyps, refs, [1 / n] * n)
        # ESConv's script pads the weights with zeros to 4 orders: the same number.
        padded = nltk_bleu(hyps, refs, [1 / n] * n + [0.0] * (4 - n))
        assert scores[f"bleu-{n}"] == pytest.approx(uniform, rel=1e-9), n
        assert scores[f"bleu-{n}"] == pytest.approx(padded, rel=1e-9), n
    # Each part alone too: the unrelated pairs (few matches), the edited ones, the short replies.
    for part in (slice(0, 20), slice(20, 50), slice(50, 60)):
        for n in (1, 2, 3, 4):
            assert bleu_n(hyps[part], refs[part], n) == pytest.approx(
                nltk_bleu(hyps[part], refs[part], [1 / n] * n), rel=1e-9
            )
    assert 0 < scores["bleu-4"] < scores["bleu-1"] < 100


def test_resampled_statistics_give_nltk_bleu_of_the_resampled_replies(esconv_dir: Path) -> None:
    hyps, refs = esconv_pairs(esconv_dir)
    table = np.asarray(esconv_bleu_statistics(hyps, refs), float)
    weights = noise.draws(len(hyps), resamples=5, seed=1)
    for n in (1, 3, 4):
        resampled = esconv_bleu_from_statistics(weights @ table, n)
        for row, counts in zip(resampled, weights, strict=True):
            drawn = [k for k, times in enumerate(counts) for _ in range(int(times))]
            expected = nltk_bleu([hyps[k] for k in drawn], [refs[k] for k in drawn], [1 / n] * n)
            assert row == pytest.approx(expected, rel=1e-9)


class EsconvTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return esconv_tokens(text)


def test_rouge_l_matches_rouge_score_lcs_with_beta_1_2(esconv_dir: Path) -> None:
    hyps, refs = esconv_pairs(esconv_dir)
    scorer = RougeScorer(["rougeL"], tokenizer=EsconvTokenizer())
    expected = []
    for hyp, ref in zip(hyps, refs, strict=True):
        lcs = scorer.score(ref, hyp)["rougeL"]  # precision over the reply, recall over the ref
        p, r = lcs.precision, lcs.recall
        expected.append(0.0 if p == 0 else 100 * (1 + 1.44) * p * r / (r + 1.44 * p))
    assert esconv_rouge_l_scores(hyps, refs) == pytest.approx(expected, rel=1e-9)
    assert esconv_scores(hyps, refs)["rouge-l"] == pytest.approx(np.mean(expected), rel=1e-9)
    assert sum(0 < s < 100 for s in expected) > 40  # the pairs test the formula, not its edges
