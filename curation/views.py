from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from curation.diffs import word_diff
from curation.models import (
    Assignment,
    Dialogue,
    DialogueQuerySet,
    Event,
    Review,
    Scenario,
    Turn,
)
from curation.review import reviewing
from curation.roles import HtmxHttpRequest, int_or_none, is_lead


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Annotators land on what waits for them; leads on the dialogues."""
    if is_lead(request.user):
        return redirect("curation-dialogue-list")
    return redirect("curation-review-home")


def _dialogues_for_user(request: HttpRequest) -> DialogueQuerySet:
    """Leads see every dialogue; an annotator only those they hold or reviewed (reviews are blind,
    and the queue, not browsing, decides what they read next)."""
    user = cast(User, request.user)
    if is_lead(user):
        return Dialogue.objects.all()
    mine = Q(pk__in=Review.objects.filter(annotator=user).values("dialogue_id")) | Q(
        pk__in=Assignment.objects.live().filter(annotator=user).values("dialogue_id")
    )
    return Dialogue.objects.filter(mine)


# What an annotator is shown of a dialogue's status: that the reviews disagreed is not theirs to
# know (reviews are blind until the dialogue settles).
_BLIND_STATUS: dict[str, str] = {Dialogue.Status.NEEDS_ADJUDICATION: Dialogue.Status.IN_REVIEW}


def _shown_status(user: Any, status: str) -> str:
    return status if is_lead(user) else _BLIND_STATUS.get(status, status)


def _filtered(request: HttpRequest) -> tuple[QuerySet[Dialogue], dict[str, Any]]:
    params = request.GET
    scenario = int_or_none(params.get("scenario"))
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
    lead = is_lead(request.user)
    if not lead:
        blind: dict[str, int] = {}
        for status, n in status_counts.items():
            shown = _shown_status(request.user, status)
            blind[shown] = blind.get(shown, 0) + n
        status_counts = blind
    if filters["status"]:
        # What an annotator sees under a status: the statuses shown to them as it.
        wanted = [
            status
            for status in Dialogue.Status.values
            if _shown_status(request.user, status) == filters["status"]
        ]
        dialogues = dialogues.filter(status__in=wanted)

    # Keyset pagination on id (newest first): `before` walks to older rows, `after` back to newer.
    per_page = settings.DIALOGUES_PER_PAGE
    before = int_or_none(request.GET.get("before"))
    after = int_or_none(request.GET.get("after"))
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
    for row in rows:  # shown, never saved
        row.status = _shown_status(request.user, row.status)

    # The status counts hold the total already: counting the rows again would run the filters
    # (a text search's above all) a second time.
    cap = settings.DIALOGUE_COUNT_CAP
    total = (
        status_counts.get(filters["status"], 0)
        if filters["status"]
        else sum(status_counts.values())
    )
    context = {
        "dialogues": rows,
        "filters": filters,
        "query": _query_string(filters),
        "total": min(total, cap),
        "total_capped": total > cap,
        "status_counts": [
            (value, label, status_counts.get(value, 0))
            for value, label in Dialogue.Status.choices
            if lead or value not in _BLIND_STATUS
        ],
        "all_count": sum(status_counts.values()),
        "newer_cursor": rows[0].pk if rows and has_newer else None,
        "older_cursor": rows[-1].pk if rows and has_older else None,
        "scenarios": Scenario.objects.order_by("-is_official", "name"),
        "statuses": [c for c in Dialogue.Status.choices if lead or c[0] not in _BLIND_STATUS],
        "lead": lead,
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
    turns = Prefetch(
        "turns",
        queryset=Turn.objects.select_related("strategy", "final_strategy").order_by("index"),
    )
    dialogue = get_object_or_404(
        _dialogues_for_user(request).select_related("scenario").prefetch_related(turns), pk=pk
    )
    lead = is_lead(request.user)
    events = dialogue.events.select_related("actor")
    if not lead:
        # Reviews are blind: an annotator sees only their own actions.
        events = events.filter(actor=cast(User, request.user))
        dialogue.status = _shown_status(request.user, dialogue.status)  # shown, never saved
    history = [
        {
            "event": event,
            "diff": word_diff(event.before.get("text", ""), event.after.get("text", ""))
            if event.action == Event.Action.PROPOSED_EDIT and event.before and event.after
            else None,
        }
        for event in events
    ]
    return render(
        request,
        "curation/dialogue_detail.html",
        {"dialogue": dialogue, "history": history, "lead": lead},
    )


@require_POST
@login_required
def dialogue_reopen(request: HttpRequest, pk: int) -> HttpResponse:
    """A lead sends a settled dialogue back to adjudication, with a reason."""
    if not is_lead(request.user):
        raise PermissionDenied("Only leads can re-open a settled dialogue.")
    dialogue = get_object_or_404(Dialogue, pk=pk)
    try:
        opened = dialogue.reopen(request.user, request.POST.get("reason", "")[:1000])
    except ValueError as problem:
        messages.error(request, f"Dialogue #{pk}: {problem}")
        return redirect("curation-dialogue-detail", pk)
    except reviewing.StaleVersion:
        messages.error(request, f"Dialogue #{pk} changed meanwhile: look again, then re-open it.")
        return redirect("curation-dialogue-detail", pk)
    messages.success(request, f"Dialogue #{pk} is back in adjudication; your reason is kept.")
    return redirect("curation-adjudication", opened.pk)
