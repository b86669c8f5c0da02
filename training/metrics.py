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

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def bleu(hyps: list[str], refs: list[str], n: int = 4) -> float:
    from sacrebleu.metrics import BLEU

    if not hyps:
        return 0.0
    return BLEU(max_ngram_order=n).corpus_score(hyps, [refs]).score / 100


def rouge_l(hyps: list[str], refs: list[str]) -> float:
    from rouge_score.rouge_scorer import RougeScorer

    if not hyps:
        return 0.0
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs, strict=True)
    ]
    return sum(scores) / len(scores)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (0 when there is none)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text)
        grams += [tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unigram_f1(hyps: list[str], refs: list[str]) -> float:
    """Mean over pairs of the F1 of shared words (each word counted as often as both have it)."""
    if not hyps:
        return 0.0
    scores = []
    for hyp, ref in zip(hyps, refs, strict=True):
        h, r = words(hyp), words(ref)
        common = sum((Counter(h) & Counter(r)).values())
        scores.append(0.0 if common == 0 else 2 * common / (len(h) + len(r)))
    return sum(scores) / len(scores)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (natural log)."""
    if tokens <= 0:
        return math.nan
    return math.exp(nll_sum / tokens)


def strategy_accuracy(pred_tags: list[str | None], gold: list[str | None]) -> float:
    """Share of replies whose tag equals the gold strategy, ignoring case; a missing predicted
    tag is wrong, and pairs without a gold strategy are left out."""
    pairs = [(p, g) for p, g in zip(pred_tags, gold, strict=True) if g is not None]
    if not pairs:
        return math.nan
    hits = sum(p is not None and p.strip().lower() == g.strip().lower() for p, g in pairs)
    return hits / len(pairs)
