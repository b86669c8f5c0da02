"""A targeted next round: where a trained student is weakest, by scenario and by strategy, and
the shares of a generation round that follow from it. Plain data in, plain data out (the new-job
form of generation and its planner use it).

A scored reply's weakness is its rule's measure: the written reply's loss per token under the
student ("likelihood"), or 100 minus its unigram F1 with the written reply ("overlap"). A group's
weakness is the mean over its replies; a group the evaluation did not reach counts as average.
Shares mix an even (or, for strategies, the usual ExTES) split with one in proportion to
weakness; `emphasis` is the weight of the latter (0: no targeting, 1: weakness alone).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RULES = {
    "likelihood": "Loss per token of the written reply under the student",
    "overlap": "100 minus the unigram F1 of the student's reply with the written one",
}


def weakness_of(sample: Mapping[str, Any], rule: str) -> float | None:
    scores = sample.get("student_scores") or {}
    if rule == "likelihood":
        nll, tokens = scores.get("nll"), scores.get("tokens")
        return nll / tokens if nll is not None and tokens else None
    if rule == "overlap":
        f1 = scores.get("unigram_f1")
        return None if f1 is None else 100.0 - float(f1)
    raise ValueError(f"unknown rule {rule!r}: one of {', '.join(RULES)}")


def by_group(
    samples: Sequence[Mapping[str, Any]],
    group_of: Callable[[Mapping[str, Any]], str | None],
    rule: str,
) -> dict[str, tuple[float, int]]:
    """Per group: (mean weakness, replies measured)."""
    found: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        value, group = weakness_of(sample, rule), group_of(sample)
        if value is not None and group is not None:
            found[group].append(value)
    return {group: (sum(v) / len(v), len(v)) for group, v in found.items()}


def shares(
    names: Sequence[str],
    measured: Mapping[str, tuple[float, int]],
    emphasis: float,
    usual: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Each name's share (summing to 1): (1 - emphasis) of the usual split (even when none is
    given) plus emphasis of the usual split reweighted by weakness over its mean."""
    if not names:
        return {}
    if not 0 <= emphasis <= 1:
        raise ValueError("emphasis: from 0 to 1")
    base = {n: float((usual or {}).get(n, 1.0)) for n in names}
    total = sum(base.values()) or 1.0
    base = {n: v / total for n, v in base.items()}
    known = [measured[n][0] for n in names if n in measured]
    mean = sum(known) / len(known) if known else 1.0
    factor = {n: (measured[n][0] / mean if n in measured and mean > 0 else 1.0) for n in names}
    weighted = {n: base[n] * factor[n] for n in names}
    norm = sum(weighted.values()) or 1.0
    return {n: (1 - emphasis) * base[n] + emphasis * weighted[n] / norm for n in names}


def counts(weights: Mapping[str, float], total: int, minimum: int = 1) -> dict[str, int]:
    """`total` items split by `weights` (largest remainder); a name left under `minimum` is
    raised to it, one item at a time from the largest, when the total allows it."""
    names = list(weights)
    if not names:
        return {}
    norm = sum(weights.values()) or 1.0
    exact = {n: total * weights[n] / norm for n in names}
    given = {n: int(exact[n]) for n in names}
    order = sorted(names, key=lambda n: (-(exact[n] - given[n]), names.index(n)))
    for n in order[: total - sum(given.values())]:
        given[n] += 1
    if total >= minimum * len(names):
        for n in names:
            while given[n] < minimum:
                largest = max(names, key=lambda m: (given[m], -names.index(m)))
                given[largest] -= 1
                given[n] += 1
    return given


def plan(
    samples: Sequence[Mapping[str, Any]],
    scene_of: Callable[[Mapping[str, Any]], str | None],
    strategy_of: Callable[[Mapping[str, Any]], str | None],
    rule: str,
    scenarios: Sequence[str],
    total: int,
    usual_strategies: Mapping[str, float],
    emphasis: float = 0.5,
) -> dict[str, Any]:
    """What a generation job records and its form shows: per scenario and per strategy the
    weakness measured (and on how many replies), the share, and per scenario its dialogues a
    round (`counts`, summing to `total`)."""
    scenes = by_group(samples, scene_of, rule)
    strategies = by_group(samples, strategy_of, rule)
    scene_shares = shares(scenarios, scenes, emphasis)
    per_round = counts(scene_shares, total)
    names = list(usual_strategies)
    strategy_shares = shares(names, strategies, emphasis, usual_strategies)
    usual_total = sum(float(v) for v in usual_strategies.values()) or 1.0
    return {
        "rule": rule,
        "emphasis": emphasis,
        "scenarios": [
            {
                "name": name,
                "weakness": _rounded(scenes.get(name, (None, 0))[0]),
                "replies": scenes.get(name, (None, 0))[1],
                "share": round(scene_shares[name], 4),
                "dialogues": per_round[name],
            }
            for name in scenarios
        ],
        "strategies": [
            {
                "name": name,
                "weakness": _rounded(strategies.get(name, (None, 0))[0]),
                "replies": strategies.get(name, (None, 0))[1],
                "usual": round(float(usual_strategies[name]) / usual_total, 4),
                "share": round(strategy_shares[name], 4),
            }
            for name in names
        ],
        "counts": per_round,
        "strategy_shares": {name: round(strategy_shares[name], 4) for name in names},
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
