from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from curation.models import Dialogue, Scenario
from generation import runner
from generation.models import GenerationJob, GenerationUnit, new_job

pytestmark = pytest.mark.django_db

LIST = reverse("generation-job-list")
NEW = reverse("generation-job-new")


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    """Views enqueue after commit; these tests check the rows, not the queue."""
    sent = []
    monkeypatch.setattr(
        "generation.views.start_job.delay_on_commit", lambda job_id: sent.append(job_id)
    )
    return sent


def form_data(**changes) -> dict:
    data = {
        "kind": "selfchat",
        "token": "tok-1",
        "teacher": "local",
        "model": "",
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 900,
        "seed": "",
        "duplicate_threshold": 0.92,
        "scenarios": [
            Scenario.objects.get(name="Anxiety and Panic").pk,
            Scenario.objects.get(name="Academic Stress").pk,
        ],
        "per_scenario": 3,
        "rounds": 2,
        "mode": "dialogue",
        "examples_per_prompt": 1,
        "exchanges": 6,
        "strategy_policy": "target",
        "dri_source_status": "accepted",
        "dri_dialogue_limit": 20,
        "dri_mask": "random",
        "dri_turns_per_dialogue": 1,
        "dri_strategies": "",
        "dri_candidates": 4,
        "dri_right_context": "on",
    }
    data.update(changes)
    return data


def make_job(**options) -> GenerationJob:
    job = new_job(
        "selfchat",
        teacher={"backend": "local", "model": "SmolLM2-135M-Instruct", "base_url": ""},
        sampling={"temperature": 0.9, "top_p": 0.95, "max_tokens": 1200, "seed": None},
        scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
        **options,
    )
    return job


def test_pages_require_login(client):
    job = make_job()
    for url in (LIST, NEW, reverse("generation-job-detail", args=[job.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response.url


def test_generation_pages_are_for_leads(client, annotator):
    """Annotators never open them: a job page lists the dialogues it made and how reviews
    settled them, which blind review keeps from annotators."""
    job = make_job()
    client.force_login(annotator)
    assert client.get(LIST).status_code == 403
    assert client.get(reverse("generation-job-detail", args=[job.pk])).status_code == 403
    assert b'href="/generation/' not in client.get(reverse("curation-review-home")).content
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, form_data()).status_code == 403
    assert client.post(reverse("generation-job-cancel", args=[job.pk])).status_code == 403
    assert GenerationJob.objects.count() == 1


def test_lead_starts_a_job_from_the_form(client, lead, _no_broker):
    client.force_login(lead)
    page = client.get(NEW)
    assert page.status_code == 200
    assert b"Local model" in page.content
    response = client.post(NEW, form_data())
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and response.url == reverse(
        "generation-job-detail", args=[job.pk]
    )
    assert (job.kind, job.per_scenario, job.rounds, job.created_by) == ("selfchat", 3, 2, lead)
    assert job.teacher == {"backend": "local", "model": "SmolLM2-135M-Instruct", "base_url": ""}
    assert job.sampling == {"temperature": 0.8, "top_p": 0.9, "max_tokens": 900, "seed": None}
    assert job.prompt_version.startswith("dialogue-")
    assert sorted(job.scenarios.values_list("name", flat=True)) == [
        "Academic Stress",
        "Anxiety and Panic",
    ]
    assert _no_broker == [job.pk]


def test_a_double_submit_creates_one_job(client, lead, _no_broker):
    client.force_login(lead)
    first = client.post(NEW, form_data())
    second = client.post(NEW, form_data())
    assert GenerationJob.objects.count() == 1
    assert first.url == second.url
    assert _no_broker == [GenerationJob.objects.get().pk]


def test_form_errors_are_shown(client, lead):
    client.force_login(lead)
    response = client.post(NEW, form_data(scenarios=[], temperature=5))
    assert response.status_code == 200
    assert b"Pick at least one scenario." in response.content
    assert GenerationJob.objects.count() == 0


def test_the_configured_endpoint_is_offered_and_its_key_never_shown(client, lead, monkeypatch):
    monkeypatch.setenv("EXTES_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("EXTES_TEACHER_MODEL", "big-teacher")
    monkeypatch.setenv("EXTES_TEACHER_API_KEY", "sk-very-secret-key")
    client.force_login(lead)
    page = client.get(NEW).content.decode()
    assert "big-teacher at http://127.0.0.1:9/v1" in page
    client.post(NEW, form_data(teacher="http"))
    job = GenerationJob.objects.get()
    assert job.teacher == {
        "backend": "http",
        "model": "big-teacher",
        "base_url": "http://127.0.0.1:9/v1",
    }
    detail = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
    assert "sk-very-secret-key" not in page + detail + str(job.teacher) + str(job.sampling)


def test_dri_job_from_the_form(client, lead, seeds):
    Dialogue.objects.filter(pk=Dialogue.objects.order_by("id")[0].pk).update(status="accepted")
    client.force_login(lead)
    client.post(
        NEW,
        form_data(
            kind="dri",
            scenarios=[],
            dri_candidates=5,
            dri_mask="strategy",
            dri_strategies="Affirmation, Offer Hope",
            dri_right_context="",
        ),
    )
    job = GenerationJob.objects.get()
    assert (job.kind, job.dri_candidates, job.dri_mask) == ("dri", 5, "strategy")
    assert job.dri_strategies == ["Affirmation", "Offer Hope"]
    assert job.dri_right_context is False
    assert job.prompt_version.startswith("dri-")


def test_job_page_polls_while_running_and_stops_when_finished(client, lead):
    job = make_job(per_scenario=4)
    client.force_login(lead)
    url = reverse("generation-job-detail", args=[job.pk])
    page = client.get(url).content.decode()
    assert 'hx-trigger="every 2s"' in page
    assert "0 of 4 units finished" in page
    partial = client.get(url, headers={"HX-Request": "true", "HX-Target": "progress"})
    assert partial.content.decode().lstrip().startswith('<section id="progress"')
    job.request_cancel()
    finished = client.get(
        url, headers={"HX-Request": "true", "HX-Target": "progress"}
    ).content.decode()
    assert "every 2s" not in finished
    assert "Cancelled" in finished


def test_lead_cancels_a_job(client, lead):
    job = make_job()
    client.force_login(lead)
    response = client.post(reverse("generation-job-cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert b"cancelled. What it made so far is kept." in response.content
    again = client.post(reverse("generation-job-cancel", args=[job.pk]), follow=True)
    assert b"had already ended" in again.content


def test_failure_samples_show_the_raw_output(client, lead):
    from generation.models import GenerationFailure, GenerationUnit

    job = make_job()
    unit = GenerationUnit.objects.create(
        job=job, scenario=job.scenarios.get(), slot=0, status="failed"
    )
    GenerationFailure.objects.create(
        job=job,
        unit=unit,
        attempt=1,
        failure_class="invalid_json",
        detail="not valid JSON",
        raw_output="{broken <json>",
    )
    client.force_login(lead)
    page = client.get(reverse("generation-job-detail", args=[job.pk]), {"failure": "invalid_json"})
    body = page.content.decode()
    assert "{broken &lt;json&gt;" in body
    assert "invalid_json" in body


def test_empty_job_list(client, lead):
    client.force_login(lead)
    assert b"No generation job yet." in client.get(LIST).content


def test_job_page_says_why_units_failed(client, lead):
    from generation.models import GenerationUnit

    job = make_job()
    GenerationUnit.objects.create(
        job=job,
        scenario=job.scenarios.get(),
        slot=0,
        status="failed",
        error="RuntimeError: bug in the prompt builder",
    )
    client.force_login(lead)
    body = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
    assert "1 unit: RuntimeError: bug in the prompt builder" in body


# ---- the new-job form -------------------------------------------------------------------------


def fieldset(page: str, css_class: str) -> str:
    match = re.search(rf'<fieldset class="{css_class}">(.*?)</fieldset>', page, re.DOTALL)
    assert match, f"no fieldset {css_class}"
    return match.group(1)


def test_the_form_renders_each_field_once_and_the_token_without_a_label(client, lead):
    client.force_login(lead)
    page = client.get(NEW).content.decode()
    assert page.count('name="mode"') == 1
    assert page.count('name="model"') == 1
    assert page.count('name="token"') == 1
    assert 'type="hidden" name="token"' in page
    assert 'for="id_token"' not in page and "Token:" not in page


def test_each_kind_has_its_own_fieldset(client, lead):
    client.force_login(lead)
    page = client.get(NEW).content.decode()
    selfchat, dri = fieldset(page, "kind-selfchat"), fieldset(page, "kind-dri")
    for name in ("per_scenario", "rounds", "mode", "exchanges", "strategy_policy"):
        assert f'name="{name}"' in selfchat and f'name="{name}"' not in dri
    for name in ("dri_source_status", "dri_candidates", "dri_mask", "dri_right_context"):
        assert f'name="{name}"' in dri and f'name="{name}"' not in selfchat
    for name in ("temperature", "scenarios", "teacher"):
        assert f'name="{name}"' not in selfchat + dri


def test_the_page_title_follows_the_kind_asked_for(client, lead):
    client.force_login(lead)
    assert "<title>New generation job" in client.get(NEW).content.decode()
    dri = client.get(NEW, {"kind": "dri"}).content.decode()
    assert "<title>New DRI job" in dri
    assert re.search(r'value="dri"[^>]*checked', dri)


def test_dri_is_refused_at_the_form_when_no_dialogue_has_the_status(client, lead, seeds):
    pending = Dialogue.objects.filter(status="pending").count()
    Dialogue.objects.filter(pk=Dialogue.objects.order_by("id")[0].pk).update(status="rejected")
    client.force_login(lead)
    response = client.post(NEW, form_data(kind="dri", scenarios=[]))
    assert response.status_code == 200
    assert GenerationJob.objects.count() == 0
    errors = response.context["form"].errors["dri_source_status"]
    assert errors == [
        "No dialogue is accepted yet, so DRI has nothing to fill. Dialogues by status: "
        f"{pending - 1} pending, 0 in review, 0 needs adjudication, 0 accepted, 1 rejected. "
        "Review some first, or pick another status."
    ]
    assert "nothing to fill" in response.content.decode()


def test_dri_refusal_counts_only_the_chosen_scenarios(client, lead, seeds):
    anxiety = Scenario.objects.get(name="Anxiety and Panic")
    elsewhere = Dialogue.objects.exclude(scenario=anxiety).order_by("id")[0]
    Dialogue.objects.filter(pk=elsewhere.pk).update(status="accepted")
    client.force_login(lead)
    response = client.post(NEW, form_data(kind="dri", scenarios=[anxiety.pk]))
    (error,) = response.context["form"].errors["dri_source_status"]
    assert error.startswith("No dialogue of the chosen scenarios is accepted yet")
    assert "0 accepted" in error
    assert GenerationJob.objects.count() == 0
    client.post(NEW, form_data(kind="dri", scenarios=[]))  # all scenarios: one to take
    assert GenerationJob.objects.get().kind == "dri"


def test_a_selfchat_job_does_not_need_dialogues_for_dri(client, lead):
    client.force_login(lead)
    client.post(NEW, form_data())
    assert GenerationJob.objects.get().kind == "selfchat"


def test_the_form_shows_the_dialogues_per_status_beside_the_dri_source(client, lead, seeds):
    Dialogue.objects.filter(pk=Dialogue.objects.order_by("id")[0].pk).update(status="in_review")
    pending = Dialogue.objects.filter(status="pending").count()
    client.force_login(lead)
    dri = fieldset(client.get(NEW).content.decode(), "kind-dri")
    assert f"Dialogues now: {pending} pending, 1 in review, 0 needs adjudication" in dri


# ---- live progress on the job page ------------------------------------------------------------


def running_unit(job: GenerationJob, **fields) -> GenerationUnit:
    now = timezone.now()
    return GenerationUnit.objects.create(
        job=job,
        scenario=job.scenarios.get(),
        slot=0,
        status="running",
        claimed_by="w",
        claimed_at=now - timedelta(minutes=2),
        heartbeat_at=now,
        **fields,
    )


def test_the_job_page_shows_what_a_running_unit_did_so_far(client, lead):
    job = make_job(mode="turns", exchanges=6)
    GenerationJob.objects.filter(pk=job.pk).update(status="running")
    answered = timezone.now() - timedelta(seconds=30)
    running_unit(
        job, calls=5, prompt_tokens=900, completion_tokens=300, turns=4, last_call_at=answered
    )
    client.force_login(lead)
    url = reverse("generation-job-detail", args=[job.pk])
    body = client.get(url, headers={"HX-Request": "true", "HX-Target": "progress"}).content
    text = " ".join(body.decode().split())
    assert "Anxiety and Panic, dialogue 1: 5 teacher calls, 1,200 tokens, 4 of 12 turns" in text
    assert f'last answer <time datetime="{answered.isoformat()}" data-relative>30' in text
    assert (
        "<strong>1,200</strong> tokens (5 calls)" in text
    )  # the job's totals count the running unit too
    assert 'class="big working"' in text


def test_a_unit_without_an_answer_yet_says_since_when_it_waits(client, lead):
    job = make_job()
    GenerationJob.objects.filter(pk=job.pk).update(status="running")
    unit = running_unit(job)
    client.force_login(lead)
    text = " ".join(
        client.get(reverse("generation-job-detail", args=[job.pk])).content.decode().split()
    )
    assert (
        "waiting for the teacher's first answer, since "
        f'<time datetime="{unit.claimed_at.isoformat()}" data-relative>2' in text
    )


def test_the_job_page_says_while_the_local_model_is_prepared(client, lead):
    job = make_job()
    GenerationJob.objects.filter(pk=job.pk).update(status="running")
    unit = running_unit(job, activity=runner.PREPARING_LOCAL_MODEL)
    client.force_login(lead)
    url = reverse("generation-job-detail", args=[job.pk])
    assert "Preparing the local model (first use on this worker" in client.get(url).content.decode()
    GenerationUnit.objects.filter(pk=unit.pk).update(activity="")
    assert "Preparing the local model" not in client.get(url).content.decode()


def test_the_bar_counts_the_turns_of_running_units(client, lead):
    job = make_job(mode="turns", exchanges=6, per_scenario=2)
    GenerationJob.objects.filter(pk=job.pk).update(status="running")
    GenerationUnit.objects.create(job=job, scenario=job.scenarios.get(), slot=1, status="done")
    running_unit(job, turns=6)
    assert job.progress()["percent"] == 75  # one of two done, the other half written
    client.force_login(lead)
    body = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
    assert 'value="75"' in body
    assert "1 of 2 units finished (75%), 1 running" in body


def test_relative_times_carry_their_datetime(client, lead):
    job = make_job()
    client.force_login(lead)
    iso = job.created_at.isoformat()
    for url in (LIST, reverse("generation-job-detail", args=[job.pk])):
        body = client.get(url).content.decode()
        assert f'<time datetime="{iso}" data-relative>now</time>' in body
    assert "js/relative-time.js" in client.get(LIST).content.decode()


def test_the_job_page_counts_its_dialogues_no_annotator_sees_yet(client, lead, seeds):
    """The screen in a worker holds a new dialogue for a moment; the crisis gate for a lead.
    The job page says how many, as its progress polls, and marks them in its latest list."""
    job = make_job(per_scenario=3)
    made = list(Dialogue.objects.order_by("id")[:3])
    for slot, (dialogue, status) in enumerate(
        zip(made, ("screening", "flagged", "none"), strict=True)
    ):
        Dialogue.objects.filter(pk=dialogue.pk).update(safety_status=status)
        GenerationUnit.objects.create(
            job=job,
            scenario=job.scenarios.get(),
            slot=slot,
            status="done",
            dialogue=dialogue,
            created=1,
            finished_at=timezone.now(),
        )
    client.force_login(lead)
    url = reverse("generation-job-detail", args=[job.pk])
    body = client.get(url, headers={"HX-Request": "true", "HX-Target": "progress"}).content
    text = " ".join(body.decode().split())
    assert "<strong>1</strong> waiting for the safety screen" in text
    assert "<strong>1</strong> held for a lead: crisis flag" in text
    assert text.count('<span class="pill">waiting for the safety screen</span>') == 1
    assert text.count('<span class="pill">held: crisis flag</span>') == 1

    Dialogue.objects.filter(pk__in=[d.pk for d in made]).update(safety_status="none")
    text = client.get(url, headers={"HX-Request": "true", "HX-Target": "progress"}).content
    assert b"waiting for the safety screen" not in text and b"crisis flag" not in text
