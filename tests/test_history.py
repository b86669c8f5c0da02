from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from curation.diffs import word_diff
from curation.review import reviewing

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


def test_word_diff_marks_changed_words_only():
    assert word_diff("I feel so alone tonight.", "I feel a bit alone tonight.") == [
        ("same", "I feel "),
        ("del", "so"),
        ("ins", "a bit"),
        ("same", " alone tonight."),
    ]
    assert word_diff("same", "same") == [("same", "same")]
    assert word_diff("", "new words") == [("ins", "new words")]


def make(group: str, name: str) -> User:
    user = User.objects.create_user(name, password="pw-123456")
    user.groups.add(Group.objects.get(name=group))
    return user


def test_dialogue_page_shows_edits_as_word_diffs_and_hides_decisions_from_annotators(
    client, settings
):
    settings.REVIEWS_PER_DIALOGUE = 1
    ann = make("annotator", "ann")
    dialogue = reviewing.claim_next(ann)
    turn = dialogue.turns.get(index=1)
    draft = reviewing.draft_for(dialogue, ann)
    reviewing.propose_edit(draft, turn, turn.text + " Kindly.", dialogue.version)
    reviewing.submit(draft, "accept", [], [], "")
    url = reverse("curation-dialogue-detail", args=[dialogue.pk])

    client.force_login(make("annotator", "other"))
    assert client.get(url).status_code == 404  # not theirs to read
    client.force_login(ann)
    body = client.get(url).content.decode()
    assert "<ins>Kindly.</ins>" in body or "<ins> Kindly.</ins>" in body
    assert "proposed an edit of turn 1" in body
    history = body.split("<h2>History</h2>")[1].split("</ol>")[0]
    assert "ann reviewed" in history  # their own actions only: nothing of how it settled
    assert "settled" not in history and "system" not in history

    client.force_login(make("lead", "lead"))
    body = client.get(url).content.decode()
    assert "ann reviewed: accept" in body
    assert "now accepted" in body
