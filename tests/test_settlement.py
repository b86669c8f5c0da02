"""The final-state rules of `curation.settlement`, as plain functions and on stored dialogues."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from curation import settlement
from curation.models import Adjudication, Dialogue, Strategy, Turn
from curation.review import reviewing

# ---- the rules as functions --------------------------------------------------------------------


def test_no_votes_keep_the_teachers_label():
    assert settlement.final_label("Affirmation", []) == ("Affirmation", False)
    assert settlement.final_label(None, []) == (None, False)


def test_agreeing_votes_decide_whatever_the_teacher_said():
    assert settlement.final_label("Affirmation", ["Offer Hope"]) == ("Offer Hope", False)
    assert settlement.final_label("Affirmation", ["Offer Hope", "Offer Hope"]) == (
        "Offer Hope",
        False,
    )
    # "No strategy" chosen explicitly is a vote too.
    assert settlement.final_label("Affirmation", [None, None]) == (None, False)


def test_a_confirmation_of_the_teacher_is_a_vote():
    assert settlement.final_label("Affirmation", ["Affirmation"]) == ("Affirmation", False)


def test_differing_votes_are_a_disagreement_with_a_suggestion():
    # Two against one: the majority is suggested.
    assert settlement.final_label("Affirmation", ["Offer Hope", "Offer Hope", "Affirmation"]) == (
        "Offer Hope",
        True,
    )
    # A tie that includes the teacher's label: the teacher's is suggested.
    assert settlement.final_label("Affirmation", ["Offer Hope", "Affirmation"]) == (
        "Affirmation",
        True,
    )
    # A tie without it: the first vote.
    assert settlement.final_label("Affirmation", ["Offer Hope", "Clarification"]) == (
        "Offer Hope",
        True,
    )


def test_one_proposed_text_is_taken_and_different_ones_conflict():
    assert settlement.final_text("As written.", []) == ("As written.", False)
    assert settlement.final_text("As written.", ["Better."]) == ("Better.", False)
    assert settlement.final_text("As written.", ["Better.", "Better."]) == ("Better.", False)
    assert settlement.final_text("As written.", ["Better.", "Other."]) == ("As written.", True)


# ---- on stored dialogues -----------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db


@pytest.fixture
def pair(seeds, settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    group = Group.objects.get(name="annotator")
    users = []
    for name in ("uno", "due"):
        user = User.objects.create_user(name)
        user.groups.add(group)
        users.append(user)
    return users


def _claimed(pair) -> Dialogue:
    dialogue = reviewing.claim_next(pair[0])
    assert reviewing.claim_next(pair[1]) == dialogue
    return dialogue


def _review(user, dialogue, decision, labels=None, texts=None) -> None:
    draft = reviewing.draft_for(dialogue, user)
    for index, name in (labels or {}).items():
        strategy = Strategy.objects.get(taxonomy="extes", name=name) if name else None
        reviewing.set_label(draft, dialogue.turns.get(index=index), strategy)
    for index, text in (texts or {}).items():
        reviewing.propose_edit(draft, dialogue.turns.get(index=index), text, dialogue.version)
    reasons = [] if decision == "accept" else ["unrealistic"]
    assert reviewing.submit(draft, decision, reasons, [], "")


def _supporters(dialogue) -> list[Turn]:
    return list(dialogue.turns.filter(role="supporter").order_by("index"))


@pytestmark_db
def test_agreement_stores_every_turns_final_text_and_strategy(pair):
    dialogue = _claimed(pair)
    first, second = _supporters(dialogue)[:2]
    _review(pair[0], dialogue, "accept", {first.index: "Offer Hope"}, {second.index: "Edited."})
    # Before the dialogue settles nothing final is stored, and the turn keeps its text.
    assert Turn.objects.get(pk=second.pk).final_text is None
    _review(pair[1], dialogue, "accept", {first.index: "Offer Hope"})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED and dialogue.is_settled
    turns = {t.index: t for t in dialogue.turns.select_related("final_strategy", "strategy")}
    assert turns[first.index].final_strategy.name == "Offer Hope"
    assert turns[second.index].final_text == "Edited." and turns[second.index].text == second.text
    # Untouched turns: the teacher's label and the text as written.
    for turn in turns.values():
        if turn.index not in (first.index, second.index):
            assert turn.final_text == turn.text
            assert turn.final_strategy_id == turn.strategy_id


@pytestmark_db
def test_conflicting_text_proposals_go_to_a_lead(pair):
    dialogue = _claimed(pair)
    turn = _supporters(dialogue)[0]
    _review(pair[0], dialogue, "accept", texts={turn.index: "One way."})
    _review(pair[1], dialogue, "accept", texts={turn.index: "Another way."})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION and not dialogue.is_settled
    adj = Adjudication.objects.get(dialogue=dialogue)
    assert adj.reasons == ["texts"]
    assert adj.details["texts"][str(turn.index)] == {"uno": "One way.", "due": "Another way."}


@pytestmark_db
def test_a_rejection_by_all_needs_no_lead_and_keeps_the_text_as_written(pair):
    dialogue = _claimed(pair)
    turn = _supporters(dialogue)[0]
    _review(pair[0], dialogue, "reject", {turn.index: "Offer Hope"}, {turn.index: "One."})
    _review(pair[1], dialogue, "reject", {turn.index: "Clarification"}, {turn.index: "Two."})
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.REJECTED and dialogue.is_settled
    stored = Turn.objects.get(pk=turn.pk)
    assert stored.final_text == turn.text and stored.final_strategy_id == turn.strategy_id
