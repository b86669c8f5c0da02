"""The review pages (the queue, a review with its labels, proposed edits, notes, submit and
skip) and the rank pages. Every write goes through `reviewing`, which checks the hold."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from curation.models import (
    SAFETY_HELD,
    Assignment,
    Dialogue,
    RankHold,
    Ranking,
    Review,
    Strategy,
    Turn,
    TurnEdit,
)
from curation.review import ranking, reviewing, rounds
from curation.roles import HtmxHttpRequest, int_or_none, is_lead

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
    if review is not None:  # what its writes check, without fetching them again
        review.dialogue, review.annotator = dialogue, user
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
    hold = Assignment.objects.filter(dialogue=dialogue, annotator=user, skipped=False).first()
    held = hold is not None  # at some point
    holds = hold is not None and hold.released_at is None and hold.expires_at > timezone.now()
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


def _turn_response(
    request: HtmxHttpRequest, dialogue: Dialogue, review: Review, turn: Turn
) -> HttpResponse:
    context = _review_context(request, dialogue, review)
    row = next(r for r in context["rows"] if r["turn"].pk == turn.pk)
    return render(request, "curation/review.html#turn", {**context, "row": row})


@require_POST
@login_required
def review_label(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    turn = get_object_or_404(
        Turn, pk=int_or_none(request.POST.get("turn")), dialogue=dialogue, role=Turn.Role.SUPPORTER
    )
    strategy_id = int_or_none(request.POST.get("strategy"))
    strategy = (
        get_object_or_404(Strategy, pk=strategy_id, taxonomy="extes") if strategy_id else None
    )
    try:
        draft = existing or reviewing.draft_for(dialogue, request.user)
        reviewing.set_label(draft, turn, strategy)  # checks the hold
    except reviewing.NotAllowed as refused:
        return _refused(request, dialogue, refused)
    if request.htmx:
        return _turn_response(request, dialogue, draft, turn)
    return redirect("curation-review", dialogue.pk)


@require_POST
@login_required
def review_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    dialogue, existing = _get_review_for_user(request, pk)
    turn = get_object_or_404(Turn, pk=int_or_none(request.POST.get("turn")), dialogue=dialogue)
    text = request.POST.get("text", "").strip()
    version = int_or_none(request.POST.get("version")) or 0
    if not text:
        return HttpResponse("A turn cannot be empty.", status=400)
    try:
        draft = existing or reviewing.draft_for(dialogue, request.user)
        reviewing.propose_edit(
            draft,
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
    return _turn_response(request, dialogue, draft, turn)


@require_POST
@login_required
def review_draft(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Autosave of the notes while typing."""
    dialogue, existing = _get_review_for_user(request, pk)
    try:
        draft = existing or reviewing.draft_for(dialogue, request.user)
        reviewing.save_notes(draft, request.POST.get("notes", "")[:5000])
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
        draft = existing or reviewing.draft_for(dialogue, request.user)
        reviewing.submit(draft, decision, reasons, flags, notes)
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


# ---- ranking -----------------------------------------------------------------------------------


def _get_rank_turn_for_user(request: HttpRequest, pk: int) -> Turn:
    """A masked turn this user holds for ranking, or ranked already (leads may open any)."""
    user = cast(User, request.user)
    turn = (
        Turn.objects.select_related("dialogue__scenario", "strategy")
        .filter(rounds.rankable(), pk=pk, role=Turn.Role.SUPPORTER)
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
    number = rounds.current(turn)
    shown = ranking.items(turn, user, number)
    done = Ranking.objects.filter(turn=turn, annotator=user, round=number).first()
    error = refused = ""
    status = 200
    posted_round = int_or_none(request.POST.get("round", "")) if request.method == "POST" else None
    if posted_round is not None and posted_round != number and done is None:
        refused, status = ranking.CHANGED, 409  # a form of an earlier round of this gap
    elif request.method == "POST" and done is None:
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
    holds = RankHold.objects.live().filter(turn=turn, annotator=user, round=number).exists()
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
            "round": number,
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
