"""Rank mode: the replies of a masked turn's current round (the original, the teacher's DRI
candidates, a student's reply sent back), ranked with ties."""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from curation.models import SAFETY_HELD, Event, RankHold, Ranking, Turn
from curation.review import rounds
from curation.review.reviewing import NotAllowed, lease

CHANGED = (
    "The replies for this gap changed while you ranked them, so nothing was saved: rank the "
    "replies it has now."
)


def rankable_for(user: Any, now: Any = None) -> QuerySet[Turn]:
    """Masked turns whose current round this annotator has not ranked, that no lead settled, and
    that still have room among their rankers and others' live holds."""
    now = now or timezone.now()
    others = (
        RankHold.objects.live(now)
        .filter(turn=OuterRef("pk"), round=OuterRef("rank_round"))
        .exclude(annotator=user)
        .order_by()
        .values("turn")
        .annotate(n=Count("id"))
        .values("n")
    )
    in_round = Ranking.objects.filter(turn=OuterRef("pk"), round=OuterRef("rank_round"))
    rankers = in_round.order_by().values("turn").annotate(n=Count("id")).values("n")
    return (
        Turn.objects.filter(rounds.rankable())
        .exclude(dialogue__safety_status__in=SAFETY_HELD)
        .annotate(rank_round=rounds.current_number())
        .exclude(Exists(in_round.filter(annotator=user)))
        .exclude(Exists(in_round.filter(adjudicated=True)))
        .annotate(
            taken=Coalesce(Subquery(rankers), 0) + Coalesce(Subquery(others), 0),
        )
        .filter(taken__lt=settings.REVIEWS_PER_DIALOGUE)
        .order_by("id")
    )


def held_turn(user: Any) -> Turn | None:
    """The masked turn this annotator holds in its current round and has not ranked there yet,
    if any. Reads only."""
    holds = (
        RankHold.objects.live()
        .filter(annotator=user)
        .annotate(current=rounds.current_number("turn"))
        .filter(round=F("current"))
        .exclude(
            Exists(
                Ranking.objects.filter(
                    turn=OuterRef("turn"), round=OuterRef("round"), annotator=user
                )
            )
        )
        .select_related("turn")
        .order_by("id")
    )
    hold = holds.first()
    return hold.turn if hold else None


def claim_next(user: Any) -> Turn | None:
    """The turn to rank next, held for this annotator (the held one, else a new one)."""
    now = timezone.now()
    held = held_turn(user)
    if held is not None:
        RankHold.objects.filter(turn=held, annotator=user, round=rounds.current(held)).update(
            expires_at=now + lease()
        )
        return held
    with transaction.atomic():
        for pk in rankable_for(user, now).values_list("pk", flat=True)[:20]:
            rows = Turn.objects.filter(pk=pk)
            if connection.vendor == "postgresql":
                rows = rows.select_for_update(skip_locked=True)
            turn = rows.first()
            if turn is None:
                continue
            number = rounds.current(turn)
            if _places_taken(turn, number, user, now) >= settings.REVIEWS_PER_DIALOGUE:
                continue
            RankHold.objects.update_or_create(
                turn=turn,
                annotator=user,
                round=number,
                defaults={"expires_at": now + lease(), "released_at": None},
            )
            return turn
    return None


def _places_taken(turn: Turn, number: int, user: Any, now: Any) -> int:
    holds = RankHold.objects.live(now).filter(turn=turn, round=number).exclude(annotator=user)
    rankings = Ranking.objects.filter(turn=turn, round=number).exclude(annotator=user)
    return rankings.count() + holds.count()


def items(turn: Turn, user: Any, number: int | None = None) -> list[dict[str, Any]]:
    """The replies of the turn's current round (or of round `number`) in the order this
    annotator sees them (stable across reloads), unmarked: who wrote which is not shown."""
    number = rounds.current(turn) if number is None else number
    shown = rounds.keys(turn, number)
    found = rounds.texts(turn, shown)
    replies = [{"key": key, "text": found[key]} for key in shown if key in found]
    seed = f"{turn.pk}-{user.pk}" if number == 1 else f"{turn.pk}-{number}-{user.pk}"
    random.Random(seed).shuffle(replies)
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
    """Store once; False if this annotator had ranked this turn already (double submit).
    NotAllowed when they hold no live place for it, or the turn has its rankers already."""
    now = timezone.now()
    try:
        with transaction.atomic():
            locked = Turn.objects.select_for_update().get(pk=turn.pk)
            number = rounds.current(locked)
            in_round = Ranking.objects.filter(turn=locked, round=number)
            if in_round.filter(annotator=user).exists():
                return False
            hold = (
                RankHold.objects.live(now).filter(turn=locked, annotator=user, round=number).first()
            )
            changed = NotAllowed(409, CHANGED)
            if hold is None:
                if RankHold.objects.live(now).filter(turn=locked, annotator=user).exists():
                    raise changed  # held in an earlier round: a new one opened since
                raise NotAllowed(
                    409,
                    "Your hold on these replies ran out or was never taken, so nothing was "
                    "saved: take the next replies to rank from the queue.",
                )
            if sorted(shown) != sorted(rounds.keys(locked, number)):
                raise changed
            if in_round.filter(adjudicated=True).exists() or (
                in_round.count() >= settings.REVIEWS_PER_DIALOGUE
            ):
                raise NotAllowed(403, "These replies have all the rankings they need.")
            Ranking.objects.create(
                turn=locked,
                annotator=user,
                round=number,
                order=order,
                unacceptable=unacceptable,
                display_order=shown,
                edited_best=edited_best.strip(),
            )
            RankHold.objects.filter(pk=hold.pk).update(released_at=now)
            Event.objects.create(
                dialogue_id=turn.dialogue_id,
                actor=user,
                action=Event.Action.RANKED,
                target=f"turn {turn.index}",
                after={"order": order, "unacceptable": unacceptable}
                | ({"round": number} if number > 1 else {}),
            )
    except IntegrityError:
        return False
    from curation.lead.adjudication import after_ranking

    after_ranking(turn)
    return True


def context_turns(turn: Turn) -> tuple[list[Turn], list[Turn]]:
    turns = list(Turn.objects.filter(dialogue_id=turn.dialogue_id).order_by("index"))
    return [t for t in turns if t.index < turn.index], [t for t in turns if t.index > turn.index]
