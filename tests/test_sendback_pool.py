"""A student scored on a pool of accepted dialogues that no release holds (a real tiny model, run
by the worker's function), its weakest replies sent to annotators: their rankings can then reach
a training split, which the test turns it was scored on never do."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse

from curation.models import Candidate, Dialogue, RankRound, ReleaseDialogue
from curation.releases.build import Filters, create_release
from tests import test_training_jobs
from training import jobs, sendback
from training.models import ReplyPool, TrainingJob

pytestmark = pytest.mark.usefixtures("seeds")

smollm2_folder = test_training_jobs.smollm2_folder
tokenizer = test_training_jobs.tokenizer
tiny_base = test_training_jobs.tiny_base
_folders = test_training_jobs._folders


@pytest.fixture
def trained(tiny_base) -> TrainingJob:
    ids = list(Dialogue.objects.order_by("id").values_list("pk", flat=True))
    Dialogue.objects.filter(pk__in=ids[:30]).update(status=Dialogue.Status.ACCEPTED)
    release = create_release("r-pool", Filters())
    Dialogue.objects.filter(pk__in=ids[30:]).update(status=Dialogue.Status.ACCEPTED)
    job = test_training_jobs.make_job(release, tiny_base)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.DONE
    return job


def lead() -> User:
    user = User.objects.create_user("lena", password="pw-lena-123", is_staff=True)
    user.groups.add(Group.objects.get(name="lead"))
    user.user_permissions.add(Permission.objects.get(codename="view_trainingjob"))
    return user


def test_the_pool_is_scored_and_its_weakest_replies_wait_for_the_teacher(
    trained, monkeypatch, client
):
    queued: list[int] = []
    monkeypatch.setattr("generation.tasks.start_job.delay", queued.append)
    pool_ids = list(sendback.pool_dialogues().values_list("pk", flat=True))
    released = set(ReleaseDialogue.objects.values_list("dialogue_id", flat=True))
    assert pool_ids and not released & set(pool_ids)
    pool = ReplyPool.objects.create(
        training_job=trained, rule="likelihood", count=3, pool_size=2, created_by=lead()
    )
    sendback.run_pool(pool.pk, "training@test")
    pool.refresh_from_db()
    assert (pool.status, pool.error) == (ReplyPool.Status.DONE, "")
    scored = Dialogue.objects.get(pk=pool_ids[0]).turns.filter(role="supporter").count()
    scored += Dialogue.objects.get(pk=pool_ids[1]).turns.filter(role="supporter").count()
    assert pool.outcome["scored"] == scored == pool.replies_total == pool.replies_done
    assert (pool.outcome["opened"], pool.outcome["waiting"]) == (0, 3)  # no candidates there
    rounds = RankRound.objects.filter(training_job_id=trained.pk)
    assert rounds.count() == 3
    assert {r.turn.dialogue_id for r in rounds} <= set(pool_ids[:2])
    assert all(r.source["contexts"] == "pool" for r in rounds)
    students = Candidate.objects.filter(author=Candidate.Author.STUDENT)
    assert all(c.provenance["pool"] == pool.pk for c in students)
    assert all(c.provenance["rule"] == "likelihood" for c in students)
    scores = [c.provenance["score"] for c in students.order_by("id")]
    assert scores == sorted(scores, reverse=True)  # the highest loss per token first
    [dri] = queued
    assert "The teacher writes candidates for 3 gaps" in pool.outcome["note"]
    assert dri == rounds.first().dri_job_id

    client.force_login(pool.created_by)
    page = client.get(trained.get_absolute_url()).content.decode()
    assert f"#{pool.pk}: 2 dialogues, the 3 weakest by likelihood" in page
    assert "A pool of accepted dialogues outside every release" in page


def test_the_form_queues_a_pool_and_says_what_cannot_work(trained, monkeypatch, client):
    sent: list[int] = []
    monkeypatch.setattr("training.views.score_pool.delay", sent.append)
    client.force_login(lead())
    url = reverse("training-job-send-back", args=[trained.pk])
    form = {"rule": "overlap", "count": 5, "contexts": "pool", "pool_size": 4}
    response = client.post(url, form)
    [pool] = ReplyPool.objects.all()
    assert sent == [pool.pk] and (pool.pool_size, pool.count, pool.rule) == (4, 5, "overlap")
    assert any(
        "scores the student on 4 accepted" in str(m) for m in response.wsgi_request._messages
    )
    refused = client.post(url, form | {"pool_size": 0})
    assert any("a number from 1 to 5000" in str(m) for m in refused.wsgi_request._messages)
    Dialogue.objects.filter(pk__in=sendback.pool_dialogues().values("pk")).update(
        status=Dialogue.Status.REJECTED
    )
    refused = client.post(url, form)
    assert any("no accepted dialogue is outside" in str(m) for m in refused.wsgi_request._messages)
    assert ReplyPool.objects.count() == 1
