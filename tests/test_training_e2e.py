"""A training job through the real job system: Redis, a solo Celery worker on the training queue,
killed with SIGKILL mid-training; a new worker continues the job from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import test_training_sft
from tests.conftest import ROOT
from tests.test_generation_e2e import Site
from tests.test_studio_e2e import Studio

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

    def start_worker(self, name: str = "training") -> subprocess.Popen[bytes]:
        log = open(self.data / f"{name}-{len(self.workers)}.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--queues",
                self.env["EXTES_TRAINING_QUEUE"],
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--hostname",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(worker)
        return worker

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
