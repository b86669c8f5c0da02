"""An experiment through the real job system: the new-experiment form, Redis, a solo Celery worker
on the training queue running training.experiment on the tiny model (base, sft and sft_dri, two
steps each, six test turns), and the page that shows the result."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from tests import test_training_sft
from tests.workers import celery_worker

pytestmark = pytest.mark.e2e

# The trainer's own tiny random Llama, and the fixtures it is built from.
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base

TURNS = 6


@pytest.fixture
def studio(vocabulary_db, seeds, redis_url, settings, monkeypatch, tmp_path):
    """This process's database (a file) and folders, shared with a real training worker; the
    form's task goes to that worker's own queue on the real Redis."""
    from django.db import connection, transaction
    from kombu import Connection

    from curation.models import Candidate, Dialogue, Release
    from curation.releases.build import create_release
    from training import tasks

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_DIR = tmp_path / "training"
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    for dialogue in Dialogue.objects.all():  # a DRI reply for each: sft_dri has its own data
        turn = dialogue.turns.filter(role="supporter").order_by("index").first()
        assert turn is not None
        Candidate.objects.create(turn=turn, text="That sounds so hard. I am here with you.")
    create_release("r-exp-e2e", dri_policy=Release.DriPolicy.UNREJECTED)
    queue = f"training-exp-{uuid.uuid4().hex[:8]}"

    def enqueue(experiment_id: int) -> None:
        def send() -> None:
            with Connection(redis_url) as broker:
                tasks.run_experiment.apply_async(
                    args=[experiment_id], queue=queue, connection=broker
                )

        transaction.on_commit(send)

    monkeypatch.setattr(tasks.run_experiment, "delay_on_commit", enqueue)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env |= {
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        "REDIS_URL": redis_url,
        "EXTES_DATA_DIR": str(tmp_path),
        "EXTES_TRAINING_QUEUE": queue,
        "EXTES_TRAINING_PROGRESS_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    worker = celery_worker(queue, env, log, ("solo", "1"), name="training-exp")
    try:
        yield log
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def test_an_admin_runs_an_experiment_and_reads_its_results(client, studio, tiny_base):
    from curation.models import Release
    from training.models import Experiment

    release = Release.objects.get(name="r-exp-e2e")
    client.force_login(User.objects.create_superuser("ada", password="ada-pass-123"))
    response = client.post(
        reverse("training-experiment-new"),
        {
            "token": "tok-e2e",
            "release": release.pk,
            "arms": ["base", "sft", "sft_dri"],
            "seeds": 1,
            "max_steps": 2,
            "epochs": 1,
            "limit": TURNS,
            "base_model": str(tiny_base),
            "decoding": "greedy",
            "temperature": 0.7,
            "top_p": 0.9,
            "decoding_seed": 0,
            "max_new_tokens": 4,
        },
    )
    experiment = Experiment.objects.get()
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response.url == experiment.get_absolute_url()

    deadline = time.monotonic() + 150
    while not experiment.is_finished:
        if time.monotonic() > deadline:
            pytest.fail(f"the experiment did not end\n{studio.read_text()[-4000:]}")
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert (experiment.status, experiment.error) == ("done", ""), studio.read_text()[-4000:]
    assert experiment.attempts == 1 and experiment.percent == 100
    report = experiment.report
    assert list(report["arms"]) == ["base", "sft", "sft_dri"]
    assert report["replies_scored"] == TURNS
    assert report["budget"]["steps"] == 2
    for arm in ("sft", "sft_dri"):
        [budget] = report["arms"][arm]["budget"]
        assert budget["steps"] == 2 and budget["tokens_seen"] > 0, arm
    assert set(report["arms"]["sft_dri"]["versus"]) == {"base", "sft"}
    assert len(experiment.samples) == TURNS
    assert "sft_dri seed 0: training" in experiment.log_tail  # the engine's log, on the row

    html = client.get(experiment.get_absolute_url()).content.decode()
    assert "hx-trigger" not in html
    assert (
        "<thead><tr><th>Metric</th><th>base</th><th>sft</th><th>sft_dri</th></tr></thead>" in html
    )
    bleu = re.search(r"<tr><th>BLEU-2</th>(.*?)</tr>", html)
    assert bleu is not None
    assert re.findall(r'<td>[\d.—]+ <small class="ci">\[[-\d.]+, [-\d.]+\]</small></td>', bleu[1])
    assert html.count('<svg class="chart intervals"') == 4
    assert html.count("<tr><td>sft</td><td>0</td><td>2</td>") == 1  # the budget, per seed
    assert html.count("<tr><td>sft_dri</td><td>0</td><td>2</td>") == 1
    assert "Against sft" in html and "Against base" in html
    samples = html.split('<table class="dialogues compact samples experiment-samples">')[1]
    assert samples.split("</table>")[0].count("<tr><td>") == TURNS
    url = reverse("training-experiment-file", args=[experiment.pk, "report.json"])
    assert url in html
    stored = json.loads(b"".join(client.get(url).streaming_content))
    assert stored["replies_scored"] == TURNS
    replies = reverse("training-experiment-file", args=[experiment.pk, "replies.jsonl"])
    lines = b"".join(client.get(replies).streaming_content).decode().splitlines()
    assert len(lines) == TURNS and {"base", "sft", "sft_dri"} <= set(json.loads(lines[0]))
