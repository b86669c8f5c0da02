"""Disagreements between reviewers, and a lead's final word on them.

A dialogue goes to the adjudication queue when its last required review lands and the reviews
differ by the rules of `curation.settlement` (accept against reject; different explicit labels,
or different proposed texts, on a turn of a dialogue not rejected by all), or when a lead
re-opens a settled dialogue with a reason. A turn's candidate replies go there too when two
annotators ranked them with different best replies.

The lead's decision (final labels, final texts, accept or reject, best replies) is stored by
`settlement.write_final` as a new version of the dialogue through the same optimistic-locking
check as any edit, and recorded in the event log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from curation import settlement
from curation.models import (
    Adjudication,
    Dialogue,
    Event,
    Ranking,
    Review,
    Strategy,
    Turn,
)
from curation.review import rounds

Reason = Adjudication.Reason


def open_for(dialogue: Dialogue, reasons: list[str], details: dict[str, Any]) -> Adjudication:
    """The dialogue's open adjudication, created or widened with these reasons."""
    with transaction.atomic():
        current = Adjudication.objects.select_for_update().filter(
            dialogue=dialogue, resolved_at__isnull=True
        )
        existing = current.first()
        if existing is None:
            try:
                with transaction.atomic():
                    existing = Adjudication.objects.create(
                        dialogue=dialogue, reasons=list(reasons), details=details
                    )
            except IntegrityError:  # opened at the same moment by another request
                existing = current.get()
            else:
                Event.objects.create(
                    dialogue=dialogue,
                    action=Event.Action.ADJUDICATION_OPENED,
                    after={"reasons": reasons},
                )
                return existing
        merged = {**existing.details, **details}
        if "rankings" in existing.details and "rankings" in details:
            merged["rankings"] = sorted(
                set(existing.details["rankings"]) | set(details["rankings"])
            )
        existing.reasons = [r for r in Reason.values if r in {*existing.reasons, *reasons}]
        existing.details = merged
        existing.save(update_fields=["reasons", "details"])
        return existing


def ranking_conflict(turn: Turn) -> bool:
    """Two annotators put different replies first in this turn's current round (no lead has
    settled it)."""
    rankings = list(turn.rankings.filter(round=rounds.current(turn)))
    if any(r.adjudicated for r in rankings):
        return False
    bests = {frozenset(r.order[0]) for r in rankings if r.order}
    return len(rankings) >= 2 and len(bests) > 1 and not frozenset.intersection(*bests)


def after_ranking(turn: Turn) -> None:
    """Called when a ranking is stored: a conflict opens (or widens) the dialogue's adjudication."""
    if ranking_conflict(turn):
        open_for(turn.dialogue, [Reason.RANKINGS], {"rankings": [turn.index]})


@dataclass
class Decision:
    """What a lead decided for one adjudication."""

    decision: str  # Review.Decision
    labels: dict[int, str] = field(default_factory=dict)  # turn index -> strategy name or ""
    texts: dict[int, str] = field(default_factory=dict)  # turn index -> final text
    best: dict[int, str] = field(default_factory=dict)  # turn index -> item key ("c12" / "t7")
    note: str = ""


def resolve(adjudication: Adjudication, lead: Any, expected_version: int, chosen: Decision) -> None:
    """Apply the lead's decision as the dialogue's final state, a new version; StaleVersion if
    the dialogue changed since the lead's page was loaded, ValueError if the decision is
    malformed. Turns the lead gave no label or text keep what the reviews settled."""
    if chosen.decision not in Review.Decision.values:
        raise ValueError("Choose accept or reject.")
    if not chosen.note.strip():
        raise ValueError("Write a short note on why: it is kept with the decision.")
    dialogue = adjudication.dialogue
    turns = {t.index: t for t in dialogue.turns.select_related("strategy")}
    known = set(Strategy.objects.filter(taxonomy="extes").values_list("name", flat=True))
    for index, name in chosen.labels.items():
        if index not in turns or turns[index].role != Turn.Role.SUPPORTER:
            raise ValueError(f"Turn {index} is not a supporter turn of this dialogue.")
        if name and name not in known:
            raise ValueError(f"{name!r} is not a strategy.")
    for index in chosen.texts:
        if index not in turns:
            raise ValueError(f"Turn {index} is not a turn of this dialogue.")
    with transaction.atomic():
        locked = Adjudication.objects.select_for_update().get(pk=adjudication.pk)
        if not locked.is_open:
            raise ValueError("This disagreement was settled already.")
        before = Dialogue.objects.values_list("status", flat=True).get(pk=dialogue.pk)
        labels, texts = starting_point(dialogue)
        labels.update({i: name or None for i, name in chosen.labels.items()})
        texts.update({i: text.strip() for i, text in chosen.texts.items() if text.strip()})
        version = settlement.write_final(
            dialogue,
            chosen.decision,
            labels,
            texts,
            actor=lead,
            expected_version=expected_version,
            note=chosen.note.strip(),
        )
        for index, key in sorted(chosen.best.items()):
            _settle_ranking(turns[index], lead, key)
        locked.resolved_at = timezone.now()
        locked.resolved_by = lead
        locked.decision = chosen.decision
        locked.labels = {str(i): name for i, name in sorted(chosen.labels.items())}
        locked.note = chosen.note.strip()
        locked.save()
        Event.objects.create(
            dialogue=dialogue,
            actor=lead,
            action=Event.Action.ADJUDICATED,
            before={"status": before, "version": expected_version},
            after={
                "status": dialogue.status,
                "version": version,
                "decision": chosen.decision,
                "labels": locked.labels,
                "texts": sorted(i for i, t in texts.items() if t != turns[i].text),
                "best": {str(i): k for i, k in chosen.best.items()},
                "note": locked.note,
            },
        )


def starting_point(
    dialogue: Dialogue, result: settlement.Outcome | None = None
) -> tuple[dict[int, str | None], dict[int, str]]:
    """The labels and texts a lead starts from: the stored final state of a dialogue that had
    settled (re-opened, or a ranking conflict), else what the reviews settle (`result`, when
    the caller has it; a suggestion where they disagree)."""
    if dialogue.is_settled:
        rows = list(dialogue.turns.select_related("final_strategy").order_by("index"))
        return (
            {
                t.index: t.final_strategy.name if t.final_strategy else None
                for t in rows
                if t.role == Turn.Role.SUPPORTER
            },
            {t.index: t.current_text for t in rows},
        )
    result = result or settlement.outcome(dialogue)
    return (
        {t.index: t.strategy for t in result.turns if t.role == Turn.Role.SUPPORTER},
        {t.index: t.final for t in result.turns},
    )


def _settle_ranking(turn: Turn, lead: Any, best: str) -> None:
    """The lead's ranking of the turn's current round: `best` first, every other reply after it,
    tied."""
    number = rounds.current(turn)
    keys = rounds.keys(turn, number)
    if best not in keys:
        raise ValueError(f"{best!r} is not a reply of turn {turn.index}.")
    Ranking.objects.update_or_create(
        turn=turn,
        annotator=lead,
        round=number,
        defaults={
            "order": [[best], sorted(k for k in keys if k != best)],
            "unacceptable": [],
            "display_order": keys,
            "adjudicated": True,
        },
    )
