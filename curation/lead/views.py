"""Pages for project leads: dashboard, agreement, adjudication queue, safety queue (and CSVs)."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from config.celery import QUEUE_UNREACHABLE
from curation import screening, settlement
from curation.lead import adjudication, agreement, charts, insights, safety
from curation.models import (
    Adjudication,
    Candidate,
    Dialogue,
    Ranking,
    Review,
    SafetyStatus,
    Strategy,
    Turn,
)
from curation.review import rounds
from curation.review.reviewing import StaleVersion
from curation.roles import lead_required

# ---- dashboard ---------------------------------------------------------------------------------

STATUS_COLOURS = {
    "pending": "#9ca3af",
    "in_review": "#60a5fa",
    "needs_adjudication": "#d97706",
    "accepted": "#2f6f5e",
    "rejected": "#b91c1c",
}


@lead_required
def dashboard(request: HttpRequest) -> HttpResponse:
    tables = insights.dashboard_tables()
    scenes = tables["scenarios"]
    statuses = insights.STATUSES
    shown = [s for s in statuses if any(r[s] for r in scenes.rows)] or statuses
    chart_scenes = charts.stacked(
        [(r["scenario"], [r[s] for s in shown]) for r in scenes.rows],
        [Dialogue.Status(s).label for s in shown],
        "Dialogues per scenario, by status",
        [STATUS_COLOURS[s] for s in shown],
    )
    people = tables["annotators"].rows
    chart_people = charts.bars(
        [(r["annotator"], r["reviews_per_active_hour"]) for r in people],
        "Reviews per active hour",
    )
    rounds = tables["acceptance_by_round"].rows
    chart_rounds = charts.bars(
        [(f"round {r['round'] or '?'}", r["acceptance_rate"]) for r in rounds],
        "Acceptance per generation round",
        percent=True,
    )
    chart_strategies = charts.paired(
        [(r["strategy"], r["share"], r["extes_share"]) for r in tables["strategies"].rows],
        ("accepted data", "ExTES"),
        "Strategy shares",
    )
    return render(
        request,
        "curation/lead/dashboard.html",
        {
            "tables": tables,
            "chart_scenes": chart_scenes,
            "chart_people": chart_people,
            "chart_rounds": chart_rounds,
            "chart_strategies": chart_strategies,
            "empty": not scenes.rows,
        },
    )


def _csv(body: str, name: str) -> HttpResponse:
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response


@lead_required
def dashboard_csv(request: HttpRequest, name: str) -> HttpResponse:
    tables = insights.dashboard_tables()
    if name not in tables:
        raise Http404("No such table.")
    return _csv(tables[name].csv(), name)


# ---- agreement ---------------------------------------------------------------------------------


def _heatmap(table: agreement.Confusion, title: str) -> str:
    return charts.heatmap(table.labels, table.matrix, title, table.rows, table.columns)


@lead_required
def agreement_page(request: HttpRequest) -> HttpResponse:
    figures = insights.agreement_figures()
    report = figures.report
    context: dict[str, Any] = {"figures": figures, "report": report}
    if report is not None:
        summary = report.summary_table()
        context |= {
            "summary": summary,
            "few": [row for row in summary.rows if row["items"] and not row["reliable"]],
            "humans": report.humans_count(),
            "scale": agreement.KAPPA_SCALE,
            "min_items": agreement.MIN_ITEMS,
            "categories_few": agreement.few_items(report.fleiss.n),
            "categories": report.category_table(),
            "pairs": report.pair_table(),
            "heatmap_humans": _heatmap(report.humans, "Annotator vs annotator")
            if report.humans.total
            else "",
            "heatmap_teacher": _heatmap(report.teacher_vs_humans, "Teacher (rows) vs annotators")
            if report.teacher_vs_humans.total
            else "",
        }
    return render(request, "curation/lead/agreement.html", context)


@lead_required
def agreement_state(request: HttpRequest) -> HttpResponse:
    """The page's poll while its figures are being computed: the page reloads once they match
    the data (HX-Refresh), else the notice stays as it is."""
    if insights.agreement_up_to_date():
        response = HttpResponse("")
        response["HX-Refresh"] = "true"
        return response
    return HttpResponse(status=204)  # htmx swaps nothing on 204


@lead_required
def agreement_csv(request: HttpRequest, name: str) -> HttpResponse:
    # The figures the page shows (the last ones, on a large studio while new ones are computed).
    report = insights.agreement_figures().report
    tables = {
        "summary": lambda r: r.summary_table().csv(),
        "per_strategy": lambda r: r.category_table().csv(),
        "pairs": lambda r: r.pair_table().csv(),
        "confusion_humans": lambda r: agreement.confusion_csv(r.humans),
        "confusion_teacher": lambda r: agreement.confusion_csv(r.teacher_vs_humans),
    }
    if name not in tables:
        raise Http404("No such table.")
    if report is None:
        return HttpResponse(
            "The agreement figures are being computed for the first time; download them once "
            "the agreement page shows them.",
            status=503,
            content_type="text/plain; charset=utf-8",
            headers={"Retry-After": "10"},
        )
    return _csv(tables[name](report), name)


# ---- adjudication ------------------------------------------------------------------------------


@lead_required
def adjudication_list(request: HttpRequest) -> HttpResponse:
    open_ = (
        Adjudication.objects.filter(resolved_at__isnull=True)
        .select_related("dialogue__scenario")
        .order_by("opened_at", "id")
    )
    done = (
        Adjudication.objects.filter(resolved_at__isnull=False)
        .select_related("dialogue__scenario", "resolved_by")
        .order_by("-resolved_at")[:20]
    )
    return render(request, "curation/lead/adjudication_list.html", {"open": open_, "done": done})


def _round_replies(turn: Turn, number: int) -> list[dict[str, Any]]:
    """A round's replies for a lead, named: the original, the teacher's candidates by number,
    the student's reply (leads see who wrote which; annotators never do)."""
    keys = rounds.keys(turn, number)
    texts = rounds.texts(turn, keys)
    students = set(
        Candidate.objects.filter(turn=turn, author=Candidate.Author.STUDENT).values_list(
            "pk", flat=True
        )
    )
    replies, n = [], 0
    for key in keys:
        if key.startswith("t"):
            label = "original"
        elif int(key[1:]) in students:
            label = "student's reply"
        else:
            n += 1
            label = f"candidate {n}"
        replies.append({"key": key, "text": texts.get(key, ""), "label": label})
    return replies


def _page(adj: Adjudication, posted: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the adjudication page shows: turns with each review's vote and proposed text
    side by side, and the final state the lead starts from (`adjudication.starting_point`)."""
    dialogue = adj.dialogue
    reviews = list(
        dialogue.reviews.filter(submitted_at__isnull=False)
        .select_related("annotator")
        .order_by("id")
    )
    result = settlement.outcome(dialogue)
    outcomes = {t.index: t for t in result.turns}
    labels, texts = adjudication.starting_point(dialogue, result)
    names = [r.annotator.get_username() for r in reviews]
    conflict_turns = {int(i) for i in adj.details.get("rankings", [])}
    rows = []
    for turn in dialogue.turns.select_related("strategy").order_by("index"):
        seen = outcomes[turn.index]
        row: dict[str, Any] = {
            "turn": turn,
            "votes": [None] * len(reviews),  # one cell per review; seekers' turns have no label
            "differs": seen.label_conflict,
            "final": labels.get(turn.index) or "",
            "text": texts.get(turn.index, turn.text),
            "proposals": [
                {"annotator": name, "text": seen.proposals[name]}
                for name in names
                if name in seen.proposals
            ],
            "text_differs": seen.text_conflict,
        }
        if turn.role == Turn.Role.SUPPORTER:
            row["votes"] = [
                {"label": seen.votes.get(name) or "", "explicit": name in seen.votes}
                for name in names
            ]
        if turn.index in conflict_turns:
            number = rounds.current(turn)
            replies = _round_replies(turn, number)
            names_of = {r["key"]: r["label"] for r in replies}
            row["replies"] = replies
            row["rankings"] = [
                {
                    "annotator": r.annotator.get_username(),
                    "order": [[names_of.get(k, k) for k in group] for group in r.order],
                    "unacceptable": [names_of.get(k, k) for k in r.unacceptable],
                }
                for r in Ranking.objects.filter(turn=turn, round=number, adjudicated=False)
                .select_related("annotator")
                .order_by("id")
            ]
        if posted:
            row["final"] = posted.get(f"label-{turn.index}", row["final"])
            row["text"] = posted.get(f"text-{turn.index}", row["text"])
            row["best"] = posted.get(f"best-{turn.index}", "")
        rows.append(row)
    return {
        "adj": adj,
        "dialogue": dialogue,
        "reviews": reviews,
        "rows": rows,
        "strategies": Strategy.objects.filter(taxonomy="extes").order_by("name"),
        "posted": posted or {},
        "reasons": [Adjudication.Reason(r).label for r in adj.reasons],
        "reopened": adj.details.get("reopened"),
    }


@lead_required
def adjudication_page(request: HttpRequest, pk: int) -> HttpResponse:
    adj = get_object_or_404(Adjudication.objects.select_related("dialogue__scenario"), pk=pk)
    if request.method != "POST":
        return render(request, "curation/lead/adjudication.html", _page(adj))
    if not adj.is_open:
        messages.info(request, f"Dialogue #{adj.dialogue_id} was settled already.")
        return redirect("curation-adjudication-list")
    form = request.POST.dict()
    try:
        version = int(form.get("version", ""))
    except ValueError:
        return _refused(request, adj, "The form lost the dialogue's version: reload the page.")
    _, texts = adjudication.starting_point(adj.dialogue)
    chosen = adjudication.Decision(
        decision=form.get("decision", ""),
        labels={
            int(m.group(1)): value
            for key, value in form.items()
            if (m := re.fullmatch(r"label-(\d+)", key))
        },
        texts={
            int(m.group(1)): value
            for key, value in form.items()
            if (m := re.fullmatch(r"text-(\d+)", key))
            and value.strip() != texts.get(int(m.group(1)))
        },
        best={
            int(m.group(1)): value
            for key, value in form.items()
            if (m := re.fullmatch(r"best-(\d+)", key)) and value
        },
        note=form.get("note", ""),
    )
    try:
        adjudication.resolve(adj, request.user, version, chosen)
    except StaleVersion as stale:
        context = _page(adj, form)
        context.update(stale=stale, error="Someone changed this dialogue since you opened it.")
        context["dialogue"].refresh_from_db()
        return render(request, "curation/lead/adjudication.html", context, status=409)
    except ValueError as problem:
        return _refused(request, adj, str(problem))
    verdict = "accepted" if chosen.decision == Review.Decision.ACCEPT else "rejected"
    messages.success(request, f"Dialogue #{adj.dialogue_id} is {verdict}; your note is kept.")
    following = (
        Adjudication.objects.filter(resolved_at__isnull=True).order_by("opened_at", "id").first()
    )
    if following is not None:
        return redirect("curation-adjudication", following.pk)
    return redirect("curation-adjudication-list")


def _refused(request: HttpRequest, adj: Adjudication, error: str) -> HttpResponse:
    context = _page(adj, request.POST.dict())
    context["error"] = error
    return render(request, "curation/lead/adjudication.html", context, status=400)


# ---- safety ------------------------------------------------------------------------------------


@lead_required
def safety_queue(request: HttpRequest) -> HttpResponse:
    decided = (
        Dialogue.objects.filter(safety_status__in=[SafetyStatus.CLEARED, SafetyStatus.EXCLUDED])
        .select_related("scenario")
        .order_by("-updated_at")[:20]
    )
    return render(
        request,
        "curation/lead/safety.html",
        {
            "waiting": safety.queue(),
            "decided": decided,
            "screening": screening.waiting_count(),
            "screen_mode": screening.mode(),
        },
    )


@require_POST
@lead_required
def safety_screen_now(request: HttpRequest) -> HttpResponse:
    """Ask a worker to screen every dialogue still waiting for the classifier."""
    waiting = screening.waiting_count()
    if not waiting:
        messages.info(request, "No dialogue is waiting for the safety screen.")
    elif screening.send():
        messages.success(
            request,
            f"A worker was asked to screen the {waiting} waiting dialogues: reload in a moment.",
        )
    else:
        messages.error(
            request,
            f"{QUEUE_UNREACHABLE} The {waiting} dialogues keep waiting (out of review); start "
            "the workers, or run `python manage.py screen_safety` on the server.",
        )
    return redirect("curation-safety")


@require_POST
@lead_required
def safety_decide(request: HttpRequest, pk: int) -> HttpResponse:
    dialogue = get_object_or_404(Dialogue, pk=pk)
    action = request.POST.get("action", "")
    note = request.POST.get("note", "")
    try:
        if action == "clear":
            safety.clear(dialogue, request.user, note)
        elif action == "exclude":
            safety.exclude(dialogue, request.user, note)
        else:
            raise ValueError("Choose clear or exclude.")
    except ValueError as problem:
        if request.htmx:  # type: ignore[attr-defined]
            return render(
                request,
                "curation/lead/safety.html#row",
                {"d": dialogue, "error": str(problem), "note": note},
            )  # 200: htmx swaps it, and the row says what went wrong
        messages.error(request, f"Dialogue #{pk}: {problem}")
        return redirect("curation-safety")
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "curation/lead/safety.html#row", {"d": dialogue})
    messages.success(request, f"Dialogue #{pk} is {dialogue.get_safety_status_display().lower()}.")
    return redirect("curation-safety")
