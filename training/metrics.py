"""Reply metrics: pure functions of texts and counts.

Every text metric follows the convention of published ESConv results (the esconv_* functions,
0-100, with their own tokenizer; see the comment above them), so that our numbers compare with
the paper's. Perplexity and strategy accuracy come first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

BLEU_ORDER = 4  # esconv_bleu_statistics counts n-grams up to this order


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (natural log)."""
    if tokens <= 0:
        return math.nan
    return math.exp(nll_sum / tokens)


def strategy_hit(pred_tag: str | None, gold: str | None) -> bool | None:
    """Whether a reply's tag equals the gold strategy, ignoring case (a missing tag is wrong);
    None without a gold strategy."""
    if gold is None:
        return None
    return pred_tag is not None and pred_tag.strip().lower() == gold.strip().lower()


def strategy_accuracy(pred_tags: list[str | None], gold: list[str | None]) -> float:
    """Share of replies whose tag equals the gold strategy; pairs without one are left out."""
    hits = [strategy_hit(p, g) for p, g in zip(pred_tags, gold, strict=True)]
    counted = [hit for hit in hits if hit is not None]
    if not counted:
        return math.nan
    return sum(counted) / len(counted)


# ---- the field's metrics: ESConv's evaluation code, on 0-100 -----------------------------------
#
# Published ESConv results come from ESConv's evaluation script and its copies: NLTK's corpus BLEU
# with SmoothingFunction().method3, the ROUGE-L of the COCO-caption code (beta = 1.2), Distinct-n
# over all replies and the mean unigram F1, on lower-cased word tokens, reported times 100.
# The functions below compute the same numbers without NLTK, so that the web process (which
# resamples them in training.noise) needs nothing from the `ml` extra. Conventions:
# - One tokenizer for all: `esconv_tokens` (lower-case, then runs of word characters and single
#   punctuation marks: "Don't!" -> don ' t !). NLTK's word_tokenize would split "don't" as
#   do n't; the regex needs no NLTK and no data files, and gives the same tokens everywhere.
# - One reference per reply.
# - Per-reply values are on the same scale as the corpus value, so the mean of the per-reply
#   ROUGE-L is the ROUGE-L.

ESCONV_TOKEN = re.compile(r"\w+|[^\w\s]")
ESCONV_BETA = 1.2  # ROUGE-L's F weighs recall 1.2 times as much as precision (COCO's rouge.py)


def esconv_tokens(text: str) -> list[str]:
    """The tokenizer of every esconv_* metric: lower-cased words and punctuation marks."""
    return ESCONV_TOKEN.findall(text.lower())


def _grams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)]


def esconv_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    return _grams(esconv_tokens(text), n)


def esconv_bleu_statistics(hypotheses: list[str], references: list[str]) -> list[list[int]]:
    """Per reply, what NLTK's corpus_bleu sums over replies: [reply length, reference length,
    clipped matches of 1..4-grams, 1..4-grams of the reply]. As in NLTK, a reply shorter than n
    counts 1 n-gram (its `max(1, ...)`), which matters for short replies."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = esconv_tokens(hyp), esconv_tokens(ref)
        matched, total = [], []
        for n in range(1, BLEU_ORDER + 1):
            grams, ref_grams = Counter(_grams(h, n)), Counter(_grams(r, n))
            matched.append(sum((grams & ref_grams).values()))
            total.append(max(1, sum(grams.values())))
        rows.append([len(h), len(r), *matched, *total])
    return rows


def esconv_bleu_from_statistics(summed: Any, n: int) -> Any:
    """BLEU-n on 0-100 of each row of summed `esconv_bleu_statistics` (one row per resample of
    the replies, say), vectorised; equal to NLTK's corpus_bleu with weights [1/n] * n (or
    ESConv's [1/n] * n + [0] * (4 - n)) and SmoothingFunction().method3:
    - precision p_k = matched k-grams / k-grams; an order without a match gets
      1 / (2^j * its k-grams) instead, j = 1 for the first such order, 2 for the next...;
    - brevity penalty exp(1 - reference length / reply length) when replies are not longer;
    - 0 without any matched unigram (or without any reply token)."""
    import numpy as np

    stats = np.atleast_2d(np.asarray(summed, dtype=float))
    sys_len, ref_len = stats[:, 0], stats[:, 1]
    matched = stats[:, 2 : 2 + n]
    total = stats[:, 2 + BLEU_ORDER : 2 + BLEU_ORDER + n]
    total = np.where(total > 0, total, 1)  # only a zero-weight row (no reply drawn) has 0
    missed = matched == 0
    j = np.cumsum(missed, axis=1)
    precision = np.where(missed, 1 / (2.0**j * total), matched / total)
    ratio = np.divide(ref_len, sys_len, out=np.zeros_like(ref_len), where=sys_len > 0)
    penalty = np.where(sys_len > ref_len, 1.0, np.exp(1 - ratio))
    score = 100 * penalty * np.exp(np.log(precision).mean(axis=1))
    return np.where(matched[:, 0] > 0, score, 0.0)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for k, y in enumerate(b):
            current.append(previous[k] + 1 if x == y else max(previous[k + 1], current[k]))
        previous = current
    return previous[-1]


def esconv_rouge_l_scores(hypotheses: list[str], references: list[str]) -> list[float]:
    """Per reply, on 0-100: the F-measure of the longest common subsequence of tokens with
    beta = 1.2, (1 + b^2) P R / (R + b^2 P), P = LCS / reply length, R = LCS / reference length;
    0 when either is 0 (COCO-caption's rouge.py, used by ESConv's evaluation)."""
    scores = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = esconv_tokens(hyp), esconv_tokens(ref)
        lcs = _lcs_length(h, r)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rec = lcs / len(h), lcs / len(r)
        b2 = ESCONV_BETA**2
        scores.append(100 * (1 + b2) * p * rec / (rec + b2 * p))
    return scores


def esconv_unigram_f1_scores(hypotheses: list[str], references: list[str]) -> list[float]:
    """Per reply, on 0-100: the F1 of shared tokens, each counted as often as both have it."""
    scores = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = esconv_tokens(hyp), esconv_tokens(ref)
        common = sum((Counter(h) & Counter(r)).values())
        scores.append(0.0 if common == 0 else 100 * 2 * common / (len(h) + len(r)))
    return scores


def esconv_lengths(hypotheses: list[str]) -> list[int]:
    """Per reply: its number of tokens (words and punctuation marks, as every esconv_* metric
    counts them)."""
    return [len(esconv_tokens(hyp)) for hyp in hypotheses]


def esconv_distinct(hypotheses: list[str], n: int) -> float:
    """Distinct-n on 0-100: distinct n-grams over all n-grams of all replies (0 without any).
    Every n-gram counts, a reply's last one too (some copies of ESConv's script skip it)."""
    grams = [gram for hyp in hypotheses for gram in esconv_ngrams(hyp, n)]
    return 100 * len(set(grams)) / len(grams) if grams else 0.0


def esconv_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """The metrics published ESConv results report, on 0-100 (length in tokens): corpus
    BLEU-1..4, the mean of ROUGE-L and of unigram F1 over replies, Distinct-1..3 over all
    replies, and the mean reply length. See the conventions above `esconv_tokens`."""
    import numpy as np

    table = np.asarray(esconv_bleu_statistics(hypotheses, references), dtype=float)
    summed = table.reshape(-1, 2 + 2 * BLEU_ORDER).sum(axis=0)  # zeros without replies: BLEU 0

    def mean(values: list[float] | list[int]) -> float:
        return sum(values) / len(values) if values else 0.0

    bleus = {
        f"bleu-{n}": float(esconv_bleu_from_statistics(summed, n)[0])
        for n in range(1, BLEU_ORDER + 1)
    }
    return {
        **bleus,
        "rouge-l": mean(esconv_rouge_l_scores(hypotheses, references)),
        "distinct-1": esconv_distinct(hypotheses, 1),
        "distinct-2": esconv_distinct(hypotheses, 2),
        "distinct-3": esconv_distinct(hypotheses, 3),
        "unigram-f1": mean(esconv_unigram_f1_scores(hypotheses, references)),
        "length": mean(esconv_lengths(hypotheses)),
    }
