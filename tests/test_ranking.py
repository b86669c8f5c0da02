"""Rank mode: candidates and the original, unmarked and shuffled; ties; unacceptable; once only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from curation.models import Candidate, Dialogue, Ranking, Turn

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


@pytest.fixture
def masked_turn() -> Turn:
    dialogue = Dialogue.objects.order_by("id").first()
    turn = dialogue.turns.filter(role="supporter").order_by("index")[1]
    for text in (
        "Could you say more about that?",
        "That sounds really heavy.",
        "You did well to reach out.",
    ):
        Candidate.objects.create(
            turn=turn, text=text, strategy=turn.strategy, provenance={"job": 1}
        )
    return turn


@pytest.fixture
def ann(client) -> User:
    user = User.objects.create_user("ranker", password="pw-123456")
    user.groups.add(Group.objects.get(name="annotator"))
    client.force_login(user)
    return user


def test_next_opens_a_masked_turn_with_shuffled_unmarked_replies(client, ann, masked_turn):
    response = client.post(reverse("curation-rank-next"))
    assert response.url == reverse("curation-rank", args=[masked_turn.pk])
    page = client.get(response.url)
    body = page.content.decode()
    keys = [item["key"] for item in page.context["items"]]
    assert sorted(keys) == sorted(
        [f"t{masked_turn.pk}", *(f"c{c.pk}" for c in masked_turn.candidates.all())]
    )
    assert "original" not in body.lower()
    assert masked_turn.text.replace("'", "&#x27;") in body  # the original is among the replies
    assert keys == [item["key"] for item in client.get(response.url).context["items"]]  # stable


def test_ranking_with_ties_and_unacceptable_is_saved_once(client, ann, masked_turn):
    url = reverse("curation-rank", args=[masked_turn.pk])
    assert client.post(reverse("curation-rank-next")).url == url
    keys = [item["key"] for item in client.get(url).context["items"]]
    form = {
        f"rank-{keys[0]}": "1",
        f"rank-{keys[1]}": "2",
        f"rank-{keys[2]}": "2",
        f"rank-{keys[3]}": "3",
        f"bad-{keys[3]}": "on",
        "edited_best": "Could you say a bit more about that?",
    }
    assert client.post(url, form).status_code == 302
    assert client.post(url, {**form, f"rank-{keys[0]}": "3"}).status_code == 302
    ranking = Ranking.objects.get()
    assert ranking.order == [[keys[0]], sorted([keys[1], keys[2]]), [keys[3]]]
    assert ranking.unacceptable == [keys[3]]
    assert ranking.display_order == keys
    assert ranking.edited_best == "Could you say a bit more about that?"
    assert client.post(reverse("curation-rank-next")).url == reverse("curation-review-home")


def test_missing_rank_is_explained_and_typed_values_kept(client, ann, masked_turn):
    url = reverse("curation-rank", args=[masked_turn.pk])
    assert client.post(reverse("curation-rank-next")).url == url
    keys = [item["key"] for item in client.get(url).context["items"]]
    response = client.post(url, {f"rank-{keys[0]}": "1", f"bad-{keys[1]}": "on"})
    assert response.status_code == 200
    assert b"Give every reply a rank" in response.content
    assert (
        f'name="rank-{keys[0]}" aria-label="Rank of reply 1" value="1"'.encode() in response.content
    )
    assert f'name="bad-{keys[1]}" checked'.encode() in response.content  # marks are kept too
    assert not Ranking.objects.exists()


def test_a_missing_rank_keeps_the_edited_reply_open(client, ann, masked_turn):
    url = reverse("curation-rank", args=[masked_turn.pk])
    client.post(reverse("curation-rank-next"))
    body = client.post(url, {"edited_best": "Tell me more."}).content.decode()
    assert "<details open><summary>Edit the best reply" in body
    assert ">Tell me more.</textarea>" in body
    assert "<details><summary>Edit the best reply" in client.get(url).content.decode()


def test_the_legend_names_every_key(client, ann, masked_turn):
    url = reverse("curation-rank", args=[masked_turn.pk])
    client.post(reverse("curation-rank-next"))
    legend = client.get(url).content.decode().split('id="rank-keys"')[1].split("</dl>")[0]
    for key in ("j", "k", "↓", "↑", "1", "4", "x", "Tab", "Enter"):
        assert f"<kbd>{key}</kbd>" in legend
    assert "the focus stays on it" in legend


def test_turns_without_candidates_cannot_be_ranked(client, ann, masked_turn):
    other = Turn.objects.filter(role="supporter").exclude(pk=masked_turn.pk).first()
    assert client.get(reverse("curation-rank", args=[other.pk])).status_code == 404


def test_rankers_are_limited_to_the_overlap(client, masked_turn, settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    first = User.objects.create_user("r1", password="pw-123456")
    Ranking.objects.create(turn=masked_turn, annotator=first, order=[], display_order=[])
    second = User.objects.create_user("r2", password="pw-123456")
    client.force_login(second)
    assert client.post(reverse("curation-rank-next")).url == reverse("curation-review-home")
