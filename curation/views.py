from __future__ import annotations

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
    SAFETY_HELD,
    Assignment,
    Dialogue,
    DialogueQuerySet,
    Event,
    RankHold,
    Ranking,
    Review,
    Scenario,
    Strategy,
    Turn,
    TurnEdit,
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
    mine = Q(pk__in=Review.objects.filter(annotator=user).values("dialogue_id")) | Q(
        pk__in=Assignment.objects.live().filter(annotator=user).values("dialogue_id")
    )
    return Dialogue.objects.filter(mine)


# What an annotator is shown of a dialogue's status: that the reviews disagreed is not theirs to
# know (reviews are blind until the dialogue settles).
_BLIND_STATUS = {Dialogue.Status.NEEDS_ADJUDICATION: Dialogue.Status.IN_REVIEW}


def _shown_status(user: Any, status: str) -> str:
    return status if is_lead(user) else _BLIND_STATUS.get(status, status)  # type: ignore[call-overload]


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
    lead = is_lead(request.user)
    if not lead:
        blind: dict[str, int] = {}
        for status, n in status_counts.items():
            shown = _shown_status(request.user, status)
            blind[shown] = blind.get(shown, 0) + n
        status_counts = blind
    if filters["status"]:
        hidden = [s for s, shown in _BLIND_STATUS.items() if shown == filters["status"]]
        if lead or filters["status"] not in _BLIND_STATUS:
            dialogues = dialogues.filter(status__in=[filters["status"], *([] if lead else hidden)])
        else:
            dialogues = dialogues.none()

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
    for row in rows:  # shown, never saved
        row.status = _shown_status(request.user, row.status)

    cap = settings.DIALOGUE_COUNT_CAP
    total = dialogues.order_by()[: cap + 1].count()
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
    held = Assignment.objects.filter(dialogue=dialogue, annotator=user, skipped=False).exists()
    if not (held or review or is_lead(user)):
        raise Http404("No dialogue of yours here.")
    return dialogue, review


def _refused(
    request: HtmxHttpRequest, dialogue: Dialogue, refused: reviewing.NotAllowed
) -> HttpResponse:
    """A write the user may not make now: nothing changed, and the page says why."""
    context = {"dialogue": dialogue, "message": refused.message, "status": refused.status}
    if request.htmx:
        response = render(request, "curation/review.html#refused", context, status=refused.status)
        response["HX-Retarget"] = "#review-alert"
        response["HX-Reswap"] = "innerHTML"
        return response
    return render(request, "curation/review_refused.html", context, status=refused.status)


def _review_context(
    request: HttpRequest, dialogue: Dialogue, review: Review | None
) -> dict[str, Any]:
    """The review page as this annotator sees it: the texts as written with their own proposals,
    their own labels (else the teacher's suggestion), nothing of anyone else's review."""
    labels: dict[int, int | None] = {}
    proposals: dict[int, str] = {}
    if review is not None:
        labels = dict(review.labels.values_list("turn_id", "strategy_id"))
        proposals = dict(TurnEdit.objects.filter(review=review).values_list("turn_id", "after"))
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
                "text": proposals.get(turn.pk, turn.text),
                "proposed": turn.pk in proposals,
            }
        )
    user = cast(User, request.user)
    holds = Assignment.objects.live().filter(dialogue=dialogue, annotator=user).exists()
    held = Assignment.objects.filter(dialogue=dialogue, annotator=user, skipped=False).exists()
    submitted = bool(review and review.is_submitted)
    return {
        "dialogue": dialogue,
        "review": review,
        "rows": rows,
        "strategies": strategies,
        "flags": Review.Flag.choices,
        "reject_reasons": REJECT_REASONS,
        "submitted": submitted,
        # Writable only with a live hold on a dialogue still in review (leads included).
        "writable": holds and not submitted and dialogue.status in Dialogue.OPEN,
        "hold_lost": held and not holds and not submitted and dialogue.status in Dialogue.OPEN,
        "renew_every": max(60, settings.REVIEW_LEASE_MINUTES * 60 // 3),
    }


@require_GET
@login_required
def review_home(request: HttpRequest) -> HttpResponse:
    user = cast(User, request.user)
    held = reviewing.held_by(user)
    context = {
        "held": held,
        "available": Dialogue.objects.reviewable_by(user).count(),
        "rankable": ranking.rankable_for(user).count(),
        "done_today": Review.objects.filter(
            annotator=user, submitted_at__date=timezone.now().date()
        ).count(),
        "recent": Review.objects.filter(annotator=user, submitted_at__isnull=False).select_related(
            "dialogue__scenario"
        )[:10],
    }
    return render(request, "curation/review_home.html", context)


@require_POST
@login_required
def review_next(request: HttpRequest) -> HttpResponse:
    """Claim the next dialogue to review ("Start reviewing"): a POST, as it changes the queue."""
    return _to_next(request)


def _to_next(request: HttpRequest) -> HttpResponse:
    dialogue = reviewing.claim_next(request.user)
    if dialogue is None:
        messages.info(request, "Nothing left to review for you right now. Thank you!")
        return redirect("curation-review-home")
    return redirect("curation-review", dialogue.pk)


@require_GET
@login_required
def review_continue(request: HttpRequest) -> HttpResponse:
    """Back to the dialogue this annotator holds, if any, else the review home. Claims nothing."""
    held = reviewing.held_by(request.user)
    if held is not None:
        return redirect("curation-review", held.pk)
    return redirect("curation-review-home")


@require_GET
@login_required
def review(request: HttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    return render(request, "curation/review.html", _review_context(request, dialogue, existing))


def _turn_response(request: HtmxHttpRequest, dialogue: Dialogue, turn: Turn) -> HttpResponse:
    review = Review.objects.filter(dialogue=dialogue, annotator=cast(User, request.user)).first()
    context = _review_context(request, dialogue, review)
    row = next(r for r in context["rows"] if r["turn"].pk == turn.pk)
    return render(request, "curation/review.html#turn", {**context, "row": row})


@require_POST
@login_required
def review_label(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, _ = _get_review_for_user(request, pk)
    turn = get_object_or_404(
        Turn, pk=_int_or_none(request.POST.get("turn")), dialogue=dialogue, role=Turn.Role.SUPPORTER
    )
    strategy_id = _int_or_none(request.POST.get("strategy"))
    strategy = (
        get_object_or_404(Strategy, pk=strategy_id, taxonomy="extes") if strategy_id else None
    )
    try:
        reviewing.set_label(reviewing.draft_for(dialogue, request.user), turn, strategy)
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    if request.htmx:
        return _turn_response(request, dialogue, turn)
    return redirect("curation-review", dialogue.pk)


@require_POST
@login_required
def review_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, _ = _get_review_for_user(request, pk)
    turn = get_object_or_404(Turn, pk=_int_or_none(request.POST.get("turn")), dialogue=dialogue)
    text = request.POST.get("text", "").strip()
    version = _int_or_none(request.POST.get("version")) or 0
    if not text:
        return HttpResponse("A turn cannot be empty.", status=400)
    try:
        reviewing.propose_edit(
            reviewing.draft_for(dialogue, request.user),
            turn,
            text,
            version,
            request.POST.get("reason", "")[:300],
        )
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    except reviewing.StaleVersion as stale:
        review = Review.objects.filter(
            dialogue=dialogue, annotator=cast(User, request.user)
        ).first()
        context = {
            **_review_context(request, dialogue, review),
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
    return _turn_response(request, dialogue, turn)


@require_POST
@login_required
def review_draft(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Autosave of the notes while typing."""
    dialogue, _ = _get_review_for_user(request, pk)
    try:
        reviewing.save_notes(
            reviewing.draft_for(dialogue, request.user), request.POST.get("notes", "")[:5000]
        )
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    return HttpResponse(status=204)


@require_POST
@login_required
def review_renew(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The open review page keeps its hold alive every few minutes."""
    dialogue, _ = _get_review_for_user(request, pk)
    try:
        reviewing.renew(dialogue, request.user)
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    return HttpResponse(status=204)


@require_POST
@login_required
def review_submit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    if existing is not None and existing.is_submitted:
        # A double click, a retried request or the back button: the review exists already.
        messages.info(request, f"Your review of dialogue #{dialogue.pk} is saved.")
        return _to_next(request)
    decision = request.POST.get("decision", "")
    reasons = [r for r in request.POST.getlist("reasons") if r in dict(REJECT_REASONS)]
    flags = [f for f in request.POST.getlist("flags") if f in Review.Flag.values]
    if decision not in Review.Decision.values:
        messages.error(request, "Choose accept or reject.")
        return redirect("curation-review", dialogue.pk)
    if decision == Review.Decision.REJECT and not reasons:
        messages.error(request, "Say why you reject it: pick at least one reason.")
        return redirect("curation-review", dialogue.pk)
    notes = request.POST.get("notes", "")[:5000]
    try:
        reviewing.submit(
            reviewing.draft_for(dialogue, request.user), decision, reasons, flags, notes
        )
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    # Saved, not how the dialogue settled: reviews stay blind.
    messages.success(request, f"Your review of dialogue #{dialogue.pk} is saved.")
    return _to_next(request)


@require_POST
@login_required
def review_skip(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, _ = _get_review_for_user(request, pk)
    try:
        reviewing.skip(dialogue, request.user)
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    messages.info(request, f"Skipped dialogue #{dialogue.pk}. It will not be shown to you again.")
    return _to_next(request)


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


# ---- ranking -----------------------------------------------------------------------------------


def _get_rank_turn_for_user(request: HttpRequest, pk: int) -> Turn:
    """A masked turn this user holds for ranking, or ranked already (leads may open any)."""
    user = cast(User, request.user)
    turn = (
        Turn.objects.select_related("dialogue__scenario", "strategy")
        .filter(pk=pk, role=Turn.Role.SUPPORTER, candidates__isnull=False)
        .first()
    )
    if turn is None:
        raise Http404("Nothing to rank here.")
    if is_lead(user):
        return turn
    mine = (
        RankHold.objects.filter(turn=turn, annotator=user).exists()
        or Ranking.objects.filter(turn=turn, annotator=user).exists()
    )
    if not mine or turn.dialogue.safety_status in SAFETY_HELD:
        raise Http404("Nothing to rank here.")
    return turn


@require_http_methods(["GET", "POST"])
@login_required
def rank_next(request: HttpRequest) -> HttpResponse:
    """POST takes the next replies to rank from the queue; GET goes back to held ones."""
    if request.method == "POST":
        turn = ranking.claim_next(request.user)
    else:
        turn = ranking.held_turn(request.user)
    if turn is None:
        if request.method == "POST":
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
    error = refused = ""
    status = 200
    if request.method == "POST" and done is None:
        try:
            order, unacceptable = ranking.parse(request.POST, shown)
        except ValueError as exc:
            error = str(exc)
        else:
            try:
                ranking.save(
                    turn,
                    user,
                    order,
                    unacceptable,
                    [i["key"] for i in shown],
                    request.POST.get("edited_best", "")[:2000],
                )
            except reviewing.NotAllowed as not_allowed:
                refused, status = not_allowed.message, not_allowed.status
            else:
                messages.success(request, "Your ranking is saved.")
                return _rank_following(request)
    elif request.method == "POST":
        return _rank_following(request)  # submitted before: a double click or a retry
    before, after = ranking.context_turns(turn)
    for item in shown:  # after an error, what was typed stays in the form
        item["posted"] = request.POST.get(f"rank-{item['key']}", "") if error else ""
        item["bad"] = bool(request.POST.get(f"bad-{item['key']}")) if error else False
    holds = RankHold.objects.live().filter(turn=turn, annotator=user).exists()
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
            "refused": refused,
            "holds": holds and not refused,
            "edited_best": request.POST.get("edited_best", "") if error else "",
        },
        status=status,
    )


def _rank_following(request: HttpRequest) -> HttpResponse:
    turn = ranking.claim_next(request.user)
    if turn is None:
        messages.info(request, "No more replies are waiting to be ranked by you. Thank you!")
        return redirect("curation-review-home")
    return redirect("curation-rank", turn.pk)
