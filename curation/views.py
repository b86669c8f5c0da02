from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from curation import ranking, reviewing
from curation.diffs import word_diff
from curation.models import (
    Assignment,
    Dialogue,
    DialogueQuerySet,
    Ranking,
    Review,
    SafetyStatus,
    Scenario,
    Strategy,
    Turn,
)
from curation.roles import is_lead


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _dialogues_for_user(request: HttpRequest) -> DialogueQuerySet:
    """Leads see every dialogue; an annotator only those they hold or reviewed (reviews are blind,
    and the queue, not browsing, decides what they read next)."""
    user = cast(User, request.user)
    if is_lead(user):
        return Dialogue.objects.all()
    now = timezone.now()
    mine = Q(pk__in=Review.objects.filter(annotator=user).values("dialogue_id")) | Q(
        pk__in=Assignment.objects.filter(
            annotator=user, released_at__isnull=True, expires_at__gt=now
        ).values("dialogue_id")
    )
    return Dialogue.objects.filter(mine)


def _filtered(request: HttpRequest) -> tuple[QuerySet[Dialogue], dict[str, Any]]:
    params = request.GET
    scenario = _int_or_none(params.get("scenario"))
    status = params.get("status", "")
    origin = params.get("origin", "")
    q = params.get("q", "").strip()[:200]
    filters = {
        "scenario": scenario,
        "status": status if status in Dialogue.Status.values else "",
        "origin": origin if origin in Dialogue.Origin.values else "",
        "q": q,
    }
    dialogues = _dialogues_for_user(request)
    if scenario:
        dialogues = dialogues.filter(scenario_id=scenario)
    if filters["origin"]:
        dialogues = dialogues.filter(origin=origin)
    dialogues = dialogues.search(q)
    return dialogues, filters


@require_GET
@login_required
def dialogue_list(request: HtmxHttpRequest) -> HttpResponse:
    dialogues, filters = _filtered(request)
    # Status counts ignore the status filter, so each tab shows what choosing it would give.
    status_counts = dict(
        dialogues.order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    if filters["status"]:
        dialogues = dialogues.filter(status=filters["status"])

    # Keyset pagination on id (newest first): `before` walks to older rows, `after` back to newer.
    per_page = settings.DIALOGUES_PER_PAGE
    before = _int_or_none(request.GET.get("before"))
    after = _int_or_none(request.GET.get("after"))
    # A correlated subquery runs only for the rows of the page; a join + GROUP BY would count
    # the turns of every dialogue in the filtered set first.
    turn_count = (
        Turn.objects.filter(dialogue=OuterRef("pk"))
        .order_by()
        .values("dialogue")
        .annotate(n=Count("id"))
        .values("n")
    )
    page = dialogues.select_related("scenario").annotate(turn_count=Subquery(turn_count))
    if after is not None:
        rows = list(page.filter(id__gt=after).order_by("id")[: per_page + 1])
        has_newer = len(rows) > per_page
        rows = rows[:per_page][::-1]
        has_older = True
    else:
        if before is not None:
            page = page.filter(id__lt=before)
        rows = list(page.order_by("-id")[: per_page + 1])
        has_older = len(rows) > per_page
        rows = rows[:per_page]
        has_newer = before is not None

    cap = settings.DIALOGUE_COUNT_CAP
    total = dialogues.order_by()[: cap + 1].count()
    context = {
        "dialogues": rows,
        "filters": filters,
        "query": _query_string(filters),
        "total": min(total, cap),
        "total_capped": total > cap,
        "status_counts": [
            (value, label, status_counts.get(value, 0)) for value, label in Dialogue.Status.choices
        ],
        "all_count": sum(status_counts.values()),
        "newer_cursor": rows[0].pk if rows and has_newer else None,
        "older_cursor": rows[-1].pk if rows and has_older else None,
        "scenarios": Scenario.objects.order_by("-is_official", "name"),
        "statuses": Dialogue.Status.choices,
        "origins": Dialogue.Origin.choices,
    }
    template = "curation/dialogue_list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(request, template, context)


def _query_string(filters: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in filters.items() if v})


@require_GET
@login_required
def dialogue_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    turns = Prefetch("turns", queryset=Turn.objects.select_related("strategy").order_by("index"))
    dialogue = get_object_or_404(
        _dialogues_for_user(request).select_related("scenario").prefetch_related(turns), pk=pk
    )
    events = dialogue.events.select_related("actor")
    if not is_lead(request.user):
        # Reviews are blind: only leads see who decided what.
        events = events.exclude(action__in=["reviewed", "claimed", "skipped"])
    history = [
        {
            "event": event,
            "diff": word_diff(event.before.get("text", ""), event.after.get("text", ""))
            if event.action == "edited" and event.before and event.after
            else None,
        }
        for event in events
    ]
    return render(
        request, "curation/dialogue_detail.html", {"dialogue": dialogue, "history": history}
    )


# ---- reviewing ---------------------------------------------------------------------------------

REJECT_REASONS = [
    ("unrealistic", "Unrealistic"),
    ("off_scenario", "Off-scenario"),
    ("poor_support", "Poor support"),
    ("repetitive", "Repetitive"),
    ("unsafe", "Unsafe reply"),
    ("other", "Other"),
]


def _get_review_for_user(request: HttpRequest, pk: int) -> tuple[Dialogue, Review | None]:
    """The dialogue, if this user holds it or reviewed it (leads may open any); else 404."""
    dialogue = get_object_or_404(Dialogue.objects.select_related("scenario"), pk=pk)
    user = cast(User, request.user)
    review = Review.objects.filter(dialogue=dialogue, annotator=user).first()
    holds = Assignment.objects.filter(
        dialogue=dialogue,
        annotator=user,
        released_at__isnull=True,
        expires_at__gt=timezone.now(),
    ).exists()
    if not (holds or review or is_lead(user)):
        raise Http404("No dialogue of yours here.")
    return dialogue, review


def _get_rw_review_for_user(request: HttpRequest, pk: int) -> tuple[Dialogue, Review]:
    """For changes: the user must hold the dialogue (or be a lead), and gets their draft."""
    dialogue, review = _get_review_for_user(request, pk)
    if review is not None and review.is_submitted:
        raise PermissionDenied("This review was already submitted.")
    reviewing.renew(dialogue, request.user)
    return dialogue, review or reviewing.draft_for(dialogue, request.user)


def _review_context(
    request: HttpRequest, dialogue: Dialogue, review: Review | None
) -> dict[str, Any]:
    labels = {}
    if review is not None:
        labels = dict(review.labels.values_list("turn_id", "strategy_id"))
    strategies = list(Strategy.objects.filter(taxonomy="extes").order_by("-extes_share", "name"))
    turns = list(dialogue.turns.select_related("strategy").order_by("index"))
    by_id = {s.pk: s for s in strategies}
    rows = []
    for turn in turns:
        chosen = labels.get(turn.pk, turn.strategy_id if turn.role == Turn.Role.SUPPORTER else None)
        rows.append(
            {
                "turn": turn,
                "chosen": by_id.get(chosen) if chosen else None,
                "confirmed": turn.pk in labels,
            }
        )
    return {
        "dialogue": dialogue,
        "review": review,
        "rows": rows,
        "strategies": strategies,
        "flags": Review.Flag.choices,
        "reject_reasons": REJECT_REASONS,
        "submitted": bool(review and review.is_submitted),
    }


@require_GET
@login_required
def review_home(request: HttpRequest) -> HttpResponse:
    user = cast(User, request.user)
    held = reviewing.held_by(user)
    context = {
        "held": held,
        "available": reviewing.available_for(user).count(),
        "rankable": ranking.rankable_for(user).count(),
        "done_today": Review.objects.filter(
            annotator=user, submitted_at__date=timezone.now().date()
        ).count(),
        "recent": Review.objects.filter(annotator=user, submitted_at__isnull=False).select_related(
            "dialogue__scenario"
        )[:10],
    }
    return render(request, "curation/review_home.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def review_next(request: HttpRequest) -> HttpResponse:
    """The next dialogue to review: a POST from "Start reviewing", or a GET after a submit
    (so reloading that page is harmless)."""
    dialogue = reviewing.claim_next(request.user)
    if dialogue is None:
        messages.info(request, "Nothing left to review for you right now. Thank you!")
        return redirect("curation-review-home")
    return redirect("curation-review", dialogue.pk)


@require_GET
@login_required
def review(request: HttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    return render(request, "curation/review.html", _review_context(request, dialogue, existing))


@require_POST
@login_required
def review_label(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, draft = _get_rw_review_for_user(request, pk)
    turn = get_object_or_404(
        Turn, pk=_int_or_none(request.POST.get("turn")), dialogue=dialogue, role=Turn.Role.SUPPORTER
    )
    strategy_id = _int_or_none(request.POST.get("strategy"))
    strategy = (
        get_object_or_404(Strategy, pk=strategy_id, taxonomy="extes") if strategy_id else None
    )
    reviewing.set_label(draft, turn, strategy)
    if request.htmx:
        context = _review_context(request, dialogue, draft)
        row = next(r for r in context["rows"] if r["turn"].pk == turn.pk)
        return render(request, "curation/review.html#turn", {**context, "row": row})
    return redirect("curation-review", dialogue.pk)


@require_POST
@login_required
def review_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, draft = _get_rw_review_for_user(request, pk)
    turn = get_object_or_404(Turn, pk=_int_or_none(request.POST.get("turn")), dialogue=dialogue)
    text = request.POST.get("text", "").strip()
    version = _int_or_none(request.POST.get("version")) or 0
    if not text:
        return HttpResponse("A turn cannot be empty.", status=400)
    try:
        dialogue = reviewing.edit_turn(
            turn, text, version, request.user, draft, request.POST.get("reason", "")[:300]
        )
    except reviewing.StaleVersion as stale:
        turn.refresh_from_db()
        context = {
            **_review_context(request, dialogue, draft),
            "turn": turn,
            "mine": text,
            "stale": stale,
        }
        # Without htmx the conflict comes as a whole page; either way the user's text is kept.
        template = (
            "curation/review.html#conflict" if request.htmx else "curation/review_conflict.html"
        )
        return render(request, template, context, status=409)
    if not request.htmx:
        return redirect("curation-review", dialogue.pk)
    context = _review_context(request, dialogue, draft)
    row = next(r for r in context["rows"] if r["turn"].pk == turn.pk)
    response = render(request, "curation/review.html#turn", {**context, "row": row})
    response["HX-Trigger"] = json.dumps({"dialogueVersion": dialogue.version})
    return response


@require_POST
@login_required
def review_draft(request: HttpRequest, pk: int) -> HttpResponse:
    """Autosave of the notes while typing."""
    _, draft = _get_rw_review_for_user(request, pk)
    Review.objects.filter(pk=draft.pk).update(notes=request.POST.get("notes", "")[:5000])
    return HttpResponse(status=204)


@require_POST
@login_required
def review_submit(request: HttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    if existing is not None and existing.is_submitted:
        # A double click, a retried request or the back button: the review exists already.
        return redirect("curation-review-next-get")
    decision = request.POST.get("decision", "")
    reasons = [r for r in request.POST.getlist("reasons") if r in dict(REJECT_REASONS)]
    flags = [f for f in request.POST.getlist("flags") if f in Review.Flag.values]
    if decision not in Review.Decision.values:
        messages.error(request, "Choose accept or reject.")
        return redirect("curation-review", dialogue.pk)
    if decision == Review.Decision.REJECT and not reasons:
        messages.error(request, "Say why you reject it: pick at least one reason.")
        return redirect("curation-review", dialogue.pk)
    draft = existing or reviewing.draft_for(dialogue, request.user)
    reviewing.submit(draft, decision, reasons, flags, request.POST.get("notes", "")[:5000])
    return redirect("curation-review-next-get")


@require_POST
@login_required
def review_skip(request: HttpRequest, pk: int) -> HttpResponse:
    dialogue, _ = _get_review_for_user(request, pk)
    reviewing.skip(dialogue, request.user)
    messages.info(request, f"Skipped dialogue #{dialogue.pk}. It will not be shown to you again.")
    return redirect("curation-review-next-get")


# ---- ranking -----------------------------------------------------------------------------------


def _get_rank_turn_for_user(request: HttpRequest, pk: int) -> Turn:
    """A masked turn this user may rank now: it has candidates and they have not ranked it."""
    user = cast(User, request.user)
    turn = (
        Turn.objects.select_related("dialogue__scenario", "strategy")
        .filter(pk=pk, role=Turn.Role.SUPPORTER, candidates__isnull=False)
        .first()
    )
    if turn is None or (
        turn.dialogue.safety_status in (SafetyStatus.FLAGGED, SafetyStatus.EXCLUDED)
        and not is_lead(user)
    ):
        raise Http404("Nothing to rank here.")
    return turn


@require_GET
@login_required
def rank_next(request: HttpRequest) -> HttpResponse:
    turn = ranking.rankable_for(request.user).first()
    if turn is None:
        messages.info(request, "No replies are waiting to be ranked by you.")
        return redirect("curation-review-home")
    return redirect("curation-rank", turn.pk)


@require_http_methods(["GET", "POST"])
@login_required
def rank(request: HttpRequest, pk: int) -> HttpResponse:
    turn = _get_rank_turn_for_user(request, pk)
    user = cast(User, request.user)
    shown = ranking.items(turn, user)
    done = Ranking.objects.filter(turn=turn, annotator=user).first()
    error = ""
    if request.method == "POST" and done is None:
        try:
            order, unacceptable = ranking.parse(request.POST, shown)
        except ValueError as exc:
            error = str(exc)
        else:
            ranking.save(
                turn,
                user,
                order,
                unacceptable,
                [i["key"] for i in shown],
                request.POST.get("edited_best", "")[:2000],
            )
            return redirect("curation-rank-next")
    elif request.method == "POST":
        return redirect("curation-rank-next")  # submitted before: a double click or a retry
    before, after = ranking.context_turns(turn)
    for item in shown:  # after an error, what was typed stays in the form
        item["posted"] = request.POST.get(f"rank-{item['key']}", "") if error else ""
    return render(
        request,
        "curation/rank.html",
        {
            "turn": turn,
            "before": before,
            "after": after,
            "items": shown,
            "done": done,
            "error": error,
        },
    )
