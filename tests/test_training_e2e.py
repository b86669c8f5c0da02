"""A training job through the real job system: Redis, a solo Celery worker on the training queue,
killed with SIGKILL mid-training; a new worker continues the job from its last checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from tests import test_browser, test_training_sft
from tests.test_generation_e2e import Site
from tests.test_studio_e2e import Studio
from tests.workers import celery_worker

pytestmark = pytest.mark.e2e

# The trainer's own tiny random Llama, and the fixtures it is built from.
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base

MAX_STEPS = 60
HYPERPARAMETERS = {
    "lr": 1e-2,
    "batch_size": 2,
    "max_steps": MAX_STEPS,
    "max_length": 192,
    "save_every": 10,
    "lora_dropout": 0.0,
}


class TrainingSite(Site):
    """The generation test's studio folder, with training workers instead."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        super().__init__(tmp_path, redis_url, teacher_url="http://127.0.0.1:9/v1")
        self.env |= {
            "EXTES_TRAINING_QUEUE": f"training-test-{uuid.uuid4().hex[:8]}",
            "EXTES_TRAINING_PROGRESS_SECONDS": "0",  # every step on the row: the test watches it
            "EXTES_EVAL_LIMIT": "2",
            "EXTES_EVAL_MAX_NEW_TOKENS": "4",
        }

    def start_worker(
        self,
        name: str = "training",
        queue: str | None = None,
        pool: tuple[str, str] = ("solo", "1"),
    ) -> subprocess.Popen[bytes]:
        return super().start_worker(name, queue or self.env["EXTES_TRAINING_QUEUE"], pool)

    def job(self, job_id: int) -> dict:
        columns = ("status", "step", "total_steps", "attempts", "resumed_from", "losses")
        row = self.query(
            f"SELECT {', '.join(columns)} FROM training_trainingjob WHERE id = ?", job_id
        )[0]
        return dict(zip(columns, row, strict=True)) | {"losses": json.loads(row[-1])}


@pytest.fixture
def site(tmp_path, redis_url):
    site = TrainingSite(tmp_path, redis_url)
    try:
        yield site
    finally:
        site.stop()


def test_a_worker_killed_mid_training_leaves_a_job_the_next_worker_resumes(site, tiny_base):
    site.query("UPDATE curation_dialogue SET status = 'accepted'")
    site.manage("create_release", "r-e2e")  # frozen, files not written: the job writes them
    job_id = int(
        site.manage(
            "shell",
            "-c",
            "from curation.models import Release\n"
            "from training.models import TrainingJob\n"
            "from training.tasks import run_job\n"
            "job = TrainingJob.objects.create(release=Release.objects.get(name='r-e2e'), "
            f"base_model={str(tiny_base)!r}, hyperparameters={HYPERPARAMETERS!r}, seed=3)\n"
            "run_job.delay(job.pk)\n"
            "print(job.pk)",
        ).split()[-1]
    )
    first = site.start_worker()
    site.wait_for(lambda: site.job(job_id)["step"] >= 25, timeout=120, what="25 training steps")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    killed = site.job(job_id)
    assert killed["status"] == "running", "the kill should have interrupted the training"
    assert killed["step"] < MAX_STEPS
    checkpoints = site.data / "training" / f"job-{job_id}" / "checkpoints"
    saved = max(
        int(p.name.removeprefix("step-"))
        for p in checkpoints.glob("step-*")
        if (p / "state.json").is_file()
    )
    assert 20 <= saved <= killed["step"]
    before = dict(killed["losses"])

    site.start_worker()  # the same name: at start it takes back the job its predecessor held
    site.wait_for(lambda: site.job(job_id)["status"] == "done", timeout=180, what="the job")
    done = site.job(job_id)
    assert (done["resumed_from"], done["attempts"]) == (saved, 2)
    assert (done["step"], done["total_steps"]) == (MAX_STEPS, MAX_STEPS)
    after = dict(done["losses"])
    assert sorted(after) == list(range(1, MAX_STEPS + 1))
    # The steps up to the checkpoint were not trained again: their losses are the first run's.
    assert all(after[step] == before[step] for step in range(1, saved + 1))
    [(log, metrics, card)] = site.query(
        "SELECT log_tail, metrics, model_card FROM training_trainingjob WHERE id = ?", job_id
    )
    assert f"Resumed at {checkpoints / f'step-{saved}'}" in log
    assert f"step {MAX_STEPS}/{MAX_STEPS}" in log
    assert set(json.loads(metrics)) == {"base", "student"}
    assert "r-e2e" in Path(card).read_text()


def test_make_run_starts_a_solo_worker_on_the_training_queue(tmp_path, redis_url):
    from celery import Celery

    run = Studio(tmp_path / "var", redis_url)
    try:
        run.wait_for("Press Ctrl-C to stop.")
        assert "Training worker: ready" in run.output.split("ExTES Studio is running at")[1]
        name = f"training@{socket.gethostname()}"
        inspect = Celery(broker=redis_url, set_as_current=False).control.inspect(
            destination=[name], timeout=5
        )
        stats, queues = inspect.stats(), inspect.active_queues()
        assert stats[name]["pool"]["implementation"] == "celery.concurrency.solo:TaskPool"
        assert [queue["name"] for queue in queues[name]] == ["training"]
    finally:
        assert run.stop() == 0


# ---- in a browser -------------------------------------------------------------------------------

_allow_sync_orm_beside_playwright = test_browser._allow_sync_orm_beside_playwright
browser = test_browser.browser
page = test_browser.page


@pytest.fixture
def training_studio(live_server, vocabulary_db, seeds, redis_url, settings, monkeypatch, tmp_path):
    """The live server plus a real training worker on the same (file) database and folders."""
    from django.db import connection, transaction
    from kombu import Connection

    from curation.models import Dialogue
    from curation.releases.build import create_release, write_files
    from training import admin as training_admin

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_DIR = tmp_path / "training"
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    release = create_release("r-browser")
    write_files(release, release.folder)  # as a release built from the web has them
    User.objects.create_superuser("ada", password="ada-pass-123")
    queue = f"training-browser-{uuid.uuid4().hex[:8]}"

    def enqueue(job_id: int) -> None:
        def send() -> None:
            with Connection(redis_url) as broker:
                training_admin.run_job.apply_async(args=[job_id], queue=queue, connection=broker)

        transaction.on_commit(send)

    monkeypatch.setattr(training_admin.run_job, "delay_on_commit", enqueue)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env |= {
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "REDIS_URL": redis_url,
        "EXTES_DATA_DIR": str(tmp_path),
        "EXTES_TRAINING_QUEUE": queue,
        "EXTES_EVAL_LIMIT": "2",
        "EXTES_EVAL_MAX_NEW_TOKENS": "4",
    }
    worker = celery_worker(queue, env, tmp_path / "worker.log", ("solo", "1"))
    try:
        yield live_server
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


@pytest.mark.browser
def test_an_admin_trains_a_student_from_the_release_admin_and_watches_it(
    page, training_studio, tiny_base
):
    from playwright.sync_api import expect

    from training.models import TrainingJob

    test_browser.log_in(page, training_studio.url, "ada")
    page.goto(f"{training_studio.url}/admin/curation/release/")
    page.get_by_role("row", name="r-browser").get_by_role("checkbox").check()
    page.locator("select[name=action]").select_option(label="Train a student on this release")
    page.get_by_role("button", name="Go").click()

    expect(page.get_by_role("heading", name="Train a student")).to_be_visible()
    expect(page.locator(".max-length-suggestion")).to_contain_text("tokens")
    page.get_by_label("Base model").fill(str(tiny_base))
    page.get_by_label("Max steps").fill("8")
    page.get_by_label("Batch size (chats)").fill("2")
    page.get_by_label("Max length (tokens)").fill("192")
    page.get_by_label("Learning rate (peak)").fill("0.01")
    page.get_by_label("Checkpoint every (steps)").fill("4")
    page.get_by_role("button", name="Start training").dblclick()  # one job all the same

    expect(
        page.get_by_role("heading", name=re.compile(r"Training job #\d+: r-browser"))
    ).to_be_visible()
    live = page.locator("#live")
    # The log says "Done" when training ends, before the evaluation: wait for the table,
    # which appears only when the whole job has finished.
    expect(live.locator("table.evaluation")).to_contain_text("Unigram F1", timeout=240_000)
    expect(live).to_contain_text("8 of 8 steps")
    expect(live.locator("svg.loss-curve polyline")).to_have_count(2)
    expect(live.locator("table.samples tbody tr")).to_have_count(2)
    expect(live.get_by_role("link", name="Adapter (zip)")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    test_browser.shot(page, "training")
    assert TrainingJob.objects.count() == 1
