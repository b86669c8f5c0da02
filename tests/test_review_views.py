"""The review pages: the queue, labels, edits with conflicts, submits, skips, and who may do what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from curation.models import Assignment, Dialogue, Review, Strategy, TurnLabel

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


def user_in(group: str, name: str) -> User:
    user = User.objects.create_user(name, password="pw-123456")
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def ann(client):
    user = user_in("annotator", "ann")
    client.force_login(user)
    return user


def start(client) -> Dialogue:
    response = client.post(reverse("curation-review-next"))
    assert response.status_code == 302
    return Dialogue.objects.get(pk=int(response.url.rstrip("/").split("/")[-1]))


def test_home_invites_to_start(client, ann):
    body = client.get(reverse("curation-review-home")).content.decode()
    assert "<strong>39</strong> dialogues waiting for you" in body  # 9 seeds wait for a lead
    assert "Start reviewing" in body


def test_next_claims_and_opens_the_review_page(client, ann):
    dialogue = start(client)
    assert Assignment.objects.filter(dialogue=dialogue, annotator=ann).exists()
    page = client.get(reverse("curation-review", args=[dialogue.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert dialogue.description[:40].replace("'", "&#x27;") in body
    assert 'id="accept"' in body and 'id="shortcuts"' in body
    assert "teacher: " in body  # the teacher's label as a suggestion


def test_label_by_htmx_returns_the_turn(client, ann):
    dialogue = start(client)
    turn = dialogue.turns.filter(role="supporter").first()
    hope = Strategy.objects.get(taxonomy="extes", name="Offer Hope")
    response = client.post(
        reverse("curation-review-label", args=[dialogue.pk]),
        {"turn": turn.pk, "strategy": hope.pk},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith(f'<li id="turn-{turn.pk}"')
    assert TurnLabel.objects.get(turn=turn, review__annotator=ann).strategy == hope


def test_label_without_javascript_redirects_back(client, ann):
    dialogue = start(client)
    turn = dialogue.turns.filter(role="supporter").first()
    response = client.post(
        reverse("curation-review-label", args=[dialogue.pk]), {"turn": turn.pk, "strategy": ""}
    )
    assert response.status_code == 302
    assert TurnLabel.objects.get(turn=turn).strategy is None


def test_seeker_turns_take_no_label(client, ann):
    dialogue = start(client)
    seeker = dialogue.turns.filter(role="seeker").first()
    response = client.post(
        reverse("curation-review-label", args=[dialogue.pk]), {"turn": seeker.pk, "strategy": ""}
    )
    assert response.status_code == 404


def test_an_edit_is_my_proposal_and_a_stale_page_keeps_my_text(client, ann):
    dialogue = start(client)
    turn = dialogue.turns.get(index=1)
    url = reverse("curation-review-edit", args=[dialogue.pk])
    ok = client.post(
        url,
        {"turn": turn.pk, "text": "My better wording.", "version": dialogue.version},
        headers={"HX-Request": "true"},
    )
    assert ok.status_code == 200
    body = ok.content.decode()
    assert "My better wording." in body and "your edit" in body
    turn.refresh_from_db()
    assert turn.text != "My better wording."  # a proposal, kept with my review
    # A lead's action moves the dialogue's version: an edit from the old page is refused.
    Dialogue.objects.filter(pk=dialogue.pk).update(version=2)
    stale = client.post(
        url,
        {"turn": turn.pk, "text": "My later wording.", "version": 1},
        headers={"HX-Request": "true"},
    )
    assert stale.status_code == 409
    body = stale.content.decode()
    assert "A lead changed this dialogue while you were working" in body
    assert "My later wording." in body and 'name="version" value="2"' in body
    again = client.post(
        url,
        {"turn": turn.pk, "text": "My later wording.", "version": 2},
        headers={"HX-Request": "true"},
    )
    assert again.status_code == 200
    assert turn.edits.get().after == "My later wording."


def test_submit_is_idempotent_and_goes_to_the_next(client, ann, settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    dialogue = start(client)
    url = reverse("curation-review-submit", args=[dialogue.pk])
    first = client.post(url, {"decision": "accept", "notes": "fine"})
    second = client.post(url, {"decision": "reject", "reasons": ["other"]})
    assert first.status_code == second.status_code == 302
    assert Review.objects.filter(dialogue=dialogue).count() == 1
    assert Review.objects.get(dialogue=dialogue).decision == "accept"
    dialogue.refresh_from_db()
    assert dialogue.status == "accepted"
    # The submit (a POST) took the next dialogue: its review page, not the one just submitted.
    assert first.url.startswith("/review/") and first.url != reverse(
        "curation-review", args=[dialogue.pk]
    )
    assert client.get(first.url).status_code == 200


def test_the_questions_are_hidden_and_accept_stays_the_default_button(client, ann):
    dialogue = start(client)
    body = client.get(reverse("curation-review", args=[dialogue.pk])).content.decode()
    form = body[body.index('id="decision-form"') :]
    # Without JavaScript the bars never show, and the form's first submit button (the one a
    # browser's Enter presses) is the visible Accept button, not one inside a bar.
    for bar in ("confirm-accept", "confirm-reject"):
        tag = form[form.index(f'id="{bar}"') :].split(">")[0]
        assert tag.endswith(" hidden")
    first_button = form[form.index('type="submit"') :].split(">")[0]
    assert 'id="accept"' in first_button
    assert "<kbd>Enter</kbd> or <kbd>a</kbd> again: accept" in form


def test_reject_needs_a_reason(client, ann):
    dialogue = start(client)
    response = client.post(
        reverse("curation-review-submit", args=[dialogue.pk]), {"decision": "reject"}, follow=True
    )
    assert b"pick at least one reason" in response.content
    assert not Review.objects.filter(submitted_at__isnull=False).exists()


def test_notes_autosave(client, ann):
    dialogue = start(client)
    response = client.post(
        reverse("curation-review-draft", args=[dialogue.pk]), {"notes": "half a thought"}
    )
    assert response.status_code == 204
    assert Review.objects.get(dialogue=dialogue, annotator=ann).notes == "half a thought"


def test_skip_moves_on(client, ann):
    dialogue = start(client)
    response = client.post(reverse("curation-review-skip", args=[dialogue.pk]), follow=True)
    assert b"It will not be shown to you again" in response.content
    assert Assignment.objects.get(dialogue=dialogue, annotator=ann).skipped


def test_empty_queue_says_so(client, ann):
    Dialogue.objects.update(status="accepted")
    response = client.post(reverse("curation-review-next"), follow=True)
    assert b"Nothing left to review for you right now" in response.content


# ---- who may do what ---------------------------------------------------------------------------

ACTIONS = [
    ("curation-review", "get", {}),
    ("curation-review-label", "post", {"strategy": ""}),
    ("curation-review-edit", "post", {"text": "x", "version": 1}),
    ("curation-review-draft", "post", {"notes": "x"}),
    ("curation-review-submit", "post", {"decision": "accept"}),
    ("curation-review-skip", "post", {}),
]


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
@pytest.mark.parametrize(("name", "method", "data"), ACTIONS, ids=[a[0] for a in ACTIONS])
def test_an_annotator_cannot_touch_a_dialogue_they_do_not_hold(client, name, method, data, htmx):
    holder = user_in("annotator", "holder")
    client.force_login(holder)
    dialogue = start(client)
    turn = dialogue.turns.filter(role="supporter").first()
    client.force_login(user_in("annotator", "outsider"))
    headers = {"HX-Request": "true"} if htmx else {}
    response = getattr(client, method)(
        reverse(name, args=[dialogue.pk]), {**data, "turn": turn.pk}, headers=headers
    )
    assert response.status_code == 404
    turn.refresh_from_db()
    assert turn.text != "x"
    assert not Review.objects.filter(annotator__username="outsider").exists()


@pytest.mark.parametrize(("name", "method", "data"), ACTIONS, ids=[a[0] for a in ACTIONS])
def test_anonymous_users_are_sent_to_log_in(client, name, method, data):
    dialogue = Dialogue.objects.first()
    response = getattr(client, method)(reverse(name, args=[dialogue.pk]), data)
    assert response.status_code == 302 and "/login/" in response.url


def test_a_lead_may_open_any_dialogue_for_review(client):
    dialogue = Dialogue.objects.first()
    client.force_login(user_in("lead", "lea"))
    assert client.get(reverse("curation-review", args=[dialogue.pk])).status_code == 200


def test_reviews_are_blind(client, settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    first = user_in("annotator", "reviewer-uno")
    client.force_login(first)
    dialogue = start(client)
    client.post(
        reverse("curation-review-submit", args=[dialogue.pk]),
        {"decision": "reject", "reasons": ["unrealistic"], "notes": "SECRET-NOTE-OF-FIRST"},
    )
    client.force_login(user_in("annotator", "second"))
    assert start(client) == dialogue
    body = client.get(reverse("curation-review", args=[dialogue.pk])).content.decode()
    assert "SECRET-NOTE-OF-FIRST" not in body
    assert "reviewer-uno" not in body  # nothing says who else reviewed it
    assert "checked" not in body  # no reason or flag comes pre-filled from another review


def test_dialogue_text_is_escaped(client, ann):
    dialogue = start(client)
    turn = dialogue.turns.get(index=0)
    turn.text = '<script>window.pwned=1</script><img src=x onerror="alert(1)">'
    turn.save()
    body = client.get(reverse("curation-review", args=[dialogue.pk])).content.decode()
    assert "<script>window.pwned" not in body
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in body
    assert "<img src=x onerror" not in body


def test_without_javascript_an_edit_redirects_and_a_conflict_is_a_page(client, ann):
    dialogue = start(client)
    turn = dialogue.turns.get(index=1)
    url = reverse("curation-review-edit", args=[dialogue.pk])
    ok = client.post(
        url, {"turn": turn.pk, "text": "Plain form edit.", "version": dialogue.version}
    )
    assert ok.status_code == 302 and ok.url == reverse("curation-review", args=[dialogue.pk])
    Dialogue.objects.filter(pk=dialogue.pk).update(version=2)
    stale = client.post(url, {"turn": turn.pk, "text": "Mine, from an old page.", "version": 1})
    assert stale.status_code == 409
    body = stale.content.decode()
    assert "<html" in body and "Your edit was not saved yet" in body
    assert "Mine, from an old page." in body
