"""With the broker (Redis) unreachable, starting work says so and leaves nothing behind: no 500,
no job or release row that no worker would ever start, and the form keeps what was typed.

The views enqueue after commit, so these tests commit for real (transactional database), and
Celery's app is pointed at a port where nothing listens: the publish fails as it would in
production, after Celery's own publish retries (under a second)."""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.urls import reverse

from curation.models import Dialogue, Release, Scenario
from generation.models import GenerationJob
from training.models import Experiment, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once
UNREACHABLE = b"The job queue (Redis) cannot be reached"


@pytest.fixture(autouse=True)
def _vocabulary(vocabulary_db) -> None:
    """Groups and scenarios first: the lead fixture needs its group."""


@pytest.fixture(autouse=True)
def broker_down(monkeypatch, settings) -> None:
    """Celery's app reads the Django settings once, so the broker URL is changed on the app too,
    and the connection pools it keeps are dropped (both come back after the test)."""
    from config.celery import app

    settings.CELERY_BROKER_URL = DOWN
    monkeypatch.setattr(app.conf, "broker_url", DOWN)
    monkeypatch.setattr(app, "_pool", None)
    monkeypatch.setattr(app.amqp, "_producer_pool", None)


def post(client, url: str, data: dict):
    started = time.monotonic()
    response = client.post(url, data)
    assert time.monotonic() - started < 15, "the publish should fail fast"
    return response


def job_form(**changes) -> dict:
    data = {
        "kind": "selfchat",
        "token": "tok-down",
        "teacher": "local",
        "model": "",
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 900,
        "seed": "",
        "duplicate_threshold": 0.92,
        "scenarios": [Scenario.objects.get(name="Anxiety and Panic").pk],
        "per_scenario": 7,
        "rounds": 2,
        "mode": "dialogue",
        "examples_per_prompt": 1,
        "exchanges": 6,
        "strategy_policy": "target",
        "dri_source_status": "accepted",
        "dri_dialogue_limit": 33,
        "dri_mask": "random",
        "dri_turns_per_dialogue": 1,
        "dri_strategies": "",
        "dri_candidates": 4,
        "dri_right_context": "on",
    }
    return data | changes


def test_the_generation_job_form_says_the_queue_is_down_and_keeps_its_values(client, lead):
    client.force_login(lead)
    response = post(client, reverse("generation-job-new"), job_form())
    assert response.status_code == 200
    assert UNREACHABLE in response.content
    assert b'name="per_scenario" value="7"' in response.content
    assert not GenerationJob.objects.exists()


def test_the_dri_form_says_the_queue_is_down_and_keeps_its_values(client, lead, seeds):
    # One accepted dialogue, so the form itself has nothing to refuse.
    Dialogue.objects.filter(pk=Dialogue.objects.order_by("id")[0].pk).update(status="accepted")
    client.force_login(lead)
    response = post(client, reverse("generation-job-new"), job_form(kind="dri", scenarios=[]))
    assert response.status_code == 200
    assert UNREACHABLE in response.content
    assert b'name="dri_dialogue_limit" value="33"' in response.content
    assert not GenerationJob.objects.exists()


def release_form(**changes) -> dict:
    data = {
        "name": "r-down",
        "licence": "CC BY-NC 4.0",
        "notes": "while Redis is away",
        "statuses": ["accepted"],
        "min_agreeing_reviews": 0,
        "dri": "on",
        "dpo_pairs": "best_vs_rest",
        "dpo_min_margin": 1.0,
        "train": 80,
        "valid": 10,
        "test": 10,
    }
    return data | changes


def test_the_release_form_says_the_queue_is_down_and_keeps_its_values(client, lead):
    client.force_login(lead)
    response = post(client, reverse("curation-release-new"), release_form())
    assert response.status_code == 200
    assert UNREACHABLE in response.content
    assert b'value="r-down"' in response.content and b"while Redis is away" in response.content
    assert not Release.objects.exists()
    # Sent again once it is back: the name is free.
    assert client.get(reverse("curation-release-list")).status_code == 200


def test_a_retry_with_the_queue_down_leaves_the_release_failed(client, lead):
    release = Release.objects.create(
        name="r-failed",
        split={"train": 80, "valid": 10, "test": 10},
        status="failed",
        error="OSError: disk full",
    )
    client.force_login(lead)
    response = post(client, reverse("curation-release-retry", args=[release.name]), {})
    assert response.status_code == 302
    release.refresh_from_db()
    assert (release.status, release.error) == ("failed", "OSError: disk full")
    page = client.get(response.url)
    assert UNREACHABLE in page.content and b"Retry build" in page.content


def test_a_training_resume_with_the_queue_down_leaves_the_job_as_it_was(client):
    user = User.objects.create_user("tara", password="pw-tara-123", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="training",
            codename__in=["view_trainingjob", "change_trainingjob"],
        )
    )
    release = Release.objects.create(
        name="r-ready", split={"train": 80, "valid": 10, "test": 10}, status="ready"
    )
    job = TrainingJob.objects.create(release=release, status="failed", error="CUDA out of memory")
    client.force_login(user)
    response = post(client, reverse("training-job-resume", args=[job.pk]), {})
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "CUDA out of memory")
    assert UNREACHABLE in client.get(response.url).content


def test_create_release_in_the_background_fails_and_leaves_no_release():
    with pytest.raises(CommandError, match="cannot be reached"):
        call_command("create_release", "r-cli-down", "--background", stdout=StringIO())
    assert not Release.objects.exists()


def test_generate_from_the_command_line_with_the_queue_down_leaves_no_job():
    with pytest.raises(CommandError, match="cannot be reached"):
        call_command(
            "generate", "--scenario", "Anxiety and Panic", "--count", "1", stdout=StringIO()
        )
    assert not GenerationJob.objects.exists()


def test_the_admins_resume_action_with_the_queue_down_leaves_the_job_as_it_was(client):
    user = User.objects.create_superuser("root-down", password="pw-root-123")
    release = Release.objects.create(
        name="r-admin", split={"train": 80, "valid": 10, "test": 10}, status="ready"
    )
    job = TrainingJob.objects.create(release=release, status="failed", error="killed")
    client.force_login(user)
    response = client.post(
        reverse("admin:training_trainingjob_changelist"),
        {"action": "resume_jobs", "_selected_action": [job.pk]},
        follow=True,
    )
    assert response.status_code == 200 and UNREACHABLE in response.content
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "killed")


def test_the_experiment_form_says_the_queue_is_down_and_keeps_its_values(client, superuser):
    release = Release.objects.create(
        name="r-exp-down",
        split={"train": 80, "valid": 10, "test": 10},
        counts={"train": 8, "valid": 1, "test": 1},
        status="ready",
    )
    client.force_login(superuser)
    data = {
        "token": "tok-exp-down",
        "release": release.pk,
        "arms": ["base", "sft"],
        "seeds": 3,
        "epochs": 1.0,
        "decoding": "greedy",
        "temperature": 0.7,
        "top_p": 0.9,
        "decoding_seed": 0,
        "max_new_tokens": 64,
    }
    response = post(client, reverse("training-experiment-new"), data)
    assert response.status_code == 200
    assert UNREACHABLE in response.content
    assert b'name="seeds" value="3"' in response.content
    assert not Experiment.objects.exists()


def test_the_agreement_page_computes_its_figures_itself_and_says_why(client, lead, settings):
    from curation.models import FigureSnapshot

    settings.LEAD_FIGURES_INLINE_MAX = -1  # a studio large enough for the worker to be asked
    client.force_login(lead)
    started = time.monotonic()
    page = client.get(reverse("curation-agreement")).content.decode()
    assert time.monotonic() - started < 15, "the publish should fail fast"
    assert "No worker could be reached (the broker is down)" in page
    assert "Computing the first figures" not in page and 'hx-trigger="every 3s"' not in page
    snapshot = FigureSnapshot.objects.get(name="agreement")
    assert snapshot.payload is not None and snapshot.requested_at is None  # asked again next time
