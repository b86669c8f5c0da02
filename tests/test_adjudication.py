"""Adjudication and safety routing: disagreements reach leads, their decisions are final and
recorded; crisis flags wait for a lead; annotators' daily cap on crisis items; access control."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from curation.lead import adjudication, safety
from curation.models import (
    Adjudication,
    Assignment,
    Candidate,
    Dialogue,
    Event,
    Ranking,
    Review,
    SafetyStatus,
    Strategy,
    Turn,
)
from curation.releases.build import create_release
from curation.review import ranking, reviewing

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


@pytest.fixture
def pair() -> tuple[User, User]:
    group = Group.objects.get(name="annotator")
    users = []
    for name in ("ann-a", "ann-b"):
        user = User.objects.create_user(name, password="pw-123456")
        user.groups.add(group)
        users.append(user)
    return users[0], users[1]


def review(
    user: User,
    dialogue: Dialogue,
    decision: str,
    labels: dict[int, str] | None = None,
    flags: list[str] | None = None,
) -> None:
    draft = reviewing.draft_for(dialogue, user)
    for index, name in (labels or {}).items():
        reviewing.set_label(draft, dialogue.turns.get(index=index), Strategy.objects.get(name=name))
    reasons = [] if decision == "accept" else ["off_scenario"]
    assert reviewing.submit(draft, decision, reasons, flags or [], "")


def first_supporter(dialogue: Dialogue) -> Turn:
    return dialogue.turns.filter(role="supporter").order_by("index").first()


def claimed(pair) -> Dialogue:
    a, b = pair
    dialogue = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == dialogue
    return dialogue


def test_accept_vs_reject_goes_to_a_lead_who_settles_it(client, pair, lead):
    dialogue = claimed(pair)
    review(pair[0], dialogue, "accept")
    review(pair[1], dialogue, "reject")
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION
    adj = Adjudication.objects.get(dialogue=dialogue)
    assert adj.reasons == ["decision"] and adj.is_open

    client.force_login(lead)
    queue = client.get(reverse("curation-adjudication-list"))
    assert f"#{dialogue.pk}".encode() in queue.content and b"accept vs reject" in queue.content
    page = client.get(reverse("curation-adjudication", args=[adj.pk]))
    assert page.status_code == 200 and b"ann-a" in page.content and b"ann-b" in page.content

    turn = first_supporter(dialogue)
    response = client.post(
        reverse("curation-adjudication", args=[adj.pk]),
        {
            "version": dialogue.version,
            "decision": "accept",
            f"label-{turn.index}": "Reflective Statements",
            f"text-{turn.index}": "That sounds exhausting. I'm here with you.",
            "note": "Realistic and on topic; the reject reason does not hold.",
        },
    )
    assert response.status_code == 302
    dialogue.refresh_from_db()
    adj.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED
    assert dialogue.version == 2 and dialogue.is_settled  # the decision is one new version
    assert not adj.is_open and adj.resolved_by == lead and adj.decision == "accept"
    assert adj.labels[str(turn.index)] == "Reflective Statements"
    stored = Turn.objects.get(pk=turn.pk)
    assert stored.final_text == "That sounds exhausting. I'm here with you."
    assert stored.final_strategy.name == "Reflective Statements"
    assert stored.text == turn.text  # the text as written is kept
    logged = Event.objects.filter(dialogue=dialogue, action="adjudicated").get()
    assert logged.actor == lead and logged.after["note"].startswith("Realistic")
    # The release uses the lead's label and text.
    release = create_release("after-adjudication")
    snap = release.items.get(dialogue_id=dialogue.pk).snapshot
    final = next(t for t in snap["turns"] if t["index"] == turn.index)
    assert final["strategy"] == "Reflective Statements"
    assert final["text"] == "That sounds exhausting. I'm here with you."


def test_two_acceptances_with_different_labels_need_a_lead_but_two_rejections_do_not(pair):
    a, b = pair
    dialogue = claimed(pair)
    index = first_supporter(dialogue).index
    review(a, dialogue, "accept", {index: "Reflective Statements"})
    review(b, dialogue, "accept", {index: "Emotional Validation"})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION
    adj = Adjudication.objects.get(dialogue=dialogue)
    assert adj.reasons == ["labels"]
    assert adj.details["labels"][str(index)] == {
        "ann-a": "Reflective Statements",
        "ann-b": "Emotional Validation",
    }

    other = claimed(pair)
    review(a, other, "reject", {index: "Reflective Statements"})
    review(b, other, "reject", {index: "Emotional Validation"})
    other.refresh_from_db()
    assert other.status == Dialogue.Status.REJECTED
    assert not Adjudication.objects.filter(dialogue=other).exists()


def test_an_untouched_turn_is_no_vote(pair):
    a, b = pair
    dialogue = claimed(pair)
    turn = first_supporter(dialogue)
    other = "Offer Hope" if turn.strategy.name != "Offer Hope" else "Affirmation"
    review(a, dialogue, "accept", {turn.index: other})  # relabelled explicitly
    review(b, dialogue, "accept")  # left as it was: not a vote for the teacher
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED
    assert Turn.objects.get(pk=turn.pk).final_strategy.name == other


def test_a_stale_decision_is_refused_and_keeps_what_the_lead_chose(client, pair, lead):
    dialogue = claimed(pair)
    review(pair[0], dialogue, "accept")
    review(pair[1], dialogue, "reject")
    first = Adjudication.objects.get(dialogue=dialogue)
    loaded_version = Dialogue.objects.get(pk=dialogue.pk).version
    # Another lead settles it and re-opens it meanwhile; this lead's page is from before.
    other = User.objects.create_user("lou")
    other.groups.add(Group.objects.get(name="lead"))
    adjudication.resolve(first, other, loaded_version, adjudication.Decision("accept", note="ok"))
    adj = Dialogue.objects.get(pk=dialogue.pk).reopen(other, "second thoughts")
    client.force_login(lead)
    response = client.post(
        reverse("curation-adjudication", args=[adj.pk]),
        {"version": loaded_version, "decision": "reject", "note": "Keep this note please"},
    )
    assert response.status_code == 409
    assert b"Someone changed this dialogue" in response.content and b"lou" in response.content
    assert b"Keep this note please" in response.content
    adj.refresh_from_db()
    assert adj.is_open
    assert Dialogue.objects.get(pk=dialogue.pk).status == Dialogue.Status.NEEDS_ADJUDICATION


def test_a_decision_needs_a_note(client, pair, lead):
    dialogue = claimed(pair)
    review(pair[0], dialogue, "accept")
    review(pair[1], dialogue, "reject")
    adj = Adjudication.objects.get(dialogue=dialogue)
    client.force_login(lead)
    response = client.post(
        reverse("curation-adjudication", args=[adj.pk]),
        {"version": Dialogue.objects.get(pk=dialogue.pk).version, "decision": "accept"},
    )
    assert response.status_code == 400 and b"Write a short note" in response.content
    assert Adjudication.objects.get(pk=adj.pk).is_open


def test_conflicting_rankings_are_settled_by_the_leads_best_reply(client, pair, lead):
    a, b = pair
    dialogue = Dialogue.objects.order_by("id").first()
    Dialogue.objects.filter(pk=dialogue.pk).update(status=Dialogue.Status.ACCEPTED)
    turn = first_supporter(dialogue)
    one = Candidate.objects.create(turn=turn, text="A first other reply.", provenance={})
    two = Candidate.objects.create(turn=turn, text="A second other reply.", provenance={})
    keys = [f"t{turn.pk}", f"c{one.pk}", f"c{two.pk}"]
    assert ranking.claim_next(a) == ranking.claim_next(b) == turn  # from the queue
    assert ranking.save(turn, a, [[f"c{one.pk}"], [f"t{turn.pk}"], [f"c{two.pk}"]], [], keys, "")
    assert not Adjudication.objects.exists()
    assert ranking.save(turn, b, [[f"c{two.pk}"], [f"c{one.pk}", f"t{turn.pk}"]], [], keys, "")
    adj = Adjudication.objects.get(dialogue=dialogue)
    assert adj.reasons == ["rankings"] and adj.details["rankings"] == [turn.index]

    client.force_login(lead)
    page = client.get(reverse("curation-adjudication", args=[adj.pk]))
    assert b"Rankings disagree" in page.content and b"A second other reply." in page.content
    client.post(
        reverse("curation-adjudication", args=[adj.pk]),
        {
            "version": dialogue.version,
            "decision": "accept",
            f"best-{turn.index}": f"c{two.pk}",
            "note": "The second reply reflects the feeling best.",
        },
    )
    settled = Ranking.objects.get(turn=turn, annotator=lead)
    assert settled.adjudicated and settled.order[0] == [f"c{two.pk}"]
    snap = create_release("ranked").items.get(dialogue_id=dialogue.pk).snapshot
    assert [r["order"][0] for r in snap["rankings"]] == [[f"c{two.pk}"]]  # the lead's alone


def test_annotator_crisis_flags_wait_in_the_safety_queue_until_a_lead_decides(client, pair, lead):
    a, _ = pair
    dialogue = claimed(pair)
    review(a, dialogue, "accept", flags=[Review.Flag.CRISIS])
    dialogue.refresh_from_db()
    assert dialogue.crisis_flagged and dialogue.safety_status == SafetyStatus.FLAGGED
    assert dialogue.pk not in create_release("no-flagged").items.values_list(
        "dialogue_id", flat=True
    )
    client.force_login(lead)
    queue = client.get(reverse("curation-safety"))
    assert f"#{dialogue.pk}".encode() in queue.content
    refused = client.post(
        reverse("curation-safety-decide", args=[dialogue.pk]), {"action": "clear", "note": ""}
    )
    assert refused.status_code == 302
    assert Dialogue.objects.get(pk=dialogue.pk).safety_status == SafetyStatus.FLAGGED
    cleared = client.post(
        reverse("curation-safety-decide", args=[dialogue.pk]),
        {"action": "clear", "note": "The supporter points to a crisis line; no method talk."},
        HTTP_HX_REQUEST="true",
    )
    assert cleared.status_code == 200 and b"Cleared by a lead" in cleared.content
    dialogue.refresh_from_db()
    assert dialogue.safety_status == SafetyStatus.CLEARED
    assert dialogue.safety_notes["decisions"][-1]["by"] == "lena"
    assert Event.objects.filter(dialogue=dialogue, action="safety cleared").exists()
    with pytest.raises(ValueError, match="not waiting"):
        safety.exclude(dialogue, lead, "too late")


def test_annotators_see_at_most_the_daily_cap_of_cleared_crisis_dialogues(settings, pair, lead):
    settings.REVIEWS_PER_DIALOGUE = 1
    settings.CRISIS_DAILY_CAP = 2
    a, _ = pair
    flagged = list(Dialogue.objects.order_by("id")[:4])
    Dialogue.objects.filter(pk__in=[d.pk for d in flagged]).update(
        safety_status=SafetyStatus.FLAGGED
    )
    # Flagged and not cleared: never offered.
    assert not set(Dialogue.objects.reviewable_by(a).values_list("pk", flat=True)) & {
        d.pk for d in flagged
    }
    for d in flagged[:3]:
        safety.clear(Dialogue.objects.get(pk=d.pk), lead, "handled well")
    shown = []
    for _ in range(3):
        got = reviewing.claim_next(a)
        if got.crisis_flagged:
            shown.append(got.pk)
        reviewing.skip(got, a)  # skipping is fine, and counted apart from rejections
    assert shown == [flagged[0].pk, flagged[1].pk]  # the cap, then ordinary dialogues
    assert Assignment.objects.crisis_given_today(a) == 2
    settings.CRISIS_DAILY_CAP = 0
    assert not Dialogue.objects.reviewable_by(a).exclude(safety_status=SafetyStatus.NONE).exists()


LEAD_PAGES = [
    ("curation-dashboard", []),
    ("curation-dashboard-csv", ["annotators"]),
    ("curation-agreement", []),
    ("curation-agreement-csv", ["per_strategy"]),
    ("curation-adjudication-list", []),
    ("curation-safety", []),
]


@pytest.mark.parametrize(("name", "args"), LEAD_PAGES)
def test_annotators_cannot_reach_lead_pages_or_csvs(client, annotator, lead, name, args):
    client.force_login(annotator)
    assert client.get(reverse(name, args=args)).status_code == 403
    assert client.get(reverse(name, args=args), HTTP_HX_REQUEST="true").status_code == 403
    client.force_login(lead)
    assert client.get(reverse(name, args=args)).status_code == 200


def test_annotators_cannot_post_decisions(client, pair, annotator):
    dialogue = claimed(pair)
    review(pair[0], dialogue, "accept")
    review(pair[1], dialogue, "reject")
    adj = Adjudication.objects.get(dialogue=dialogue)
    client.force_login(annotator)
    assert client.get(reverse("curation-adjudication", args=[adj.pk])).status_code == 403
    posted = client.post(
        reverse("curation-adjudication", args=[adj.pk]),
        {"version": 1, "decision": "accept", "note": "sneaky"},
        HTTP_HX_REQUEST="true",
    )
    assert posted.status_code == 403
    assert Adjudication.objects.get(pk=adj.pk).is_open
    decided = client.post(
        reverse("curation-safety-decide", args=[dialogue.pk]), {"action": "clear", "note": "x"}
    )
    assert decided.status_code == 403
    client.logout()
    anonymous = client.get(reverse("curation-dashboard"))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
