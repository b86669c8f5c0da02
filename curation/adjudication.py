"""Disagreements between reviewers, and a lead's final word on them.

A dialogue goes to the adjudication queue when its last required review lands and the reviews
differ: one accepts and another rejects, or they accept it with different strategies on a turn.
(Two rejections never need a lead, whatever their labels.) A turn's candidate replies go there too
when two annotators ranked them with different best replies.

A turn an annotator left unlabelled counts as keeping the teacher's label: they saw it and let it
stand. The lead's decision (final labels, final text, accept or reject, best replies) is applied as
a new version of the dialogue through the same optimistic-locking check as any edit, and each part
of it is written to the event log.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from curation.models import (
    Adjudication,
    Candidate,
    Dialogue,
    Event,
    Ranking,
    Review,
    Strategy,
    Turn,
    TurnLabel,
)
from curation.reviewing import edit_turn, next_version

Reason = Adjudication.Reason


@dataclass(frozen=True)
class Vote:
    annotator: str
    label: str  # strategy name, "" for none
    explicit: bool  # set by the annotator, not left as the teacher labelled it


def votes_by_turn(dialogue: Dialogue) -> tuple[list[Review], dict[int, list[Vote]]]:
    """The submitted reviews, and per supporter turn index each review's vote, in review order;
    a turn left unlabelled counts as the teacher's label."""
    reviews = list(
        dialogue.reviews.filter(submitted_at__isnull=False)
        .select_related("annotator")
        .order_by("id")
    )
    turns = dialogue.turns.filter(role=Turn.Role.SUPPORTER).select_related("strategy")
    explicit = {
        (label.review_id, label.turn_id): label.strategy.name if label.strategy else ""
        for label in TurnLabel.objects.filter(review__in=reviews).select_related("strategy")
    }
    votes: dict[int, list[Vote]] = {}
    for turn in turns.order_by("index"):
        teacher = turn.strategy.name if turn.strategy else ""
        votes[turn.index] = [
            Vote(
                review.annotator.get_username(),
                explicit.get((review.pk, turn.pk), teacher),
                (review.pk, turn.pk) in explicit,
            )
            for review in reviews
        ]
    return reviews, votes


def label_votes(dialogue: Dialogue) -> dict[int, dict[str, str]]:
    """{supporter turn index: {annotator: strategy name ("" for none)}} over submitted reviews."""
    return {
        index: {v.annotator: v.label for v in votes}
        for index, votes in votes_by_turn(dialogue)[1].items()
    }


def disagreements(dialogue: Dialogue) -> tuple[list[str], dict[str, Any]]:
    """Why the submitted reviews of this dialogue need a lead, if they do."""
    decisions = set(
        dialogue.reviews.filter(submitted_at__isnull=False).values_list("decision", flat=True)
    )
    reasons: list[str] = []
    details: dict[str, Any] = {}
    if len(decisions) > 1:
        reasons.append(Reason.DECISION)
    if decisions != {Review.Decision.REJECT}:
        differing = {
            str(index): votes
            for index, votes in label_votes(dialogue).items()
            if len(set(votes.values())) > 1
        }
        if differing:
            reasons.append(Reason.LABELS)
            details["labels"] = differing
    return reasons, details


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
                    dialogue=dialogue, action="adjudication opened", after={"reasons": reasons}
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
    """Two annotators put different replies first for this turn (no lead has settled it)."""
    rankings = list(turn.rankings.all())
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
    """Apply the lead's decision as a new version of the dialogue; StaleVersion if the dialogue
    changed since the lead's page was loaded, ValueError if the decision is malformed."""
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
    with transaction.atomic():
        locked = Adjudication.objects.select_for_update().get(pk=adjudication.pk)
        if not locked.is_open:
            raise ValueError("This disagreement was settled already.")
        version = expected_version
        for index, text in sorted(chosen.texts.items()):
            if index in turns and text.strip() and text.strip() != turns[index].text:
                edit_turn(turns[index], text, version, lead, None, reason="adjudication")
                version += 1
        # The decision itself is a version too: a stale page is refused here if nothing was edited.
        accepted = chosen.decision == Review.Decision.ACCEPT
        status = Dialogue.Status.ACCEPTED if accepted else Dialogue.Status.REJECTED
        next_version(dialogue.pk, version, status=status)
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
            action="adjudicated",
            before={"status": dialogue.status, "version": version},
            after={
                "status": status,
                "version": version + 1,
                "decision": chosen.decision,
                "labels": locked.labels,
                "best": {str(i): k for i, k in chosen.best.items()},
                "note": locked.note,
            },
        )


def _settle_ranking(turn: Turn, lead: Any, best: str) -> None:
    """The lead's ranking: `best` first, every other reply after it, tied."""
    keys = [
        f"t{turn.pk}",
        *(f"c{pk}" for pk in Candidate.objects.filter(turn=turn).values_list("pk", flat=True)),
    ]
    if best not in keys:
        raise ValueError(f"{best!r} is not a reply of turn {turn.index}.")
    Ranking.objects.update_or_create(
        turn=turn,
        annotator=lead,
        defaults={
            "order": [[best], sorted(k for k in keys if k != best)],
            "unacceptable": [],
            "display_order": keys,
            "adjudicated": True,
        },
    )


def final_labels(dialogue_ids: list[int]) -> dict[int, dict[str, str]]:
    """{dialogue id: {turn index: strategy}} of resolved adjudications (the latest wins)."""
    result: dict[int, dict[str, str]] = defaultdict(dict)
    for dialogue_id, labels in (
        Adjudication.objects.filter(dialogue_id__in=dialogue_ids, resolved_at__isnull=False)
        .order_by("resolved_at", "id")
        .values_list("dialogue_id", "labels")
    ):
        result[dialogue_id].update(labels or {})
    return result
