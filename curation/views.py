from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from curation.models import Dialogue, Scenario, Turn


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


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
    dialogues = Dialogue.objects.all()
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
        Dialogue.objects.select_related("scenario").prefetch_related(turns), pk=pk
    )
    return render(request, "curation/dialogue_detail.html", {"dialogue": dialogue})
