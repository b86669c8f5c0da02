"""The review queue and what a review changes: claims with leases, labels, edits, submissions.

Claiming is atomic: on PostgreSQL candidate rows are locked with SKIP LOCKED, so two annotators
pressing "next" at once take different dialogues; on SQLite the claim's write transaction
(BEGIN IMMEDIATE) already runs one claim at a time. Reviews are blind: nothing here shows one
annotator another's review.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from curation.models import (
    Assignment,
    Dialogue,
    Event,
    Review,
    SafetyStatus,
    Strategy,
    Turn,
    TurnEdit,
    TurnLabel,
)

OPEN = [Dialogue.Status.PENDING, Dialogue.Status.IN_REVIEW]


class StaleVersion(Exception):
    """The dialogue changed since the page was loaded: the save is refused, nothing is lost."""

    def __init__(self, current: int, changes: list[Event]) -> None:
        super().__init__(f"the dialogue is at version {current}")
        self.current = current
        self.changes = changes


def lease() -> timedelta:
    return timedelta(minutes=settings.REVIEW_LEASE_MINUTES)


def available_for(user: Any, now: Any = None) -> QuerySet[Dialogue]:
    """Dialogues this annotator may claim: open, not flagged for leads, not already reviewed or
    skipped by them, and with room left among submitted reviews and others' live leases.

    Correlated subqueries rather than a GROUP BY: walking the status index in id order, the
    database stops at the first rows that qualify, however many dialogues there are.
    """
    now = now or timezone.now()
    live_others = (
        Assignment.objects.filter(
            dialogue=OuterRef("pk"), released_at__isnull=True, expires_at__gt=now
        )
        .exclude(annotator=user)
        .order_by()
        .values("dialogue")
        .annotate(n=Count("id"))
        .values("n")
    )
    # Crisis-flagged dialogues reach annotators only once a lead cleared them, and then no more
    # than the daily cap per annotator (their wellbeing matters more than throughput).
    safe = Q(crisis_flag=False)
    if crisis_shown_today(user, now) < settings.CRISIS_DAILY_CAP:
        safe |= Q(safety_status=SafetyStatus.CLEARED)
    return (
        Dialogue.objects.filter(
            safe, status__in=OPEN, reviews_done__lt=settings.REVIEWS_PER_DIALOGUE
        )
        .exclude(safety_status__in=[SafetyStatus.FLAGGED, SafetyStatus.EXCLUDED])
        .exclude(Exists(Review.objects.filter(dialogue=OuterRef("pk"), annotator=user)))
        .exclude(
            Exists(Assignment.objects.filter(dialogue=OuterRef("pk"), annotator=user, skipped=True))
        )
        .annotate(live_leases=Coalesce(Subquery(live_others), 0))
        .filter(live_leases__lt=settings.REVIEWS_PER_DIALOGUE - F("reviews_done"))
        .order_by("id")
    )


def crisis_shown_today(user: Any, now: Any = None) -> int:
    """Crisis-flagged dialogues this annotator was given since local midnight."""
    now = now or timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return Assignment.objects.filter(
        annotator=user, created_at__gte=midnight, dialogue__crisis_flag=True
    ).count()


def held_by(user: Any) -> Dialogue | None:
    """The dialogue this annotator holds and has not submitted yet, if any (lease renewed)."""
    now = timezone.now()
    assignment = (
        Assignment.objects.filter(annotator=user, released_at__isnull=True, expires_at__gt=now)
        .exclude(dialogue__reviews__annotator=user, dialogue__reviews__submitted_at__isnull=False)
        .select_related("dialogue")
        .order_by("id")
        .first()
    )
    if assignment is None:
        return None
    Assignment.objects.filter(pk=assignment.pk).update(expires_at=now + lease())
    return assignment.dialogue


def claim_next(user: Any) -> Dialogue | None:
    """The dialogue to review next: the one already held, else a newly claimed one."""
    held = held_by(user)
    if held is not None:
        return held
    now = timezone.now()
    with transaction.atomic():
        for pk in available_for(user, now).values_list("pk", flat=True)[:20]:
            rows = Dialogue.objects.filter(pk=pk)
            if connection.vendor == "postgresql":
                # One row at a time: a row another claim holds is skipped, not waited for.
                rows = rows.select_for_update(skip_locked=True)
            dialogue = rows.first()
            if dialogue is None:
                continue
            # Checked again under the lock: another claim may have filled the last place.
            live = (
                dialogue.assignments.filter(released_at__isnull=True, expires_at__gt=now)
                .exclude(annotator=user)
                .count()
            )
            if dialogue.reviews_done + live >= settings.REVIEWS_PER_DIALOGUE:
                continue
            Assignment.objects.update_or_create(
                dialogue=dialogue,
                annotator=user,
                defaults={"expires_at": now + lease(), "released_at": None, "skipped": False},
            )
            Dialogue.objects.filter(pk=dialogue.pk, status=Dialogue.Status.PENDING).update(
                status=Dialogue.Status.IN_REVIEW
            )
            Event.objects.create(dialogue=dialogue, actor=user, action="claimed")
            dialogue.refresh_from_db()
            return dialogue
    return None


def renew(dialogue: Dialogue, user: Any) -> None:
    Assignment.objects.filter(dialogue=dialogue, annotator=user, released_at__isnull=True).update(
        expires_at=timezone.now() + lease()
    )


def skip(dialogue: Dialogue, user: Any) -> None:
    """Give the dialogue back without penalty; this annotator will not be offered it again."""
    with transaction.atomic():
        updated = Assignment.objects.filter(
            dialogue=dialogue, annotator=user, released_at__isnull=True
        ).update(released_at=timezone.now(), skipped=True)
        if updated:
            Review.objects.filter(
                dialogue=dialogue, annotator=user, submitted_at__isnull=True
            ).delete()
            Event.objects.create(dialogue=dialogue, actor=user, action="skipped")
            _reopen_if_untouched(dialogue)


def _reopen_if_untouched(dialogue: Dialogue) -> None:
    live = dialogue.assignments.filter(released_at__isnull=True, expires_at__gt=timezone.now())
    if dialogue.reviews_done == 0 and not live.exists():
        Dialogue.objects.filter(pk=dialogue.pk, status=Dialogue.Status.IN_REVIEW).update(
            status=Dialogue.Status.PENDING
        )


def draft_for(dialogue: Dialogue, user: Any) -> Review:
    review, _ = Review.objects.get_or_create(
        dialogue=dialogue, annotator=user, defaults={"based_on_version": dialogue.version}
    )
    return review


def set_label(review: Review, turn: Turn, strategy: Strategy | None) -> TurnLabel:
    if review.is_submitted:
        raise ValueError("this review was already submitted")
    label, _ = TurnLabel.objects.update_or_create(
        review=review, turn=turn, defaults={"strategy": strategy}
    )
    return label


def next_version(dialogue_id: int, expected_version: int, **changes: Any) -> None:
    """Move the dialogue to its next version, with `changes` to its row, if it is still at
    `expected_version`; else StaleVersion with the edits made since. Call inside a transaction."""
    updated = Dialogue.objects.filter(pk=dialogue_id, version=expected_version).update(
        version=F("version") + 1, updated_at=timezone.now(), **changes
    )
    if not updated:
        current = Dialogue.objects.values_list("version", flat=True).get(pk=dialogue_id)
        edits = Event.objects.filter(
            dialogue_id=dialogue_id, action="edited", after__version__gt=expected_version
        ).select_related("actor")
        raise StaleVersion(current, list(edits))


def edit_turn(
    turn: Turn, text: str, expected_version: int, user: Any, review: Review | None, reason: str = ""
) -> Dialogue:
    """Change a turn's text if the dialogue is still at `expected_version`; else StaleVersion."""
    text = text.strip()
    with transaction.atomic():
        next_version(turn.dialogue_id, expected_version)
        before = turn.text
        Turn.objects.filter(pk=turn.pk).update(text=text)
        TurnEdit.objects.create(
            review=review,
            turn=turn,
            editor=user,
            before=before,
            after=text,
            reason=reason,
            version=expected_version + 1,
        )
        Event.objects.create(
            dialogue_id=turn.dialogue_id,
            actor=user,
            action="edited",
            target=f"turn {turn.index}",
            before={"text": before, "version": expected_version},
            after={"text": text, "version": expected_version + 1},
        )
        turn.text = text
        return Dialogue.objects.get(pk=turn.dialogue_id)


def submit(review: Review, decision: str, reasons: list[str], flags: list[str], notes: str) -> bool:
    """Submit once; False when it already was (double click, retry, back button)."""
    with transaction.atomic():
        now = timezone.now()
        updated = Review.objects.filter(pk=review.pk, submitted_at__isnull=True).update(
            decision=decision, reasons=reasons, flags=flags, notes=notes, submitted_at=now
        )
        if not updated:
            return False
        Dialogue.objects.filter(pk=review.dialogue_id).update(reviews_done=F("reviews_done") + 1)
        Assignment.objects.filter(
            dialogue_id=review.dialogue_id, annotator=review.annotator
        ).update(released_at=now)
        dialogue = Dialogue.objects.select_for_update().get(pk=review.dialogue_id)
        Event.objects.create(
            dialogue=dialogue,
            actor=review.annotator,
            action="reviewed",
            after={"decision": decision, "reasons": reasons, "flags": flags},
        )
        if Review.Flag.CRISIS in flags and dialogue.safety_status != SafetyStatus.FLAGGED:
            # To the leads' safety queue, even when a lead had cleared it before: a new flag is
            # a new concern.
            dialogue.crisis_flag = True
            dialogue.safety_status = SafetyStatus.FLAGGED
            dialogue.safety_notes = {
                **dialogue.safety_notes,
                "source": "annotator",
                "flagged_by": review.annotator.get_username(),
                "notes": notes,
            }
            dialogue.save(update_fields=["crisis_flag", "safety_status", "safety_notes"])
        if Review.Flag.CRISIS in flags:  # each annotator's flag is counted on the dashboard
            Event.objects.create(
                dialogue=dialogue,
                actor=review.annotator,
                action="crisis flagged",
                after={"safety_status": dialogue.safety_status},
            )
        if dialogue.reviews_done >= settings.REVIEWS_PER_DIALOGUE:
            _settle(dialogue)
        review.refresh_from_db()
        return True


def _settle(dialogue: Dialogue) -> None:
    """Accepted or rejected when the reviews agree (on the decision, and on the labels of an
    accepted dialogue); otherwise a lead adjudicates."""
    from curation import adjudication

    reasons, details = adjudication.disagreements(dialogue)
    if reasons:
        status = Dialogue.Status.NEEDS_ADJUDICATION
    elif dialogue.reviews.filter(decision=Review.Decision.ACCEPT).exists():
        status = Dialogue.Status.ACCEPTED
    else:
        status = Dialogue.Status.REJECTED
    Dialogue.objects.filter(pk=dialogue.pk).update(status=status)
    Event.objects.create(dialogue=dialogue, action="status", after={"status": status})
    if reasons:
        adjudication.open_for(dialogue, reasons, details)
