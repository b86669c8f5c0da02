"""What annotators and leads decide is theirs until it settles, cannot be overwritten, and is
what flows on: blind channels, writes that need a live hold, GETs that change nothing, ranking
through the queue, re-opening, the admin, and the final state read by every consumer."""

from __future__ import annotations

import json
import random
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from curation.models import (
    Assignment,
    Candidate,
    Dialogue,
    Event,
    RankHold,
    Ranking,
    Review,
    Strategy,
    Turn,
)
from curation.releases.build import create_release

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

SECRET_TEXT = "A-PROPOSAL-ONLY-UNO-WROTE"
SECRET_NOTE = "A-NOTE-ONLY-UNO-WROTE"


def user_in(group: str, name: str) -> User:
    user = User.objects.create_user(name, password="pw-123456")
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def uno() -> User:
    return user_in("annotator", "uno")


@pytest.fixture
def due() -> User:
    return user_in("annotator", "due")


def claim(client, user) -> Dialogue:
    client.force_login(user)
    response = client.post(reverse("curation-review-next"))
    assert response.status_code == 302
    return Dialogue.objects.get(pk=int(response.url.rstrip("/").split("/")[-1]))


def supporter(dialogue: Dialogue, n: int = 0) -> Turn:
    return dialogue.turns.filter(role="supporter").order_by("index")[n]


@pytest.fixture
def first_reviewed(client, uno, due, settings):
    """Uno relabels, edits, flags and writes a note, and submits a rejection; due holds the same
    dialogue and has not submitted."""
    settings.REVIEWS_PER_DIALOGUE = 2
    dialogue = claim(client, uno)
    turn = supporter(dialogue)
    other = Strategy.objects.filter(taxonomy="extes").exclude(pk=turn.strategy_id).first()
    url = reverse
    client.post(
        url("curation-review-label", args=[dialogue.pk]), {"turn": turn.pk, "strategy": other.pk}
    )
    client.post(
        url("curation-review-edit", args=[dialogue.pk]),
        {"turn": turn.pk, "text": SECRET_TEXT, "version": dialogue.version},
    )
    client.post(
        url("curation-review-submit", args=[dialogue.pk]),
        {"decision": "reject", "reasons": ["unrealistic"], "flags": ["repetitive"], "notes": SECRET_NOTE},
    )  # fmt: skip
    assert claim(client, due) == dialogue
    return dialogue, turn, other


# ---- blind until settled -----------------------------------------------------------------------


def test_the_second_annotator_sees_nothing_of_the_first_review(client, first_reviewed):
    dialogue, turn, other = first_reviewed
    page = client.get(reverse("curation-review", args=[dialogue.pk])).content.decode()
    assert SECRET_TEXT not in page and SECRET_NOTE not in page
    assert "uno" not in page and "your edit" not in page
    assert "checked" not in page  # no reason or flag pre-filled
    # The turn shows the teacher's suggestion, not uno's label.
    block = page.split(f'id="turn-{turn.pk}"', 1)[1].split("</li>", 1)[0]
    assert re.findall(r'<option value="(\d+)"[^>]*selected>', block) == [str(turn.strategy_id)]
    assert other.pk != turn.strategy_id
    # The htmx partial of a turn after a label of due's own.
    partial = client.post(
        reverse("curation-review-label", args=[dialogue.pk]),
        {"turn": turn.pk, "strategy": turn.strategy_id},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert SECRET_TEXT not in partial and "your edit" not in partial


def test_history_and_list_show_an_annotator_only_their_own_actions(client, first_reviewed, due):
    dialogue, _, _ = first_reviewed
    # Due submits an accept: the reviews disagree and a lead must decide.
    client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION
    detail = client.get(reverse("curation-dialogue-detail", args=[dialogue.pk])).content.decode()
    assert "uno" not in detail and SECRET_TEXT not in detail
    assert "needs_adjudication" not in detail and "Needs adjudication" not in detail
    assert "In review" in detail
    shown = {e.actor for e in Event.objects.filter(dialogue=dialogue) if e.actor}
    assert len(shown) == 2  # the events exist; only due's are shown to due
    listing = client.get(reverse("curation-dialogue-list")).content.decode()
    assert "Needs adjudication" not in listing
    assert "status-in_review" in listing
    only_hidden = client.get(reverse("curation-dialogue-list"), {"status": "needs_adjudication"})
    assert f"#{dialogue.pk}" not in only_hidden.content.decode()


def test_after_submitting_an_annotator_is_told_it_is_saved_not_how_it_settled(
    client, first_reviewed
):
    dialogue, _, _ = first_reviewed
    response = client.post(
        reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"}, follow=True
    )
    body = response.content.decode()
    assert f"Your review of dialogue #{dialogue.pk} is saved." in body
    assert "adjudication" not in body.lower()


def test_a_lead_sees_every_review_and_proposal(client, first_reviewed, lead):
    dialogue, _, _ = first_reviewed
    client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    client.force_login(lead)
    detail = client.get(reverse("curation-dialogue-detail", args=[dialogue.pk])).content.decode()
    assert "uno" in detail and "Needs adjudication" in detail
    adj = dialogue.adjudications.get()
    page = client.get(reverse("curation-adjudication", args=[adj.pk])).content.decode()
    assert SECRET_TEXT in page and SECRET_NOTE in page


# ---- writes need a live hold -------------------------------------------------------------------


def test_writes_after_the_hold_ran_out_change_nothing_and_say_why(client, uno):
    dialogue = claim(client, uno)
    turn = supporter(dialogue)
    Assignment.objects.filter(annotator=uno).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    hope = Strategy.objects.get(taxonomy="extes", name="Offer Hope")
    for name, data in [
        ("curation-review-label", {"turn": turn.pk, "strategy": hope.pk}),
        ("curation-review-edit", {"turn": turn.pk, "text": "Late edit.", "version": 1}),
        ("curation-review-draft", {"notes": "late note"}),
        ("curation-review-submit", {"decision": "accept"}),
        ("curation-review-skip", {}),
    ]:
        for htmx in (False, True):
            headers = {"HX-Request": "true"} if htmx else {}
            response = client.post(reverse(name, args=[dialogue.pk]), data, headers=headers)
            assert response.status_code == 409, name
            assert "hold on this dialogue ran out" in response.content.decode()
            if htmx:
                assert response["HX-Retarget"] == "#review-alert"
    assert not Review.objects.filter(dialogue=dialogue, submitted_at__isnull=False).exists()
    assert not turn.edits.exists() and not turn.labels.exists()
    page = client.get(reverse("curation-review", args=[dialogue.pk])).content.decode()
    assert "Your hold on this dialogue ran out" in page and 'id="accept"' not in page


def test_an_expired_holder_cannot_touch_a_dialogue_that_settled_without_them(
    client, uno, due, settings
):
    settings.REVIEWS_PER_DIALOGUE = 1
    dialogue = claim(client, uno)
    client.post(reverse("curation-review-label", args=[dialogue.pk]), {"turn": supporter(dialogue).pk, "strategy": ""})  # fmt: skip
    Assignment.objects.filter(annotator=uno).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert claim(client, due) == dialogue
    client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED
    version, turn = dialogue.version, supporter(dialogue)
    client.force_login(uno)
    edit = client.post(
        reverse("curation-review-edit", args=[dialogue.pk]),
        {"turn": turn.pk, "text": "Overwrite!", "version": version},
    )
    submit = client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "reject", "reasons": ["other"]})  # fmt: skip
    assert edit.status_code == submit.status_code == 403
    assert "no longer open for review" in submit.content.decode()
    dialogue.refresh_from_db()
    turn.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED and dialogue.version == version
    assert turn.final_text != "Overwrite!" and not turn.edits.exists()


def test_a_lead_with_a_review_cannot_edit_a_settled_dialogue(client, lead, settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    dialogue = claim(client, lead)
    client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    dialogue.refresh_from_db()
    response = client.post(
        reverse("curation-review-edit", args=[dialogue.pk]),
        {"turn": supporter(dialogue).pk, "text": "Lead overwrite.", "version": dialogue.version},
    )
    assert response.status_code == 403
    assert Dialogue.objects.get(pk=dialogue.pk).version == dialogue.version


def test_writes_without_a_review_or_hold_are_refused(client, uno, lead):
    dialogue = Dialogue.objects.order_by("id").first()
    client.force_login(lead)  # a lead may read any dialogue's review page, but not write to it
    response = client.post(
        reverse("curation-review-label", args=[dialogue.pk]),
        {"turn": supporter(dialogue).pk, "strategy": ""},
    )
    assert response.status_code == 403
    assert "not one you are reviewing" in response.content.decode()
    assert not Review.objects.exists()


def test_a_get_never_claims_or_renews(client, uno):
    client.force_login(uno)
    assert client.get(reverse("curation-review-next-get")).status_code == 302
    assert client.get(reverse("curation-review-home")).status_code == 200
    assert client.get(reverse("curation-review-next")).status_code == 405
    # (The only events: the crisis gate's flags of seed dialogues as they were loaded.)
    assert not Assignment.objects.exists()
    assert not Event.objects.exclude(action=Event.Action.CRISIS_FLAGGED, actor=None).exists()
    dialogue = claim(client, uno)
    expires = Assignment.objects.get().expires_at
    client.get(reverse("curation-review", args=[dialogue.pk]))
    assert client.get(reverse("curation-review-next-get")).url == reverse(
        "curation-review", args=[dialogue.pk]
    )
    assert Assignment.objects.get().expires_at == expires
    # The open page renews by POST.
    assert client.post(reverse("curation-review-renew", args=[dialogue.pk])).status_code == 204
    assert Assignment.objects.get().expires_at > expires


def test_a_retaken_hold_keeps_the_earlier_draft(client, uno):
    dialogue = claim(client, uno)
    turn = supporter(dialogue)
    client.post(reverse("curation-review-label", args=[dialogue.pk]), {"turn": turn.pk, "strategy": ""})  # fmt: skip
    Assignment.objects.filter(annotator=uno).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert claim(client, uno) == dialogue  # the draft's dialogue first
    assert turn.labels.get().strategy is None


# ---- ranking through the queue -----------------------------------------------------------------


@pytest.fixture
def masked_turn() -> Turn:
    turn = supporter(Dialogue.objects.order_by("id").first(), 1)
    for text in ("Could you say more about that?", "That sounds really heavy."):
        Candidate.objects.create(turn=turn, text=text, strategy=turn.strategy, provenance={})
    return turn


def _ranks(turn: Turn) -> dict[str, str]:
    keys = [f"t{turn.pk}", *(f"c{c.pk}" for c in turn.candidates.all())]
    return {f"rank-{k}": str(n) for n, k in enumerate(keys, 1)}


def test_the_rank_page_opens_only_from_the_queue(client, uno, masked_turn):
    client.force_login(uno)
    url = reverse("curation-rank", args=[masked_turn.pk])
    assert client.get(url).status_code == 404  # not taken from the queue
    assert client.post(url, _ranks(masked_turn)).status_code == 404
    assert not Ranking.objects.exists()
    assert client.get(reverse("curation-rank-next")).status_code == 302  # GET takes nothing
    assert not RankHold.objects.exists()
    taken = client.post(reverse("curation-rank-next"))
    assert taken.url == url and RankHold.objects.filter(annotator=uno).count() == 1
    assert client.post(url, _ranks(masked_turn)).status_code == 302
    assert Ranking.objects.get().annotator == uno


def test_no_third_ranking_past_the_limit(client, uno, due, masked_turn, settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    third = user_in("annotator", "tre")
    url = reverse("curation-rank", args=[masked_turn.pk])
    for user in (uno, due):
        client.force_login(user)
        assert client.post(reverse("curation-rank-next")).url == url
    client.force_login(third)
    assert client.post(reverse("curation-rank-next")).url == reverse("curation-review-home")
    # Even a hold made by hand (or a stale one) cannot add a third ranking.
    for user in (uno, due):
        client.force_login(user)
        assert client.post(url, _ranks(masked_turn)).status_code == 302
    RankHold.objects.create(turn=masked_turn, annotator=third, expires_at=timezone.now() + timedelta(minutes=5))  # fmt: skip
    client.force_login(third)
    refused = client.post(url, _ranks(masked_turn))
    assert refused.status_code == 403 and b"all the rankings they need" in refused.content
    assert Ranking.objects.filter(turn=masked_turn).count() == 2


def test_an_expired_rank_hold_saves_nothing(client, uno, masked_turn):
    client.force_login(uno)
    client.post(reverse("curation-rank-next"))
    RankHold.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.post(reverse("curation-rank", args=[masked_turn.pk]), _ranks(masked_turn))
    assert response.status_code == 409 and not Ranking.objects.exists()


# ---- leads: re-open, and the admin -------------------------------------------------------------


def _settled(client, user, settings) -> Dialogue:
    settings.REVIEWS_PER_DIALOGUE = 1
    dialogue = claim(client, user)
    client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    dialogue.refresh_from_db()
    assert dialogue.is_settled
    return dialogue


def test_a_lead_changes_a_settled_dialogue_only_by_reopening_it(client, uno, lead, settings):
    dialogue = _settled(client, uno, settings)
    client.force_login(lead)
    url = reverse("curation-dialogue-reopen", args=[dialogue.pk])
    no_reason = client.post(url, {"reason": " "}, follow=True)
    assert b"Say why you re-open it" in no_reason.content
    assert Dialogue.objects.get(pk=dialogue.pk).status == Dialogue.Status.ACCEPTED
    response = client.post(url, {"reason": "The supporter gives medical advice in turn 5."})
    dialogue.refresh_from_db()
    adj = dialogue.adjudications.get(resolved_at__isnull=True)
    assert response.url == reverse("curation-adjudication", args=[adj.pk])
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION and adj.reasons == ["reopened"]
    event = Event.objects.get(dialogue=dialogue, action=Event.Action.REOPENED)
    assert event.actor == lead and event.after["reason"].startswith("The supporter")
    turn = supporter(dialogue, 1)
    page = client.get(response.url).content.decode()
    assert "Re-opened by lena" in page
    client.post(
        response.url,
        {
            "version": dialogue.version,
            "decision": "accept",
            f"text-{turn.index}": "A safer reply.",
            "note": "Rewrote the advice.",
        },
    )
    turn.refresh_from_db()
    assert turn.final_text == "A safer reply."
    client.force_login(uno)
    assert client.post(url, {"reason": "me too"}).status_code == 403


def test_the_admin_shows_decisions_and_content_but_changes_nothing(
    client, superuser, uno, settings
):
    dialogue = _settled(client, uno, settings)
    turn = supporter(dialogue)
    client.force_login(superuser)
    for model, pk in [
        ("dialogue", dialogue.pk),
        ("turn", turn.pk),
        ("review", Review.objects.get().pk),
    ]:
        url = reverse(f"admin:curation_{model}_change", args=[pk])
        page = client.get(url)
        assert page.status_code == 200, model
        assert b'name="_save"' not in page.content
    posted = client.post(
        reverse("admin:curation_turn_change", args=[turn.pk]),
        {"dialogue": dialogue.pk, "index": turn.index, "role": "supporter", "text": "Admin edit."},
    )
    assert posted.status_code == 403
    turn.refresh_from_db()
    assert turn.text != "Admin edit." and turn.final_text != "Admin edit."
    assert client.get(reverse("admin:curation_turn_delete", args=[turn.pk])).status_code == 403


# ---- the final state flows on ------------------------------------------------------------------


@pytest.fixture
def settled_with_changes(client, uno, due, settings):
    """A generated dialogue both annotators accept with a relabelled and an edited turn."""
    settings.REVIEWS_PER_DIALOGUE = 2
    Dialogue.objects.update(origin=Dialogue.Origin.GENERATED)
    dialogue = claim(client, uno)
    assert claim(client, due) == dialogue
    first, second = supporter(dialogue, 0), supporter(dialogue, 1)
    hope = Strategy.objects.get(taxonomy="extes", name="Stress Management")
    assert first.strategy_id != hope.pk  # so the final label differs from the teacher's
    for user in (uno, due):
        client.force_login(user)
        client.post(reverse("curation-review-label", args=[dialogue.pk]), {"turn": first.pk, "strategy": hope.pk})  # fmt: skip
        if user == uno:
            client.post(reverse("curation-review-edit", args=[dialogue.pk]), {"turn": second.pk, "text": "Settled wording.", "version": 1})  # fmt: skip
        client.post(reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "accept"})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED
    return dialogue, first, second


def test_release_export_and_dashboard_carry_the_final_state(
    client, settled_with_changes, lead, tmp_path
):
    dialogue, first, second = settled_with_changes
    snap = create_release("final-state").items.get(dialogue_id=dialogue.pk).snapshot
    turns = {t["index"]: t for t in snap["turns"]}
    assert turns[first.index]["strategy"] == "Stress Management"
    assert turns[first.index]["teacher_strategy"] == first.strategy.name
    assert turns[second.index]["text"] == "Settled wording."
    assert snap["edits"] == [{"turn_index": second.index, "before": second.text, "after": "Settled wording."}]  # fmt: skip
    target = tmp_path / "accepted.json"
    call_command(
        "export_dialogues", format="extes", out=str(target), status="accepted", stderr=StringIO()
    )
    (record,) = json.loads(target.read_text())
    content = record["content"]
    assert content[first.index]["AI Strategy"] == "Stress Management"
    assert content[second.index]["AI"] == "Settled wording."
    client.force_login(lead)
    csv = client.get(reverse("curation-dashboard-csv", args=["strategies"])).content.decode()
    row = next(line for line in csv.splitlines() if line.startswith("Stress Management"))
    assert row.split(",")[1] == "1"


def test_later_rounds_and_dri_read_the_final_state(settled_with_changes):
    from generation import runner
    from generation.models import GenerationJob, GenerationUnit

    dialogue, first, second = settled_with_changes
    job = GenerationJob.objects.create(teacher={}, examples_per_prompt=100)
    examples = runner._examples(dialogue.scenario, job, 2, random.Random(0))
    mine = [e for e in examples if e["description"] == dialogue.description]
    assert mine and mine[0]["content"][second.index]["AI"] == "Settled wording."
    assert mine[0]["content"][first.index]["AI Strategy"] == "Stress Management"
    # DRI masking by strategy finds the turn by its final label, not the teacher's.
    dri = GenerationJob.objects.create(
        kind=GenerationJob.Kind.DRI,
        teacher={},
        dri_mask="strategy",
        dri_strategies=["Stress Management"],
        dri_turns_per_dialogue=10,
    )
    runner._plan_dri(dri)
    masked = set(GenerationUnit.objects.filter(job=dri).values_list("turn_id", flat=True))
    assert first.pk in masked
    # Exactly the turns whose final label is the wanted one, in this and every other dialogue.
    wanted = Turn.objects.filter(role="supporter").filter(
        Q(final_text__isnull=False, final_strategy__name="Stress Management")
        | Q(final_text__isnull=True, strategy__name="Stress Management"),
        dialogue__status=Dialogue.Status.ACCEPTED,
    )
    assert masked == set(wanted.values_list("pk", flat=True))
