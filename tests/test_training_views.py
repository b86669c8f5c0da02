"""Training from the admin and the job pages: the release action and its form, one job per form,
the live page in each state, downloads, cancel and resume, and who may see what."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from curation.models import Dialogue, Release
from curation.releases.build import create_release, new_release, write_files
from tests import test_training_sft
from training import jobs
from training.evaluate import Sample, reply_scores
from training.models import TrainingJob
from training.views import loss_curve

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

smollm2_folder = test_training_sft.smollm2_folder

NEW = reverse("admin:training_trainingjob_new")
RELEASES = reverse("admin:curation_release_changelist")


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_DIR = tmp_path / "training"


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Jobs enqueue after commit; these tests check the rows, not the queue."""
    sent: list[int] = []
    monkeypatch.setattr("training.admin.run_job.delay_on_commit", sent.append)
    monkeypatch.setattr("training.views.run_job.delay_on_commit", sent.append)
    return sent


@pytest.fixture
def release() -> Release:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    return create_release("r-views")


def staff_user(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name, password=f"pw-{name}-123", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="training", codename__in=codenames)
    )
    return user


@pytest.fixture
def trainer() -> User:
    return staff_user("tara", "view_trainingjob", "change_trainingjob", "add_trainingjob")


@pytest.fixture
def watcher() -> User:
    return staff_user("walt", "view_trainingjob")


def form(release: Release, **changes) -> dict:
    data = {
        "token": "tok-1",
        "release": release.pk,
        "variant": "sft_dri",
        "base_model": "",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "target_modules": "q_proj, v_proj",
        "lr": 0.0003,
        "epochs": 2,
        "max_steps": "",
        "batch_size": 8,
        "max_length": "",
        "seed": 7,
        "save_every": 25,
    }
    return data | changes


def make_job(release: Release, **values) -> TrainingJob:
    hyperparameters = {"lr": 0.0002, "target_modules": ["q_proj", "v_proj"]}
    return TrainingJob.objects.create(release=release, hyperparameters=hyperparameters, **values)


# ---- the admin: action, form, job list --------------------------------------------------------


def test_the_release_action_leads_to_a_form_with_defaults_and_the_suggested_length(
    client, superuser, release, smollm2_folder, settings
):
    settings.MODELS_DIR = smollm2_folder.parent  # the local model's tokenizer counts the tokens
    write_files(release, release.folder)
    client.force_login(superuser)
    response = client.post(RELEASES, {"action": "train_student", "_selected_action": [release.pk]})
    assert response.status_code == 302
    assert response.url == f"{NEW}?release={release.pk}"

    page = client.get(response.url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Train a student" in html
    assert f'<option value="{release.pk}" selected>r-views</option>' in html
    assert 'value="0.0002"' in html  # the learning rate
    assert 'value="q_proj,k_proj,v_proj,o_proj"' in html
    suggestion = jobs.suggest_max_length(release, "sft", "")
    assert suggestion.tokens is not None
    assert f"sft: <strong>{suggestion.tokens}</strong> tokens" in html
    assert "counted with the base model&#x27;s tokenizer" in html
    assert TrainingJob.objects.count() == 0


def test_a_form_submitted_twice_creates_one_job(client, superuser, release, queued):
    client.force_login(superuser)
    first = client.post(NEW, form(release))
    second = client.post(NEW, form(release))  # a double click sends the same token again
    job = TrainingJob.objects.get()
    assert first.status_code == second.status_code == 302
    assert first.url == second.url == job.get_absolute_url()
    assert queued == [job.pk]
    assert (job.release, job.variant, job.seed, job.created_by) == (
        release,
        "sft_dri",
        7,
        superuser,
    )
    assert job.hyperparameters == {
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
        "lr": 0.0003,
        "epochs": 2.0,
        "max_steps": None,
        "batch_size": 8,
        "max_length": None,
        "save_every": 25,
    }
    assert job.status == TrainingJob.Status.QUEUED
    client.post(NEW, form(release, token="tok-2"))  # a new form is a new job
    assert TrainingJob.objects.count() == 2


def test_wrong_settings_are_shown_and_create_nothing(client, superuser, release, queued, tmp_path):
    client.force_login(superuser)
    response = client.post(
        NEW,
        form(release, base_model=str(tmp_path / "no-model"), target_modules="q_proj, not a name"),
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "no such folder with a config.json" in html
    assert "Not a module name: not a name" in html
    building = new_release("r-building")
    response = client.post(NEW, form(release) | {"release": building.pk})
    assert "Select a valid choice" in response.content.decode()
    assert (TrainingJob.objects.count(), queued) == (0, [])


def test_a_release_without_test_dialogues_is_trained_only_when_asked(client, superuser, queued):
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    small = create_release("r1", split={"train": 100, "valid": 0, "test": 0})
    count = small.counts["train"]
    refusal = (
        f"Release r1 has no test dialogues (split {count}/0/0): the student could be trained "
        "but not evaluated. Cut a release with a test share, or tick &#x27;Train without "
        "evaluation&#x27;."
    )
    client.force_login(superuser)
    page = client.get(f"{NEW}?release={small.pk}").content.decode()
    assert f'<li class="warning">{refusal}</li>' in page  # said before anything is sent
    assert 'name="skip_evaluation"' in page

    refused = client.post(NEW, form(small))
    assert refused.status_code == 200
    assert f'<p class="errornote">{refusal}</p>' in refused.content.decode()
    assert (TrainingJob.objects.count(), queued) == (0, [])

    started = client.post(NEW, form(small, skip_evaluation="on"))
    job = TrainingJob.objects.get()
    assert started.url == job.get_absolute_url()
    assert (job.evaluate, queued) == (False, [job.pk])

    evaluated = create_release("r2")
    assert "warning" not in client.get(f"{NEW}?release={evaluated.pk}").content.decode()
    client.post(NEW, form(evaluated, token="tok-2"))
    assert TrainingJob.objects.get(release=evaluated).evaluate

    empty = create_release("r0", split={"train": 0, "valid": 0, "test": 100})
    response = client.post(NEW, form(empty, token="tok-3", skip_evaluation="on"))
    assert "Release r0 has no training dialogues" in response.content.decode()
    assert TrainingJob.objects.count() == 2


def test_the_action_takes_one_ready_release(client, superuser, release):
    client.force_login(superuser)
    other = new_release("r-building")
    both = client.post(
        RELEASES,
        {"action": "train_student", "_selected_action": [release.pk, other.pk]},
        follow=True,
    )
    assert "Pick one release to train on." in both.content.decode()
    building = client.post(
        RELEASES, {"action": "train_student", "_selected_action": [other.pk]}, follow=True
    )
    assert "only a ready release can be trained on" in building.content.decode()
    assert NEW not in [url for url, _ in building.redirect_chain]


def test_training_needs_the_permission_to_add_jobs(client, watcher, annotator, release, queued):
    client.force_login(watcher)  # staff, may watch jobs, may not start them
    assert client.get(f"{NEW}?release={release.pk}").status_code == 403
    assert client.post(NEW, form(release)).status_code == 403
    watcher.user_permissions.add(Permission.objects.get(codename="view_release"))
    releases = client.get(RELEASES)
    assert releases.status_code == 200
    assert "Train a student on this release" not in releases.content.decode()
    client.force_login(annotator)  # not staff: the admin sends them to its login page
    assert client.get(NEW).status_code == 302
    assert (TrainingJob.objects.count(), queued) == (0, [])


def test_the_job_admin_lists_progress_and_cancels_and_resumes(client, superuser, release, queued):
    client.force_login(superuser)
    running = make_job(release, status="running", worker="w", step=30, total_steps=100)
    failed = make_job(release, status="failed", error="boom")
    changelist = reverse("admin:training_trainingjob_changelist")
    evaluating = make_job(
        release, status="evaluating", worker="w", step=100, total_steps=100, replies_done=12
    )
    TrainingJob.objects.filter(pk=evaluating.pk).update(replies_total=40)
    page = client.get(changelist)
    assert page.status_code == 200
    assert "30/100 steps (30%)" in page.content.decode()
    assert "12/40 replies (30%)" in page.content.decode()
    change = client.get(reverse("admin:training_trainingjob_change", args=[running.pk]))
    assert change.status_code == 200
    add = client.get(reverse("admin:training_trainingjob_add"))
    assert (add.status_code, add.url) == (302, NEW)

    client.post(changelist, {"action": "cancel_jobs", "_selected_action": [running.pk]})
    running.refresh_from_db()
    assert running.cancel_requested
    client.post(changelist, {"action": "resume_jobs", "_selected_action": [running.pk, failed.pk]})
    failed.refresh_from_db()
    assert failed.status == TrainingJob.Status.QUEUED
    assert queued == [failed.pk]  # the running one is not abandoned: left alone


# ---- the job page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("anonymous", 302),
        ("annotator", 403),
        ("lead", 403),
        ("staff_without_permission", 403),
        ("watcher", 200),
        ("superuser", 200),
    ],
)
def test_job_pages_are_for_staff_with_the_training_permission(
    client, request, release, who, expected
):
    job = make_job(release)
    if who == "staff_without_permission":
        client.force_login(staff_user("sam"))
    elif who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    for url in (
        reverse("training-job-list"),
        job.get_absolute_url(),
    ):
        assert client.get(url).status_code == expected, url
    for name in ("training-job-adapter", "training-job-card", "training-job-report"):
        # Nothing to download yet: 404 for those who may look, else the same refusal.
        status = client.get(reverse(name, args=[job.pk])).status_code
        assert status == (404 if expected == 200 else expected), name


def test_a_queued_job_page_polls_and_offers_cancel(client, superuser, release):
    job = make_job(release)
    client.force_login(superuser)
    html = client.get(job.get_absolute_url()).content.decode()
    assert "Queued" in html
    assert 'hx-trigger="every 3s"' in html
    assert "waits for a training worker" in html
    assert reverse("training-job-cancel", args=[job.pk]) in html
    assert "No step finished yet." in html
    assert f'<a href="{reverse("training-job-list")}">Training</a>' in html  # in the menu
    listing = client.get(reverse("training-job-list")).content.decode()
    assert job.get_absolute_url() in listing


def test_a_running_job_shows_its_progress_loss_curve_and_log(client, watcher, release):
    losses = [[step, 3.0 - step / 20] for step in range(1, 31)]
    job = make_job(
        release,
        status="running",
        worker="training@box",
        phase="Training",
        step=30,
        total_steps=100,
        loss=1.5,
        tokens_per_s=118.4,
        eta_s=125,
        losses=losses,
        log_tail="10:00:01 step 29/100 loss 1.5500\n10:00:05 step 30/100 loss 1.5000",
    )
    client.force_login(watcher)
    html = client.get(job.get_absolute_url()).content.decode()
    assert '<progress class="big" max="100" value="30">' in html
    assert "<strong>30</strong> of 100 steps" in html
    assert "target_modules <code>q_proj, v_proj</code>" in html
    assert "<strong>1.5000</strong> loss" in html
    assert "<strong>118</strong> tokens/s" in html
    assert "<strong>2 min 05 s</strong> left" in html
    assert html.count("<polyline") == 2
    assert "step 30/100 loss 1.5000" in html
    assert reverse("training-job-cancel", args=[job.pk]) not in html  # a watcher cannot cancel

    partial = client.get(job.get_absolute_url(), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="live")
    text = partial.content.decode()
    assert text.lstrip().startswith('<section id="live"')
    assert "<html" not in text and "<polyline" in text


def scored_rows(count: int, base: str, student: str, nll: dict | None = None) -> list[dict]:
    """`count` rows of a job's samples, scored as the worker scores them: the base writes `base`
    every time, the student `student` ("reference": the written reply itself);
    each written reply has an NLL of 30 in 10 tokens under both, unless `nll` says otherwise."""
    nll = nll or {}
    rows = []
    for k in range(count):
        reference = f"I am so sorry about your job, number {k}; that sounds really hard."
        replies = {
            side: reference if reply == "reference" else reply
            for side, reply in (("base", base), ("student", student))
        }
        row = {"id": str(k), "turn": 2, "context": [f"user: story {k}"], "reference": reference}
        for side, reply in replies.items():
            sample = Sample(0, 2, [], reference, reply, nll=nll.get(side, 30.0), tokens=10)
            [scores] = reply_scores([sample])
            row |= {side: reply, f"{side}_scores": scores}
        rows.append(row)
    return rows


def test_an_evaluating_job_counts_replies_on_its_bar(client, watcher, release):
    job = make_job(
        release,
        status="evaluating",
        worker="training@box",
        phase="Evaluating the base: 12 of 20 replies",
        step=100,
        total_steps=100,
        replies_done=12,
        replies_total=40,
        resolved_config={"max_length": 192, "valid_loss": 1.23456},
        updated_at=timezone.now() - timedelta(seconds=37),
    )
    client.force_login(watcher)
    partial = client.get(job.get_absolute_url(), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="live")
    html = partial.content.decode()
    assert '<progress class="big" max="100" value="30">' in html  # 12 of 40, not 100 of 100
    assert "<strong>12</strong> of 40 replies generated" in html
    assert "<strong>100</strong> of 100 steps" in html
    assert "<strong>1.2346</strong> valid loss" in html
    # The page says how long ago; a script keeps every such time current between polls.
    updated = timezone.localtime(job.updated_at).isoformat()
    assert f'Updated <time datetime="{updated}" data-relative>0\xa0minutes ago</time>' in html
    assert 'hx-trigger="every 3s"' in html
    listing = client.get(reverse("training-job-list")).content.decode()
    assert "12/40 replies" in listing
    created = timezone.localtime(job.created_at).isoformat()
    assert f'<time datetime="{created}" data-relative>' in listing


def test_few_replies_show_the_numbers_without_colours(client, superuser, release, settings):
    scores = {"bleu-1": 10.0, "rouge-l": 12.0, "perplexity": 40.0, "samples": 2}
    twin = make_job(
        release,
        variant="sft",
        status="done",
        metrics={"base": scores, "student": scores | {"bleu-1": 15.0}},
        samples=scored_rows(2, "ok", "fine"),
    )
    adapter = Path(settings.TRAINING_DIR) / "job-x" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text("# card")
    samples = scored_rows(2, "ok", "I am sorry, that sounds so hard.")
    samples[0] |= {"context": ["user: I lost my job."], "reference": "That is a hard blow."}
    job = make_job(
        release,
        variant="sft_dri",
        status="done",
        step=100,
        total_steps=100,
        adapter_dir=str(adapter),
        model_card=str(adapter / "README.md"),
        metrics={
            "base": scores,
            "student": {"bleu-1": 20.0, "rouge-l": 10.0, "perplexity": 20.0, "samples": 2},
        },
        samples=samples,
    )
    client.force_login(superuser)
    html = client.get(job.get_absolute_url()).content.decode()
    assert "hx-trigger" not in html  # finished: no more polling
    assert f'Student without DRI (<a href="{twin.get_absolute_url()}">#{twin.pk}</a>)' in html
    # Two replies: differences without intervals, and no colours.
    assert (
        "<th>BLEU-1</th>\n        <td>10.00</td><td>20.00</td><td>+10.00</td><td>15.00</td>"
        "<td>+5.00</td>" in html
    )
    assert "Perplexity (lower is better)" in html
    assert (
        "<th>Replies scored</th>\n        <td>2</td><td>2</td><td>-</td><td>2</td><td>-</td>"
        in html
    )
    assert 'class="better"' not in html and 'class="worse"' not in html
    assert (
        "Differences are not coloured: 2 replies scored, at least 30 are needed to tell a "
        "difference from noise." in html
    )
    assert "<td>user: I lost my job.</td><td>That is a hard blow.</td><td>ok</td>" in html
    assert "I am sorry, that sounds so hard." in html
    assert "left</div>" not in html  # no time left once it is over
    assert reverse("training-job-adapter", args=[job.pk]) in html
    assert reverse("training-job-card", args=[job.pk]) in html
    assert reverse("training-job-report", args=[job.pk]) not in html  # no report file


def test_many_replies_colour_the_differences_beyond_noise(client, superuser, release):
    # The student writes the references themselves, the base and the student without DRI "ok";
    # the written replies are as likely under every model (same NLL): perplexity is a tie.
    scores = {"bleu-1": 0.0, "rouge-l": 0.0, "perplexity": 20.09, "samples": 40}
    best = {"bleu-1": 100.0, "rouge-l": 100.0, "perplexity": 20.09, "samples": 40}
    twin = make_job(
        release,
        variant="sft",
        status="done",
        metrics={"base": scores, "student": scores},
        samples=scored_rows(40, "ok", "ok"),
    )
    job = make_job(
        release,
        variant="sft_dri",
        status="done",
        metrics={"base": scores, "student": best},
        samples=scored_rows(40, "ok", "reference"),
    )
    client.force_login(superuser)
    html = client.get(job.get_absolute_url()).content.decode()
    # The student writes every reference: +100 with an interval of one point, beyond noise.
    assert (
        '<th>BLEU-1</th>\n        <td>0.00</td><td class="better">100.00</td>'
        '<td class="better">+100.00 [100.00, 100.00]</td><td>0.00</td>'
        '<td class="better">+100.00 [100.00, 100.00]</td>' in html
    )
    assert (
        "<th>Perplexity (lower is better)</th>\n        <td>20.09</td><td>20.09</td>"
        "<td>+0.00 [0.00, 0.00]</td><td>20.09</td><td>+0.00 [0.00, 0.00]</td>" in html
    )
    assert f"#{twin.pk}</a>)</th><th>Difference with DRI [95% interval]</th>" in html
    assert "not coloured" not in html
    assert "paired bootstrap (1000 resamples of the 40 replies) excludes 0" in html

    # A student that does worse than the base, beyond noise, in the other colour.
    TrainingJob.objects.filter(pk=job.pk).update(
        samples=scored_rows(40, "reference", "ok", nll={"student": 60.0}),
        metrics={"base": best, "student": scores | {"perplexity": 403.4}},
    )
    html = client.get(job.get_absolute_url()).content.decode()
    assert '<th>BLEU-1</th>\n        <td>100.00</td><td class="worse">0.00</td>' in html
    assert '<td class="worse">403.40</td>' in html  # perplexity went up: worse


def test_a_job_on_a_release_without_test_split_says_it_was_not_evaluated(
    client, superuser, release
):
    release.counts = {"train": 1, "valid": 0, "test": 0}
    release.save(update_fields=["counts"])
    job = make_job(
        release,
        status="done",
        evaluate=False,
        resolved_config={"max_length": 192, "valid_loss": None, "data_files": {"train": {}}},
    )
    client.force_login(superuser)
    html = client.get(job.get_absolute_url()).content.decode()
    assert "Not evaluated: the release has no test split." in html
    assert "No validation split" in html
    assert "table" not in html.split("Not evaluated")[1].split("<h2>Log</h2>")[0]


def test_cancel_and_resume_from_the_page(client, trainer, watcher, release, queued):
    running = make_job(release, status="running", worker="w")
    failed = make_job(release, status="failed", error="RuntimeError: out of memory")
    cancel = reverse("training-job-cancel", args=[running.pk])
    resume = reverse("training-job-resume", args=[failed.pk])

    client.force_login(watcher)
    assert client.post(cancel).status_code == 403
    assert client.post(resume).status_code == 403

    client.force_login(trainer)
    assert client.get(cancel).status_code == 405
    page = client.get(failed.get_absolute_url()).content.decode()
    assert "RuntimeError: out of memory" in page and resume in page
    assert client.post(cancel).status_code == 302
    running.refresh_from_db()
    assert (running.status, running.cancel_requested) == ("running", True)
    assert "stopping" in client.get(running.get_absolute_url()).content.decode()

    assert client.post(resume).status_code == 302
    failed.refresh_from_db()
    assert (failed.status, failed.error) == ("queued", "")
    assert queued == [failed.pk]
    client.post(resume)  # queued already: nothing more
    assert queued == [failed.pk]


def test_the_adapter_streams_as_a_zip_and_the_card_downloads(client, superuser, release, settings):
    adapter = Path(settings.TRAINING_DIR) / "job-1" / "adapter"
    adapter.mkdir(parents=True)
    weights = bytes(range(256)) * 5000
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "README.md").write_text("# ExTES Studio student adapter\n")
    job = make_job(
        release, status="done", adapter_dir=str(adapter), model_card=str(adapter / "README.md")
    )
    client.force_login(superuser)

    response = client.get(reverse("training-job-adapter", args=[job.pk]))
    assert response.streaming
    name = f"r-views-sft-job{job.pk}-adapter"
    assert response["Content-Disposition"] == f'attachment; filename="{name}.zip"'
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert sorted(archive.namelist()) == [
        f"{name}/README.md",
        f"{name}/adapter_config.json",
        f"{name}/adapter_model.safetensors",
    ]
    assert archive.read(f"{name}/adapter_model.safetensors") == weights
    assert archive.testzip() is None

    card = client.get(reverse("training-job-card", args=[job.pk]))
    assert b"".join(card.streaming_content) == b"# ExTES Studio student adapter\n"
    assert "attachment" in card["Content-Disposition"]


def test_only_files_under_the_training_folder_are_served(client, superuser, release, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "adapter_model.safetensors").write_bytes(b"x")
    (outside / "README.md").write_text("secret")
    job = make_job(
        release, status="done", adapter_dir=str(outside), model_card=str(outside / "README.md")
    )
    client.force_login(superuser)
    assert client.get(reverse("training-job-adapter", args=[job.pk])).status_code == 404
    assert client.get(reverse("training-job-card", args=[job.pk])).status_code == 404


def test_the_loss_curve_fits_its_box_and_thins_long_runs():
    assert loss_curve([]) is None
    curve = loss_curve([[step, 5.0 / step] for step in range(1, 2001)])
    assert curve is not None
    points = [tuple(map(float, p.split(","))) for p in curve["raw"].split()]
    assert len(points) <= 401
    assert points[0] == (curve["left"], curve["top"])  # the highest loss, at the first step
    assert points[-1] == (curve["right"], curve["bottom"])  # the lowest, at the last
    assert (curve["first"], curve["last"], curve["high"], curve["low"]) == (1, 2000, "5", "0.0025")
    flat = loss_curve([[1, 2.0], [2, 2.0]])
    assert flat is not None and flat["low"] == "1.5"


def test_the_student_without_dri_is_compared_only_when_trained_the_same_way(
    client, superuser, release
):
    scores = {"bleu1": 0.1, "rouge_l": 0.12, "perplexity": 40.0, "samples": 2}
    done = {"status": "done", "metrics": {"base": scores, "student": scores}}
    other = make_job(release, variant="sft", seed=7, samples=scored_rows(2, "ok", "ok"), **done)
    job = make_job(release, variant="sft_dri", samples=scored_rows(2, "ok", "fine"), **done)
    assert job.sft_counterparts() == (None, other)
    client.force_login(superuser)
    html = client.get(job.get_absolute_url()).content.decode()
    assert "Student without DRI" not in html
    assert f"The SFT-only job #{other.pk} on this release was trained with other settings" in html

    twin = make_job(release, variant="sft", samples=scored_rows(2, "ok", "ok"), **done)
    assert job.sft_counterparts() == (twin, None)
    html = client.get(job.get_absolute_url()).content.decode()
    assert f'Student without DRI (<a href="{twin.get_absolute_url()}">#{twin.pk}</a>)' in html
    assert "trained with other settings" not in html


def test_sft_then_dpo_takes_its_settings_and_needs_preference_pairs(
    client, superuser, release, queued
):
    client.force_login(superuser)
    page = client.get(NEW + f"?release={release.pk}").content.decode()
    assert "SFT, then DPO on the release&#x27;s preference pairs" in page
    assert 'name="dpo_beta"' in page and 'name="dpo_max_steps"' in page
    jobs_release_files = release.folder / "dpo"
    jobs_release_files.mkdir(parents=True)
    (jobs_release_files / "train.jsonl").write_text("")  # written, and no pair in it
    response = client.post(NEW, form(release, variant="sft_dpo", dpo_beta=0.2))
    assert response.status_code == 200
    assert "has no preference pairs in its training split" in response.content.decode()
    assert (TrainingJob.objects.count(), queued) == (0, [])

    (jobs_release_files / "train.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    response = client.post(NEW, form(release, variant="sft_dpo", dpo_beta=0.2, dpo_max_steps=5))
    assert response.status_code == 302
    job = TrainingJob.objects.get()
    assert job.variant == "sft_dpo"
    assert (job.hyperparameters["dpo_beta"], job.hyperparameters["dpo_max_steps"]) == (0.2, 5)
    assert "dpo_lr" not in job.hyperparameters  # left empty: training.dpo's default
