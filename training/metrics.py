"""Reply metrics: pure functions of texts and counts.

Conventions, so that numbers from different runs compare:
- Scores are fractions in [0, 1] (BLEU is sacrebleu's 0-100 score divided by 100).
- BLEU-n is corpus BLEU with n-grams up to n and uniform weights (sacrebleu's `max_ngram_order`,
  its default 13a tokenizer and exponential smoothing of zero counts), one reference per reply.
- ROUGE-L is the mean F1 of the longest common subsequence per pair (rouge-score, no stemming).
- Distinct-n and unigram F1 work on lower-cased word tokens (`\\w+`); punctuation is dropped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

WORD = re.compile(r"\w+")
BLEU_ORDER = 4  # bleu_statistics counts n-grams up to this order (BLEU-1, -2 and -4 share them)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bleu(hyps: list[str], refs: list[str], n: int = 4) -> float:
    from sacrebleu.metrics import BLEU

    if not hyps:
        return 0.0
    return BLEU(max_ngram_order=n).corpus_score(hyps, [refs]).score / 100


def bleu_statistics(hyps: list[str], refs: list[str]) -> list[list[int]]:
    """Per pair, what corpus BLEU sums over pairs: [reply length, reference length, matched
    1..4-grams, 1..4-grams of the reply] (sacrebleu's tokenizer and clipping)."""
    from sacrebleu.metrics import BLEU

    # effective_order changes sentence scores only, not the counts; without it sacrebleu warns.
    scorer = BLEU(max_ngram_order=BLEU_ORDER, effective_order=True)
    rows = []
    for hyp, ref in zip(hyps, refs, strict=True):
        s = scorer.sentence_score(hyp, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return rows


def bleu_from_statistics(summed: Any, n: int) -> Any:
    """BLEU-n, as `bleu` computes it, of each row of summed `bleu_statistics` (a numpy array,
    one row per resample of the pairs, say): sacrebleu's formula with exponential smoothing
    (the k-th order without a match counts as 1 / (2^k * its n-grams)), vectorised."""
    import numpy as np

    stats = np.atleast_2d(np.asarray(summed, dtype=float))
    sys_len, ref_len = stats[:, 0], stats[:, 1]
    correct = stats[:, 2 : 2 + n]
    total = stats[:, 2 + BLEU_ORDER : 2 + BLEU_ORDER + n]
    short = sys_len < ref_len
    ratio = np.divide(ref_len, sys_len, out=np.zeros_like(ref_len), where=sys_len > 0)
    penalty = np.where(short, np.where(sys_len > 0, np.exp(1 - ratio), 0.0), 1.0)
    smoothing = np.ones(len(stats))
    log_sum = np.zeros(len(stats))
    for k in range(n):
        c, t = correct[:, k], total[:, k]
        missed = (c == 0) & (t > 0)
        smoothing = np.where(missed, smoothing * 2, smoothing)
        safe_t = np.where(t > 0, t, 1)
        precision = np.where(c > 0, 100 * c / safe_t, 100 / (smoothing * safe_t))
        # sacrebleu stops at the first order without n-grams: that precision and the later ones
        # stay 0, whose log it takes as -9999999999.
        log_sum += np.where(t > 0, np.log(precision), -9999999999)
    score = penalty * np.exp(log_sum / n)
    return np.where(correct.sum(axis=1) > 0, score, 0.0) / 100


def rouge_l_scores(hyps: list[str], refs: list[str]) -> list[float]:
    """Per pair: the F1 of the longest common subsequence of words."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs, strict=True)]


def rouge_l(hyps: list[str], refs: list[str]) -> float:
    scores = rouge_l_scores(hyps, refs)
    return sum(scores) / len(scores) if scores else 0.0


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = words(text)
    return [tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (0 when there is none)."""
    grams = [gram for text in texts for gram in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unigram_f1_scores(hyps: list[str], refs: list[str]) -> list[float]:
    """Per pair: the F1 of shared words (each word counted as often as both have it)."""
    scores = []
    for hyp, ref in zip(hyps, refs, strict=True):
        h, r = words(hyp), words(ref)
        common = sum((Counter(h) & Counter(r)).values())
        scores.append(0.0 if common == 0 else 2 * common / (len(h) + len(r)))
    return scores


def unigram_f1(hyps: list[str], refs: list[str]) -> float:
    """Mean over pairs of `unigram_f1_scores`."""
    scores = unigram_f1_scores(hyps, refs)
    return sum(scores) / len(scores) if scores else 0.0


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
