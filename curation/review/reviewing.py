"""The review queue and what a review changes: claims with leases, labels, proposed edits,
submissions.

Claiming is atomic: on PostgreSQL candidate rows are locked with SKIP LOCKED, so two annotators
pressing "next" at once take different dialogues; on SQLite the claim's write transaction
(BEGIN IMMEDIATE) already runs one claim at a time.

Reviews are blind until the dialogue settles: an annotator's labels, proposed edits, flags,
notes and decision belong to their review, and the turns they read are the texts as written.
Every write goes through `writable_review`, which asks for a live hold on the dialogue, an open
review and a dialogue still in review; otherwise it raises `NotAllowed` and nothing changes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.formats import time_format

from curation.models import (
    SAFETY_HELD,
    Assignment,
    Dialogue,
    Event,
    Review,
    Strategy,
    Turn,
    TurnEdit,
    TurnLabel,
)
from generation import crisis_gate


class StaleVersion(Exception):
    """The dialogue changed since the page was loaded: the save is refused, nothing is lost."""

    def __init__(self, current: int, changes: list[Event]) -> None:
        super().__init__(f"the dialogue is at version {current}")
        self.current = current
        self.changes = changes


class NotAllowed(Exception):
    """A write this user may not make now; `status` is the HTTP answer (409: the hold ran out,
    403: never theirs, submitted already, or no longer in review) and the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def lease() -> timedelta:
    return timedelta(minutes=settings.REVIEW_LEASE_MINUTES)


def held_by(user: Any) -> Dialogue | None:
    """The dialogue this annotator holds and has not submitted yet, if any. Reads only."""
    assignment = (
        Assignment.objects.live()
        .filter(annotator=user)
        .exclude(dialogue__reviews__annotator=user, dialogue__reviews__submitted_at__isnull=False)
        .filter(dialogue__status__in=Dialogue.OPEN)
        # Flagged meanwhile (by another reviewer, a gate): gone at this annotator's next request.
        .exclude(dialogue__safety_status__in=SAFETY_HELD)
        .select_related("dialogue__scenario")
        .order_by("id")
        .first()
    )
    return assignment.dialogue if assignment else None


def claim_next(user: Any) -> Dialogue | None:
    """The dialogue to review next: the one already held, else a newly claimed one. A POST's."""
    held = held_by(user)
    if held is not None:
        Assignment.objects.filter(dialogue=held, annotator=user).update(
            expires_at=timezone.now() + lease()
        )
        return held
    now = timezone.now()
    with transaction.atomic():
        # Dialogues with this annotator's own draft first: a hold that ran out is taken again.
        available = Dialogue.objects.reviewable_by(user, now)
        drafts = list(
            available.filter(reviews__annotator=user, reviews__submitted_at__isnull=True)
            .values_list("pk", flat=True)
            .distinct()[:20]
        )
        for pk in [*drafts, *available.values_list("pk", flat=True)[:20]]:
            rows = Dialogue.objects.filter(pk=pk)
            if connection.vendor == "postgresql":
                # One row at a time: a row another claim holds is skipped, not waited for.
                rows = rows.select_for_update(skip_locked=True)
            dialogue = rows.first()
            if dialogue is None or dialogue.status not in Dialogue.OPEN:
                continue
            # Checked again under the lock: another claim may have filled the last place.
            live = Assignment.objects.live(now).filter(dialogue=dialogue).exclude(annotator=user)
            if dialogue.reviews_done + live.count() >= settings.REVIEWS_PER_DIALOGUE:
                continue
            Assignment.objects.update_or_create(
                dialogue=dialogue,
                annotator=user,
                defaults={"expires_at": now + lease(), "released_at": None, "skipped": False},
            )
            Dialogue.objects.filter(pk=dialogue.pk, status=Dialogue.Status.PENDING).update(
                status=Dialogue.Status.IN_REVIEW
            )
            Event.objects.create(dialogue=dialogue, actor=user, action=Event.Action.CLAIMED)
            dialogue.refresh_from_db()
            return dialogue
    return None


def writable_review(dialogue: Dialogue, user: Any) -> Review:
    """This annotator's open review of the dialogue (a draft is made on first write), if they may
    write to it now; renews their hold. Else NotAllowed, and nothing changes."""
    review = Review.objects.filter(dialogue=dialogue, annotator=user).first()
    if review is not None and review.is_submitted:
        raise NotAllowed(
            403, "You already submitted your review of this dialogue: it is saved as it was."
        )
    assignment = Assignment.objects.filter(dialogue=dialogue, annotator=user).first()
    if assignment is None and review is None:
        raise NotAllowed(403, "This dialogue is not one you are reviewing.")
    dialogue.refresh_from_db(fields=["status", "safety_status", "version"])
    if dialogue.status not in Dialogue.OPEN or dialogue.safety_status in SAFETY_HELD:
        raise NotAllowed(403, "This dialogue is no longer open for review. Nothing was saved.")
    now = timezone.now()
    if assignment is None or assignment.released_at is not None or assignment.expires_at <= now:
        ended = (
            f" at {time_format(timezone.localtime(assignment.expires_at), 'H:i')}"
            if assignment is not None and assignment.released_at is None
            else ""
        )
        raise NotAllowed(
            409,
            f"Your hold on this dialogue ran out{ended}, so nothing was saved. Your earlier "
            "labels and notes are kept: press Start reviewing to take it again if it still "
            "needs you.",
        )
    Assignment.objects.filter(pk=assignment.pk).update(expires_at=now + lease())
    if review is None:
        review, _ = Review.objects.get_or_create(
            dialogue=dialogue, annotator=user, defaults={"based_on_version": dialogue.version}
        )
    return review


def renew(dialogue: Dialogue, user: Any) -> None:
    """Keep the hold alive while the page is open (a POST every few minutes); NotAllowed if it
    is gone."""
    writable_review(dialogue, user)


def skip(dialogue: Dialogue, user: Any) -> None:
    """Give the dialogue back without penalty; this annotator will not be offered it again."""
    with transaction.atomic():
        writable_review(dialogue, user)
        Assignment.objects.filter(dialogue=dialogue, annotator=user).update(
            released_at=timezone.now(), skipped=True
        )
        Review.objects.filter(dialogue=dialogue, annotator=user, submitted_at__isnull=True).delete()
        Event.objects.create(dialogue=dialogue, actor=user, action=Event.Action.SKIPPED)
        _reopen_if_untouched(dialogue)


def _reopen_if_untouched(dialogue: Dialogue) -> None:
    live = Assignment.objects.live().filter(dialogue=dialogue)
    if dialogue.reviews_done == 0 and not live.exists():
        Dialogue.objects.filter(pk=dialogue.pk, status=Dialogue.Status.IN_REVIEW).update(
            status=Dialogue.Status.PENDING
        )


def draft_for(dialogue: Dialogue, user: Any) -> Review:
    return writable_review(dialogue, user)


def set_label(review: Review, turn: Turn, strategy: Strategy | None) -> TurnLabel:
    """An explicit label (a vote, see `curation.settlement`) in this annotator's review."""
    with transaction.atomic():
        review = writable_review(review.dialogue, review.annotator)
        label, _ = TurnLabel.objects.update_or_create(
            review=review, turn=turn, defaults={"strategy": strategy}
        )
    return label


def save_notes(review: Review, notes: str) -> None:
    with transaction.atomic():
        review = writable_review(review.dialogue, review.annotator)
        Review.objects.filter(pk=review.pk).update(notes=notes)


def next_version(dialogue_id: int, expected_version: int, **changes: Any) -> None:
    """Move the dialogue to its next version, with `changes` to its row, if it is still at
    `expected_version`; else StaleVersion with what leads did since. Call inside a transaction."""
    updated = Dialogue.objects.filter(pk=dialogue_id, version=expected_version).update(
        version=F("version") + 1, updated_at=timezone.now(), **changes
    )
    if not updated:
        current = Dialogue.objects.values_list("version", flat=True).get(pk=dialogue_id)
        since = Event.objects.filter(
            dialogue_id=dialogue_id,
            action__in=[Event.Action.SETTLED, Event.Action.REOPENED, Event.Action.ADJUDICATED],
            after__version__gt=expected_version,
        ).select_related("actor")
        raise StaleVersion(current, list(since))


def propose_edit(
    review: Review, turn: Turn, text: str, expected_version: int, reason: str = ""
) -> TurnEdit | None:
    """This annotator's proposed text for a turn, kept in their review until the dialogue settles
    (`curation.settlement`). Proposing the text as written withdraws the proposal (None).
    StaleVersion if a lead changed the dialogue since the page was loaded."""
    text = text.strip()
    dialogue, user = review.dialogue, review.annotator
    with transaction.atomic():
        review = writable_review(dialogue, user)
        if dialogue.version != expected_version:
            next_version(dialogue.pk, expected_version)  # raises StaleVersion
        mine = TurnEdit.objects.filter(review=review, turn=turn)
        if text == turn.text:
            mine.delete()
            proposal = None
        else:
            proposal, _ = TurnEdit.objects.update_or_create(
                review=review,
                turn=turn,
                defaults={
                    "editor": user,
                    "before": turn.text,
                    "after": text,
                    "reason": reason,
                    "version": expected_version,
                },
            )
        Event.objects.create(
            dialogue=dialogue,
            actor=user,
            action=Event.Action.PROPOSED_EDIT,
            target=f"turn {turn.index}",
            before={"text": turn.text, "version": expected_version},
            after={"text": text, "version": expected_version},
        )
        if proposal is not None and turn.role == Turn.Role.SEEKER:
            # The gate every dialogue passes, on the new words: a lead looks before anyone else.
            crisis = crisis_gate.check([text])
            if crisis.flagged:
                dialogue.flag_by_gate(
                    "edit gate",
                    list(crisis.categories),
                    list(crisis.matches),
                    [r.as_dict() for r in crisis.reasons],
                )
    return proposal


def submit(review: Review, decision: str, reasons: list[str], flags: list[str], notes: str) -> bool:
    """Submit once; False when it already was (double click, retry, back button). NotAllowed
    when the user may not write to this dialogue now."""
    dialogue, user = review.dialogue, review.annotator
    with transaction.atomic():
        if Review.objects.filter(pk=review.pk, submitted_at__isnull=False).exists():
            return False
        review = writable_review(dialogue, user)
        now = timezone.now()
        updated = Review.objects.filter(pk=review.pk, submitted_at__isnull=True).update(
            decision=decision, reasons=reasons, flags=flags, notes=notes, submitted_at=now
        )
        if not updated:
            return False
        Dialogue.objects.filter(pk=dialogue.pk).update(reviews_done=F("reviews_done") + 1)
        Assignment.objects.filter(dialogue=dialogue, annotator=user).update(released_at=now)
        dialogue = Dialogue.objects.select_for_update().get(pk=dialogue.pk)
        Event.objects.create(
            dialogue=dialogue,
            actor=user,
            action=Event.Action.REVIEWED,
            after={"decision": decision, "reasons": reasons, "flags": flags},
        )
        if Review.Flag.CRISIS in flags:
            dialogue.flag_crisis(user, notes)
        if dialogue.reviews_done >= settings.REVIEWS_PER_DIALOGUE:
            dialogue.settle()
    review.refresh_from_db()
    return True
