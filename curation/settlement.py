"""A dialogue's final state: the one place that decides it and the one function that writes it.

The rules (README, "Reviewing"):

- **A vote** on a supporter turn's strategy is an explicit label in a submitted review: a strategy
  the annotator chose, "no strategy", or the teacher's label confirmed (`c`). A turn an annotator
  left untouched is no vote: they may not have looked at it closely.
- **A turn's final strategy** is the label every vote agrees on; with no votes, the teacher's
  label. Votes that differ are a disagreement for a lead.
- **A turn's final text** is the text as written, or the edit proposed in the reviews when every
  review that proposed one proposed the same text. Different proposals for one turn are a
  disagreement for a lead.
- **The decision** is the one every submitted review made; accept against reject is a
  disagreement. Two rejections never need a lead: the labels and texts of a rejected dialogue
  are stored as they stand (a disagreeing turn keeps the teacher's label and its text as written).
- **A lead's adjudication** is final for what it decides: its labels and texts replace the
  reviewers'.

`write_final` stores the result on each `Turn` (`final_text`, `final_strategy`) and the
dialogue (`status`, `settled_at`, a new version). Every reader (releases, export, the dashboard,
agreement, generation's examples, DRI) reads those fields; nothing else computes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from curation.models import (
    Adjudication,
    Dialogue,
    Event,
    Review,
    Strategy,
    Turn,
    TurnEdit,
    TurnLabel,
)

ACCEPT = Review.Decision.ACCEPT.value
REJECT = Review.Decision.REJECT.value


def final_label(teacher: str | None, votes: list[str | None]) -> tuple[str | None, bool]:
    """(final strategy, whether the votes disagree). `votes` are explicit labels only (None: "no
    strategy"); without any, the teacher's label stands."""
    if not votes:
        return teacher, False
    distinct = set(votes)
    if len(distinct) == 1:
        return votes[0], False
    return suggested(teacher, votes), True


def suggested(teacher: str | None, votes: list[str | None]) -> str | None:
    """What a lead is offered first for disagreeing votes: a strict majority, else the teacher's
    label if someone voted for it, else the first vote."""
    top, n = Counter(votes).most_common(1)[0]
    if n * 2 > len(votes):
        return top
    return teacher if teacher in votes else votes[0]


def final_text(original: str, proposals: list[str]) -> tuple[str, bool]:
    """(final text, whether proposals conflict): the one proposed text, else the original."""
    distinct = set(proposals)
    if not distinct:
        return original, False
    if len(distinct) == 1:
        return proposals[0], False
    return original, True


@dataclass
class TurnOutcome:
    index: int
    role: str
    text: str  # as written
    teacher: str | None
    votes: dict[str, str | None] = field(default_factory=dict)  # annotator -> explicit label
    proposals: dict[str, str] = field(default_factory=dict)  # annotator -> proposed text
    strategy: str | None = None  # final (or suggested, when `label_conflict`)
    final: str = ""  # final text (the original when `text_conflict`)
    label_conflict: bool = False
    text_conflict: bool = False


@dataclass
class Outcome:
    """What the submitted reviews of a dialogue settle, and what they leave to a lead."""

    decision: str | None  # None when the reviews disagree
    decisions: dict[str, str]  # annotator -> decision
    turns: list[TurnOutcome]

    @property
    def reasons(self) -> list[str]:
        reasons = []
        if self.decision is None:
            reasons.append(Adjudication.Reason.DECISION.value)
        if self.decision != REJECT:
            if any(t.label_conflict for t in self.turns):
                reasons.append(Adjudication.Reason.LABELS.value)
            if any(t.text_conflict for t in self.turns):
                reasons.append(Adjudication.Reason.TEXTS.value)
        return reasons

    @property
    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.decision == REJECT:
            return details
        labels = {
            str(t.index): {a: label or "" for a, label in t.votes.items()}
            for t in self.turns
            if t.label_conflict
        }
        texts = {str(t.index): dict(t.proposals) for t in self.turns if t.text_conflict}
        if labels:
            details["labels"] = labels
        if texts:
            details["texts"] = texts
        return details


def outcome(dialogue: Dialogue) -> Outcome:
    """Apply the rules above to the dialogue's submitted reviews (a fixed number of queries)."""
    reviews = list(
        dialogue.reviews.filter(submitted_at__isnull=False)
        .select_related("annotator")
        .order_by("id")
    )
    names = {r.pk: r.annotator.get_username() for r in reviews}
    decisions = {names[r.pk]: r.decision for r in reviews}
    turns = [
        TurnOutcome(t.index, t.role, t.text, t.strategy.name if t.strategy else None)
        for t in dialogue.turns.select_related("strategy").order_by("index")
    ]
    by_index = {t.index: t for t in turns}
    for review_id, index, strategy in TurnLabel.objects.filter(
        review__in=reviews, turn__role=Turn.Role.SUPPORTER
    ).values_list("review_id", "turn__index", "strategy__name"):
        by_index[index].votes[names[review_id]] = strategy
    for review_id, index, after in TurnEdit.objects.filter(review__in=reviews).values_list(
        "review_id", "turn__index", "after"
    ):
        by_index[index].proposals[names[review_id]] = after
    ordered = list(names.values())  # review order: the first vote is the first review's
    for turn in turns:
        votes = [turn.votes[a] for a in ordered if a in turn.votes]
        if turn.role == Turn.Role.SUPPORTER:
            turn.strategy, turn.label_conflict = final_label(turn.teacher, votes)
        proposals = [turn.proposals[a] for a in ordered if a in turn.proposals]
        turn.final, turn.text_conflict = final_text(turn.text, proposals)
    distinct = set(decisions.values())
    decision = distinct.pop() if len(distinct) == 1 else None
    if decision == REJECT:  # nothing of a rejected dialogue needs a lead
        for turn in turns:
            if turn.label_conflict:
                turn.strategy, turn.label_conflict = turn.teacher, False
            turn.text_conflict = False
    return Outcome(decision, decisions, turns)


def settle(dialogue: Dialogue) -> str:
    """Called when the dialogue's last required review lands: store its final state if the
    reviews agree, else open an adjudication. Returns the new status. Call inside a transaction."""
    from curation.lead import adjudication

    result = outcome(dialogue)
    reasons = result.reasons
    if reasons:
        Dialogue.objects.filter(pk=dialogue.pk).update(
            status=Dialogue.Status.NEEDS_ADJUDICATION, updated_at=timezone.now()
        )
        Event.objects.create(
            dialogue=dialogue,
            action=Event.Action.STATUS,
            after={"status": Dialogue.Status.NEEDS_ADJUDICATION},
        )
        adjudication.open_for(dialogue, reasons, result.details)
        return Dialogue.Status.NEEDS_ADJUDICATION
    assert result.decision is not None
    write_final(
        dialogue,
        result.decision,
        {t.index: t.strategy for t in result.turns if t.role == Turn.Role.SUPPORTER},
        {t.index: t.final for t in result.turns},
        actor=None,
        expected_version=None,
    )
    return Dialogue.objects.values_list("status", flat=True).get(pk=dialogue.pk)


def write_final(
    dialogue: Dialogue,
    decision: str,
    labels: dict[int, str | None],
    texts: dict[int, str],
    *,
    actor: Any,
    expected_version: int | None,
    note: str = "",
) -> int:
    """Store the final state: each turn's final text and strategy (turns not in `texts` /
    `labels` keep the text as written / the teacher's label), the status, a new version.
    With `expected_version`, StaleVersion if the dialogue moved since (a lead's stale page).
    Returns the new version. Call inside a transaction."""
    from curation.review.reviewing import next_version

    status = Dialogue.Status.ACCEPTED if decision == ACCEPT else Dialogue.Status.REJECTED
    now = timezone.now()
    with transaction.atomic():
        if expected_version is None:
            Dialogue.objects.filter(pk=dialogue.pk).update(
                version=F("version") + 1, status=status, settled_at=now, updated_at=now
            )
        else:
            next_version(dialogue.pk, expected_version, status=status, settled_at=now)
        ids = dict(Strategy.objects.filter(taxonomy="extes").values_list("name", "pk"))
        turns = list(dialogue.turns.select_related("strategy").order_by("index"))
        changed = []
        for turn in turns:
            turn.final_text = texts.get(turn.index, turn.text).strip() or turn.text
            if turn.role == Turn.Role.SUPPORTER:
                teacher = turn.strategy.name if turn.strategy else None
                name = labels.get(turn.index, teacher)
                if name and name not in ids:
                    raise ValueError(f"{name!r} is not a strategy.")
                turn.final_strategy_id = ids[name] if name else None
            changed.append(turn)
        Turn.objects.bulk_update(changed, ["final_text", "final_strategy"])
        version = Dialogue.objects.values_list("version", flat=True).get(pk=dialogue.pk)
        Event.objects.create(
            dialogue=dialogue,
            actor=actor,
            action=Event.Action.SETTLED,
            after={
                "status": status,
                "version": version,
                "edited": sorted(t.index for t in turns if t.final_text != t.text),
                **({"note": note} if note else {}),
            },
        )
    dialogue.status, dialogue.version, dialogue.settled_at = status, version, now
    return version
