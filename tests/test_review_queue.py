"""The review queue: leases, overlap, skips, blind submissions, status, optimistic locking."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.utils import timezone

from curation.models import Assignment, Dialogue, Event, Review, Strategy
from curation.review import reviewing

pytestmark = pytest.mark.usefixtures("seeds")


def annotators(n: int) -> list[User]:
    group = Group.objects.get(name="annotator")
    users = []
    for i in range(n):
        user = User.objects.create_user(f"ann{i}", password="pw-123456")
        user.groups.add(group)
        users.append(user)
    return users


@pytest.mark.django_db
def test_claim_reserves_a_dialogue_and_next_returns_the_held_one():
    (ann,) = annotators(1)
    first = reviewing.claim_next(ann)
    assert first.status == Dialogue.Status.IN_REVIEW
    assert Assignment.objects.get(dialogue=first, annotator=ann).expires_at > timezone.now()
    assert reviewing.claim_next(ann) == first


@pytest.mark.django_db
def test_overlap_is_the_configured_number_of_reviews(settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    a, b, c = annotators(3)
    da, db, dc = reviewing.claim_next(a), reviewing.claim_next(b), reviewing.claim_next(c)
    assert da == db  # two reviewers per dialogue
    assert dc != da  # the third goes elsewhere


@pytest.mark.django_db
def test_submitting_moves_on_and_never_offers_the_same_dialogue_again(settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    (ann,) = annotators(1)
    dialogue = reviewing.claim_next(ann)
    review = reviewing.draft_for(dialogue, ann)
    assert reviewing.submit(review, "accept", [], [], "")
    assert not reviewing.submit(review, "reject", ["x"], [], "")  # a second submit changes nothing
    dialogue.refresh_from_db()
    assert (dialogue.status, dialogue.reviews_done) == (Dialogue.Status.ACCEPTED, 1)
    assert Review.objects.get(pk=review.pk).decision == "accept"
    assert reviewing.claim_next(ann) != dialogue


@pytest.mark.django_db
def test_disagreement_needs_adjudication_and_agreement_settles(settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    a, b = annotators(2)
    dialogue = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == dialogue
    reviewing.submit(reviewing.draft_for(dialogue, a), "accept", [], [], "")
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.IN_REVIEW
    reviewing.submit(reviewing.draft_for(dialogue, b), "reject", ["unrealistic"], [], "")
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION

    other = reviewing.claim_next(a)
    reviewing.claim_next(b)
    for user in (a, b):
        reviewing.submit(reviewing.draft_for(other, user), "reject", ["repetitive"], [], "")
    other.refresh_from_db()
    assert other.status == Dialogue.Status.REJECTED


@pytest.mark.django_db
def test_skip_gives_the_dialogue_back_without_penalty(settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    a, b = annotators(2)
    dialogue = reviewing.claim_next(a)
    reviewing.draft_for(dialogue, a)
    reviewing.skip(dialogue, a)
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.PENDING
    assert not Review.objects.filter(annotator=a).exists()
    assert reviewing.claim_next(a) != dialogue
    assert reviewing.claim_next(b) == dialogue
    assert Event.objects.filter(dialogue=dialogue, action="skipped").exists()


@pytest.mark.django_db
def test_an_expired_lease_frees_the_place(settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    a, b = annotators(2)
    dialogue = reviewing.claim_next(a)
    Assignment.objects.filter(annotator=a).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert reviewing.claim_next(b) == dialogue


@pytest.mark.django_db
def test_crisis_flagged_dialogues_go_to_leads_not_annotators(settings):
    settings.REVIEWS_PER_DIALOGUE = 1
    a, b = annotators(2)
    dialogue = reviewing.claim_next(a)
    reviewing.submit(
        reviewing.draft_for(dialogue, a), "reject", [], ["crisis"], "mentions self-harm"
    )
    dialogue.refresh_from_db()
    assert dialogue.crisis_flagged and dialogue.safety_notes["source"] == "annotator"
    Dialogue.objects.update(safety_status="flagged")
    assert reviewing.claim_next(b) is None


@pytest.mark.django_db
def test_labels_are_per_annotator_and_closed_after_submit():
    (ann,) = annotators(1)
    dialogue = reviewing.claim_next(ann)
    review = reviewing.draft_for(dialogue, ann)
    turn = dialogue.turns.filter(role="supporter").exclude(strategy__name="Offer Hope").first()
    teacher_label = turn.strategy_id
    hope = Strategy.objects.get(taxonomy="extes", name="Offer Hope")
    reviewing.set_label(review, turn, hope)
    reviewing.set_label(review, turn, hope)
    assert review.labels.get().strategy == hope
    turn.refresh_from_db()
    assert turn.strategy_id == teacher_label  # the label is the annotator's; the turn keeps its own
    reviewing.submit(review, "accept", [], [], "")
    with pytest.raises(reviewing.NotAllowed, match="already submitted") as refused:
        reviewing.set_label(review, turn, hope)
    assert refused.value.status == 403


@pytest.mark.django_db
def test_edits_are_proposals_kept_apart_until_the_dialogue_settles():
    a, b = annotators(2)
    dialogue = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == dialogue
    turn = dialogue.turns.get(index=1)
    original = turn.text
    mine = reviewing.propose_edit(reviewing.draft_for(dialogue, a), turn, "First fix.", 1, "typo")
    theirs = reviewing.propose_edit(reviewing.draft_for(dialogue, b), turn, "Second fix.", 1)
    turn.refresh_from_db()
    dialogue.refresh_from_db()
    assert turn.text == original and turn.final_text is None  # nobody else's text leaks in
    assert dialogue.version == 1
    assert (mine.before, mine.after, mine.reason) == (original, "First fix.", "typo")
    assert theirs.after == "Second fix."
    # Proposing the text as written again withdraws the proposal.
    assert reviewing.propose_edit(reviewing.draft_for(dialogue, a), turn, original, 1) is None
    assert turn.edits.get() == theirs


@pytest.mark.dbsensitive
@pytest.mark.usefixtures("vocabulary_db")
def test_simultaneous_claims_never_exceed_the_overlap(settings, transactional_db):
    settings.REVIEWS_PER_DIALOGUE = 2
    from curation.importing import import_file
    from tests.conftest import SEED_FILE

    import_file(SEED_FILE, "extes", origin="seed")
    users = annotators(12)
    barrier = threading.Barrier(len(users))
    claimed: dict[str, int | None] = {}

    def claim(user: User) -> None:
        try:
            barrier.wait()
            dialogue = reviewing.claim_next(user)
            claimed[user.username] = dialogue.pk if dialogue else None
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(claimed.values())
    from collections import Counter

    assert max(Counter(claimed.values()).values()) <= 2
    for pk in set(claimed.values()):
        live = Assignment.objects.filter(dialogue_id=pk, released_at__isnull=True).count()
        assert live <= 2
