"""Rank mode: the DRI candidates and the original reply of a masked turn, ranked with ties."""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet

from curation.models import Candidate, Event, Ranking, SafetyStatus, Turn


def rankable_for(user: Any) -> QuerySet[Turn]:
    """Masked turns with candidates that this annotator has not ranked and that still need rankers."""
    return (
        Turn.objects.filter(candidates__isnull=False)
        .exclude(dialogue__safety_status__in=[SafetyStatus.FLAGGED, SafetyStatus.EXCLUDED])
        .exclude(rankings__annotator=user)
        .annotate(rankers=Count("rankings", distinct=True))
        .filter(rankers__lt=settings.REVIEWS_PER_DIALOGUE)
        .distinct()
        .order_by("id")
    )


def items(turn: Turn, user: Any) -> list[dict[str, Any]]:
    """The replies to rank, in the order this annotator sees them (stable across reloads)."""
    replies = [{"key": f"t{turn.pk}", "text": turn.text}]
    replies += [{"key": f"c{c.pk}", "text": c.text} for c in Candidate.objects.filter(turn=turn)]
    random.Random(f"{turn.pk}-{user.pk}").shuffle(replies)
    return replies


def parse(form: Any, shown: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Ranks from the form (1 = best; equal numbers tie) as groups best first, and the
    unacceptable items. Raises ValueError with a message for the annotator."""
    ranks: dict[str, int] = {}
    for item in shown:
        value = form.get(f"rank-{item['key']}", "").strip()
        if not value:
            raise ValueError("Give every reply a rank (equal numbers for ties).")
        try:
            ranks[item["key"]] = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rank number.") from None
    groups: dict[int, list[str]] = {}
    for key, rank in ranks.items():
        groups.setdefault(rank, []).append(key)
    order = [sorted(groups[rank]) for rank in sorted(groups)]
    unacceptable = sorted(k for k in ranks if form.get(f"bad-{k}"))
    return order, unacceptable


def save(
    turn: Turn,
    user: Any,
    order: list[list[str]],
    unacceptable: list[str],
    shown: list[str],
    edited_best: str,
) -> bool:
    """Store once; False if this annotator had ranked this turn already (double submit)."""
    try:
        with transaction.atomic():
            Ranking.objects.create(
                turn=turn,
                annotator=user,
                order=order,
                unacceptable=unacceptable,
                display_order=shown,
                edited_best=edited_best.strip(),
            )
            Event.objects.create(
                dialogue_id=turn.dialogue_id,
                actor=user,
                action="ranked",
                target=f"turn {turn.index}",
                after={"order": order, "unacceptable": unacceptable},
            )
    except IntegrityError:
        return False
    from curation.adjudication import after_ranking

    after_ranking(turn)
    return True


def context_turns(turn: Turn) -> tuple[list[Turn], list[Turn]]:
    turns = list(Turn.objects.filter(dialogue_id=turn.dialogue_id).order_by("index"))
    return [t for t in turns if t.index < turn.index], [t for t in turns if t.index > turn.index]
