"""The leads' safety queue: dialogues flagged for crisis or self-harm wait here until a lead
clears them (they may then be reviewed and released) or excludes them (never reviewed or released).

Flags come from the crisis gate (`generation.safety`, on every way in: imports, seeds, generation,
DRI candidates and edits) and from annotators' reviews. Every
decision needs a note and is kept in the dialogue's event log.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from curation.models import Dialogue, Event, SafetyStatus


def queue() -> QuerySet[Dialogue]:
    return (
        Dialogue.objects.filter(safety_status=SafetyStatus.FLAGGED)
        .select_related("scenario")
        .order_by("id")
    )


def clear(dialogue: Dialogue, lead: Any, note: str) -> None:
    """Safe to use: back to the review queue (within annotators' daily cap) and into releases."""
    _decide(dialogue, lead, note, SafetyStatus.CLEARED)


def exclude(dialogue: Dialogue, lead: Any, note: str) -> None:
    """Kept out of reviews and releases for good."""
    _decide(dialogue, lead, note, SafetyStatus.EXCLUDED)


def _decide(dialogue: Dialogue, lead: Any, note: str, status: str) -> None:
    note = note.strip()
    if not note:
        raise ValueError("Write a note: it says why, for whoever reads this dialogue next.")
    with transaction.atomic():
        locked = Dialogue.objects.select_for_update().get(pk=dialogue.pk)
        if locked.safety_status != SafetyStatus.FLAGGED:
            raise ValueError(
                f"Dialogue #{locked.pk} is not waiting for a safety decision "
                f"(it is {locked.get_safety_status_display().lower()})."
            )
        decision = {
            "status": status,
            "by": lead.get_username(),
            "note": note,
            "at": timezone.now().isoformat(),
        }
        notes = dict(locked.safety_notes)
        notes["decisions"] = [*notes.get("decisions", []), decision]
        Dialogue.objects.filter(pk=locked.pk).update(
            safety_status=status, safety_notes=notes, updated_at=timezone.now()
        )
        Event.objects.create(
            dialogue=locked,
            actor=lead,
            action=Event.Action.SAFETY_CLEARED
            if status == SafetyStatus.CLEARED
            else Event.Action.SAFETY_EXCLUDED,
            before={"safety_status": locked.safety_status},
            after={"safety_status": status, "note": note},
        )
    dialogue.refresh_from_db()
