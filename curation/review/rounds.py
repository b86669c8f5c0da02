"""Ranking rounds of a masked turn: which round is current and which replies it shows.

Round 1 is the DRI round: the original and every teacher candidate of the turn, no row of its
own. Later rounds are RankRound rows with the replies they show fixed when they were opened (a
student's reply sent back among the original and the teacher's candidates). Only a turn's
current round, its highest, is offered; an annotator ranks each round once.
"""

from __future__ import annotations

from django.db.models import Exists, Max, OuterRef, Q, Subquery
from django.db.models.expressions import Expression
from django.db.models.functions import Coalesce

from curation.models import Candidate, RankRound, Turn


def current_number(turn_ref: str = "pk") -> Expression:
    """The current round's number of the turn at OuterRef(turn_ref), for annotations."""
    latest = (
        RankRound.objects.filter(turn=OuterRef(turn_ref))
        .order_by()
        .values("turn")
        .annotate(n=Max("number"))
        .values("n")
    )
    return Coalesce(Subquery(latest), 1)


def rankable() -> Q:
    """Turns with replies to rank in their current round: teacher candidates or an open later
    round, and no round waiting for the teacher's candidates."""
    teacher = Candidate.objects.filter(turn=OuterRef("pk"), author=Candidate.Author.TEACHER)
    later = RankRound.objects.filter(turn=OuterRef("pk"))
    waiting = later.filter(status=RankRound.Status.WAITING)
    return (Q(Exists(teacher)) | Q(Exists(later))) & ~Q(Exists(waiting))


def current(turn: Turn) -> int:
    found = RankRound.objects.filter(turn=turn).aggregate(n=Max("number"))["n"]
    return found or 1


def keys(turn: Turn, number: int | None = None) -> list[str]:
    """The items a round shows: "t<turn id>" (the original) and "c<candidate id>"."""
    number = current(turn) if number is None else number
    if number > 1:
        row = RankRound.objects.filter(turn=turn, number=number).first()
        return list(row.keys) if row else []
    teacher = Candidate.objects.filter(turn=turn, author=Candidate.Author.TEACHER).order_by("id")
    return [f"t{turn.pk}", *(f"c{pk}" for pk in teacher.values_list("pk", flat=True))]


def texts(turn: Turn, items: list[str]) -> dict[str, str]:
    """The text of each item of this turn."""
    found = {f"t{turn.pk}": turn.current_text}
    ids = [int(k[1:]) for k in items if k.startswith("c")]
    found |= {
        f"c{pk}": text
        for pk, text in Candidate.objects.filter(turn=turn, pk__in=ids).values_list("pk", "text")
    }
    return {k: found[k] for k in items if k in found}


def open_waiting(turn_ids: list[int] | None = None, dri_job_id: int | None = None) -> int:
    """Open the rounds waiting on these turns (or on this DRI job) with the teacher candidates
    the turn has now; returns how many opened. Called when a DRI unit ends, whatever its
    outcome, and when its job ends, so that no round is left waiting."""
    waiting = RankRound.objects.filter(status=RankRound.Status.WAITING)
    if turn_ids is not None:
        waiting = waiting.filter(turn_id__in=turn_ids)
    if dri_job_id is not None:
        waiting = waiting.filter(dri_job_id=dri_job_id)
    opened = 0
    for row in waiting.select_related("turn"):
        teacher = Candidate.objects.filter(turn=row.turn, author=Candidate.Author.TEACHER)
        added = [f"c{pk}" for pk in teacher.order_by("id").values_list("pk", flat=True)]
        shown = [row.keys[0], *added, *row.keys[1:]]
        opened += RankRound.objects.filter(pk=row.pk, status=RankRound.Status.WAITING).update(
            status=RankRound.Status.OPEN, keys=list(dict.fromkeys(shown))
        )
    return opened
