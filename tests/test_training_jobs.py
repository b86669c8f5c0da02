"""Training jobs run in this process (training.jobs.run, what the Celery task calls) on a tiny
random Llama with SmolLM2's tokenizer (tests/test_training_sft.py's `tiny_base`) and a release of
the seed dialogues: progress on the row, cancel, resume from the checkpoint, evaluation and the
model card."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from curation.models import Dialogue, Release
from curation.releases.build import create_release, new_release
from tests import test_training_sft
from tests.conftest import ROOT
from training import jobs
from training.models import TrainingJob
from training.sft import Progress

pytestmark = pytest.mark.usefixtures("seeds")

# The trainer's own tiny random Llama, and the fixtures it is built from.
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base

TINY_HYPERPARAMETERS = {
    # lr 1e-2: a random 32-wide model needs large steps for its loss to move in a few updates.
    "lr": 1e-2,
    "batch_size": 2,
    "max_steps": 6,
    "max_length": 192,
    "save_every": 3,
    "lora_dropout": 0.0,
}


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_DIR = tmp_path / "training"
    settings.TRAINING_EVAL_LIMIT = 3
    settings.TRAINING_EVAL_MAX_NEW_TOKENS = 6
    settings.TRAINING_PROGRESS_SECONDS = 0


@pytest.fixture
def release() -> Release:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    return create_release("r-train")  # frozen, ready, and no files yet: the job writes them


def make_job(release: Release, base: Path | str, **hyperparameters) -> TrainingJob:
    return TrainingJob.objects.create(
        release=release,
        base_model=str(base),
        hyperparameters=TINY_HYPERPARAMETERS | hyperparameters,
        seed=1,
    )


def test_a_job_trains_scores_both_models_and_writes_its_card(release, tiny_base):
    job = make_job(release, tiny_base)
    assert not release.folder.exists()

    jobs.run(job.pk, "training@test")

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingJob.Status.DONE, "")
    assert (job.step, job.total_steps, job.attempts) == (6, 6, 1)
    assert [step for step, _ in job.losses] == [1, 2, 3, 4, 5, 6]
    assert job.loss == pytest.approx(job.losses[-1][1], abs=1e-4)
    assert (release.folder / "manifest.json").is_file()
    adapter = Path(job.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert job.resolved_config["max_length"] == 192
    assert job.resolved_config["release"]["name"] == "r-train"
    for name in ("base", "student"):
        scored = job.metrics[name]
        assert scored["samples"] == 3
        for key in (
            "bleu-1",
            "bleu-2",
            "bleu-4",
            "rouge-l",
            "distinct-1",
            "distinct-3",
            "unigram-f1",
        ):
            assert 0.0 <= scored[key] <= 100.0, (name, key)
        assert scored["perplexity"] > 1
    # A random model is very unsure of the real replies; the adapter changed its guesses.
    assert job.metrics["student"]["perplexity"] != job.metrics["base"]["perplexity"]
    assert len(job.samples) == 3
    assert {"context", "reference", "base", "student"} <= set(job.samples[0])
    card = Path(job.model_card).read_text()
    assert "r-train" in card and release.checksum in card and "Unigram F1" in card
    assert Path(job.report).is_file()
    assert "step 6/6" in job.log_tail and job.log_tail.rstrip().endswith("Done")


def test_evaluation_reports_every_batch_of_replies_on_the_row(
    release, tiny_base, monkeypatch, settings
):
    settings.TRAINING_EVAL_BATCH = 2
    job = make_job(release, tiny_base, max_steps=2)
    report = jobs.Reporter.evaluation
    seen = []

    def watched(reporter, name, done, total):
        report(reporter, name, done, total)
        row = TrainingJob.objects.get(pk=job.pk)
        seen.append((name, done, row.replies_done, row.replies_total, row.percent, row.phase))

    monkeypatch.setattr(jobs.Reporter, "evaluation", watched)
    jobs.run(job.pk, "training@test")
    # Three test replies per model (TRAINING_EVAL_LIMIT), the base's then the student's, written
    # two at a time.
    assert [(name, done, written, total) for name, done, written, total, *_ in seen] == [
        ("base", 0, 0, 6),
        ("base", 2, 2, 6),
        ("base", 3, 3, 6),
        ("student", 0, 3, 6),
        ("student", 2, 5, 6),
        ("student", 3, 6, 6),
    ]
    assert [percent for *_, percent, _ in seen] == [0, 33, 50, 50, 83, 100]
    assert seen[4][-1] == "Evaluating the student: 2 of 3 replies"
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.DONE
    scores = job.samples[0]["student_scores"]
    assert len(scores["bleu"]) == 10 and scores["tokens"] > 0  # what the bootstrap resamples


def test_evaluation_progress_is_throttled_but_the_last_reply_lands(release, settings, monkeypatch):
    settings.TRAINING_PROGRESS_SECONDS = 1
    job = make_job(release, "")
    assert job.claim("training@test")
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.EVALUATING)
    clock = [100.0]
    monkeypatch.setattr("training.runs.time.monotonic", lambda: clock[0])
    reporter = jobs.Reporter(job)

    def stored() -> tuple[int, int]:
        row = TrainingJob.objects.get(pk=job.pk)
        return row.replies_done, row.replies_total

    written = []
    for done in range(6):
        reporter.evaluation("base", done, 5)
        written.append(stored())
        clock[0] += 0.4
    # 0 lands at once; 1 and 2 wait for the second; 3 lands at 1.2 s; 4 waits; 5 is the last.
    assert written == [(0, 10), (0, 10), (0, 10), (3, 10), (3, 10), (5, 10)]
    beat = TrainingJob.objects.get(pk=job.pk).heartbeat_at
    assert beat is not None and timezone.now() - beat < timedelta(seconds=5)


def test_a_release_without_test_or_valid_split_trains_and_says_why_it_was_not_scored(
    tiny_base, monkeypatch
):
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    small = create_release("r1", split={"train": 100, "valid": 0, "test": 0})
    assert small.counts["test"] == small.counts["valid"] == 0
    job = make_job(small, tiny_base, max_steps=2)  # made without the form: evaluate is on

    def no_evaluation(*args, **kwargs):
        raise AssertionError("an empty test split was evaluated")

    monkeypatch.setattr("training.evaluate.evaluate", no_evaluation)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert (job.status, job.error, job.phase) == ("done", "", "Done, not evaluated")
    assert (job.metrics, job.samples, job.step) == ({}, [], 2)
    assert job.resolved_config["valid_loss"] is None
    assert job.log_tail.rstrip().endswith("Done, not evaluated: the release has no test split")
    card = Path(job.model_card).read_text()
    assert "Not evaluated: the release has no test split." in card
    assert "| valid_loss | no validation split |" in card
    assert "python -m training.evaluate" not in card


def test_cancel_stops_at_a_step_and_resume_continues_from_the_checkpoint(
    release, tiny_base, monkeypatch
):
    job = make_job(release, tiny_base, max_steps=8, save_every=2)
    record = jobs.Reporter.training

    def cancel_at_step_5(reporter, progress):
        record(reporter, progress)
        if progress.step == 5 and progress.loss is not None:
            TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)

    monkeypatch.setattr(jobs.Reporter, "training", cancel_at_step_5)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert (job.status, job.step) == (TrainingJob.Status.CANCELLED, 5)
    assert job.phase == "Cancelled at step 5"
    before = dict((step, loss) for step, loss in job.losses)
    assert sorted(before) == [1, 2, 3, 4, 5]
    checkpoints = sorted(p.name for p in (jobs.run_dir(job) / "checkpoints").glob("step-*"))
    assert "step-5" in checkpoints  # stopping saves where it stopped

    monkeypatch.setattr(jobs.Reporter, "training", record)
    assert job.requeue()
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.DONE
    assert (job.resumed_from, job.step, job.attempts) == (5, 8, 2)
    after = dict((step, loss) for step, loss in job.losses)
    assert sorted(after) == list(range(1, 9))
    assert all(after[step] == pytest.approx(before[step]) for step in before)
    assert "Resumed at" in job.log_tail


def test_a_finished_adapter_is_not_trained_again(release, tiny_base, monkeypatch):
    job = make_job(release, tiny_base, max_steps=2)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.DONE
    # The worker died while scoring: the job runs again and only scores.
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.FAILED)
    job.refresh_from_db()
    assert job.requeue()

    def no_training(*args, **kwargs):
        raise AssertionError("the adapter was trained again")

    monkeypatch.setattr("training.sft.train", no_training)
    jobs.run(job.pk, "training@again")
    job.refresh_from_db()
    assert (job.status, job.attempts) == (TrainingJob.Status.DONE, 2)
    assert "kept from an earlier attempt" in job.log_tail


@pytest.mark.dbsensitive
def test_a_job_runs_once_however_often_its_task_is_delivered(release, tiny_base, monkeypatch):
    job = make_job(release, tiny_base)
    assert job.claim("training@one")
    calls = []
    monkeypatch.setattr("training.jobs._run", lambda *args: calls.append(args))
    jobs.run(job.pk, "training@two")  # a second delivery while it runs
    jobs.run(10_000, "training@two")  # a job that is gone
    assert calls == []
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (TrainingJob.Status.RUNNING, "training@one", 1)


def test_a_failure_is_recorded_with_its_reason():
    building = new_release("r-building")  # never built: no files, and none can be written
    job = make_job(building, "")
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.FAILED
    assert job.error == "ValueError: release r-building is building"
    assert "Failed: ValueError" in job.log_tail
    assert job.can_resume


def test_progress_is_written_at_most_every_interval_and_resume_drops_later_losses(
    release, settings, monkeypatch
):
    settings.TRAINING_PROGRESS_SECONDS = 2
    job = make_job(release, "")
    assert job.claim("training@test")
    clock = [100.0]
    monkeypatch.setattr("training.runs.time.monotonic", lambda: clock[0])
    reporter = jobs.Reporter(job)

    def stored() -> list:
        return TrainingJob.objects.get(pk=job.pk).losses

    for step in (1, 2, 3):
        reporter.training(Progress(step, 10, 2.0 - step / 10, 50.0, 30.0, 0.1))
        clock[0] += 0.5
    assert [s for s, _ in stored()] == [1]  # the first report is written, then 1.5 s pass
    clock[0] += 1
    reporter.training(Progress(4, 10, 1.5, 50.0, 20.0, 0.2))
    assert [s for s, _ in stored()] == [1, 2, 3, 4]
    # A restart from the checkpoint at step 2: steps 3 and 4 are trained again.
    reporter.training(Progress(2, 10, None, 0.0, None, 0.1, "Resumed at .../step-2"))
    row = TrainingJob.objects.get(pk=job.pk)
    assert ([s for s, _ in row.losses], row.resumed_from) == ([1, 2], 2)
    assert row.log_tail.splitlines()[-1].endswith("Resumed at .../step-2")


def test_cancel_and_requeue_follow_the_status(release):
    queued = make_job(release, "")
    assert queued.request_cancel()
    assert (queued.status, queued.cancel_requested) == (TrainingJob.Status.CANCELLED, True)
    assert not queued.request_cancel()
    assert queued.requeue()
    assert (queued.status, queued.cancel_requested) == (TrainingJob.Status.QUEUED, False)
    assert not queued.requeue()  # queued already

    running = make_job(release, "")
    assert running.claim("training@test")
    assert not running.requeue()  # its worker reports: not abandoned
    assert running.request_cancel()
    assert (running.status, running.cancel_requested) == (TrainingJob.Status.RUNNING, True)
    TrainingJob.objects.filter(pk=running.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    running.refresh_from_db()
    assert running.is_stale and running.requeue()


def test_a_restarted_worker_takes_back_its_jobs_and_abandoned_ones(release):
    mine = make_job(release, "")
    assert mine.claim("training@a")
    busy = make_job(release, "")
    assert busy.claim("training@b")
    abandoned = make_job(release, "")
    assert abandoned.claim("training@c")
    TrainingJob.objects.filter(pk=abandoned.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    waiting = make_job(release, "")
    done = make_job(release, "")
    TrainingJob.objects.filter(pk=done.pk).update(status=TrainingJob.Status.DONE)

    assert TrainingJob.orphans_of("training@a") == sorted([mine.pk, abandoned.pk, waiting.pk])
    statuses = dict(TrainingJob.objects.values_list("pk", "status"))
    assert statuses[mine.pk] == statuses[abandoned.pk] == TrainingJob.Status.QUEUED
    assert statuses[busy.pk] == TrainingJob.Status.RUNNING
    assert statuses[done.pk] == TrainingJob.Status.DONE


def test_a_worker_shutdown_queues_the_job_again(release, tiny_base, monkeypatch):
    from celery.worker import state

    job = make_job(release, tiny_base)
    record = jobs.Reporter.training

    def shutdown_at_step_2(reporter, progress):
        record(reporter, progress)
        if progress.step == 2 and progress.loss is not None:
            monkeypatch.setattr(state, "should_stop", 0)  # what a warm shutdown sets

    monkeypatch.setattr(jobs.Reporter, "training", shutdown_at_step_2)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert (job.status, job.step, job.finished_at) == (TrainingJob.Status.QUEUED, 2, None)
    assert (jobs.run_dir(job) / "checkpoints" / "step-2" / "state.json").is_file()


def test_the_suggested_max_length_matches_what_the_trainer_chooses(release, tiny_base):
    job = make_job(release, tiny_base, max_length=None, max_steps=1)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.DONE
    suggestion = jobs.suggest_max_length(release, "sft", str(tiny_base))
    assert suggestion.tokens == job.resolved_config["max_length"]
    assert "tokenizer" in suggestion.how
    missing = jobs.suggest_max_length(create_release("r-other"), "sft", "")
    assert missing.tokens is None


def test_base_models_are_checked_offline(tiny_base, settings, tmp_path):
    settings.MODELS_DIR = tiny_base.parent
    assert jobs.check_base("") is None
    assert jobs.check_base(str(tiny_base)) is None
    assert jobs.check_base(tiny_base.name) is None  # a folder under MODELS_DIR
    assert jobs.resolve_base(tiny_base.name) == str(tiny_base.resolve())
    assert "no such folder" in (jobs.check_base(str(tmp_path / "nothing")) or "")
    assert "no such folder" in (jobs.check_base("someone/not-cached-model-xyz") or "")


def test_django_and_its_workers_load_without_torch():
    """The default worker forks: torch must not be imported by anything Django loads."""
    code = (
        "import sys, django; django.setup();"
        "from django.contrib import admin; admin.autodiscover();"
        "import config.celery, config.urls, training.tasks, training.views, training.jobs;"
        "from django.test import Client;"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules);"
        "print(','.join(heavy) or 'none')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_the_task_hands_the_job_and_its_worker_name_to_run(monkeypatch):
    from training.tasks import run_job

    calls = []
    monkeypatch.setattr("training.jobs.run", lambda job_id, worker: calls.append((job_id, worker)))
    run_job.apply(args=[7])
    assert calls == [(7, socket.gethostname())]


def test_scores_are_stored_as_finite_numbers_or_none():
    """Strategy accuracy is NaN without gold labels; JSON columns (jsonb) refuse NaN."""
    stored = jobs.finite({"bleu1": 0.25, "strategy_accuracy": math.nan, "samples": 3})
    assert stored == {"bleu1": 0.25, "strategy_accuracy": None, "samples": 3}
    json.dumps(stored, allow_nan=False)


@pytest.mark.dbsensitive
@pytest.mark.usefixtures("vocabulary_db")
def test_a_worker_beats_while_its_job_reports_nothing(release, settings, monkeypatch):
    """Minutes without progress (loading, validation) do not make a live job look abandoned."""
    settings.TRAINING_LEASE_SECONDS = 0.5  # a beat every 0.05 s
    job = make_job(release, "")
    beats = []

    def silent(job, reporter):
        started = TrainingJob.objects.get(pk=job.pk).heartbeat_at
        time.sleep(0.6)  # longer than a lease, with no progress written
        row = TrainingJob.objects.get(pk=job.pk)
        beats.append(row.heartbeat_at > started)
        assert not row.is_stale

    monkeypatch.setattr("training.jobs._run", silent)
    jobs.run(job.pk, "training@test")
    assert beats == [True]


@pytest.fixture
def ranked_release() -> Release:
    """Every dialogue accepted, each with its first supporter turn ranked below a DRI
    candidate: a preference pair per dialogue, in every split."""
    from django.contrib.auth.models import User

    from curation.models import Candidate, Ranking

    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    ranker = User.objects.create_user("ranker", password="pw-ranker-1")
    for dialogue in Dialogue.objects.all():
        turn = dialogue.turns.filter(role="supporter").order_by("index").first()
        better = Candidate.objects.create(
            turn=turn, text="That sounds hard. What weighs on you most?", strategy=turn.strategy
        )
        Ranking.objects.create(
            turn=turn,
            annotator=ranker,
            order=[[f"c{better.pk}"], [f"t{turn.pk}"]],
            display_order=[],
        )
    return create_release("r-dpo")


def test_an_sft_dpo_job_trains_sft_then_dpo_from_it_and_scores_the_student(
    ranked_release, tiny_base
):
    job = make_job(ranked_release, tiny_base, dpo_lr=1e-2, dpo_max_steps=3, dpo_beta=0.1)
    job.variant = TrainingJob.Variant.SFT_DPO
    job.save(update_fields=["variant"])

    jobs.run(job.pk, "training@test")

    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingJob.Status.DONE, "")
    run = Path(job.run_dir)
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert Path(job.adapter_dir) == run / "adapter"
    resolved = job.resolved_config
    assert resolved["start_adapter"]["path"] == str(run / "sft" / "adapter")
    assert resolved["beta"] == 0.1 and resolved["max_steps"] == 3
    assert (job.step, job.total_steps) == (3, 3)
    assert [step for step, _ in job.losses] == [1, 2, 3]  # the DPO stage's
    assert job.metrics["student"]["perplexity"] != job.metrics["base"]["perplexity"]
    card = Path(job.model_card).read_text()
    assert "## Preference training (DPO)" in card and "Unigram F1" in card
    assert "Preference training (DPO) on the release's pairs" in job.log_tail


def test_an_sft_dpo_job_on_a_release_without_pairs_fails_and_says_why(release, tiny_base):
    job = make_job(release, tiny_base)
    job.variant = TrainingJob.Variant.SFT_DPO
    job.save(update_fields=["variant"])

    jobs.run(job.pk, "training@test")

    job.refresh_from_db()
    assert job.status == TrainingJob.Status.FAILED
    assert "has no preference pairs" in job.error
    assert not (Path(job.run_dir) / "sft").exists(), "it stops before training anything"


def test_an_sft_dpo_job_cancelled_in_its_dpo_stage_resumes_there(
    ranked_release, tiny_base, monkeypatch
):
    job = make_job(ranked_release, tiny_base, dpo_lr=1e-2, dpo_max_steps=4, save_every=2)
    job.variant = TrainingJob.Variant.SFT_DPO
    job.save(update_fields=["variant"])
    record = jobs.Reporter.training

    def cancel_at_dpo_step_3(reporter, progress):
        record(reporter, progress)
        if reporter.stage.startswith("Preference") and progress.step == 3 and progress.loss:
            TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)

    monkeypatch.setattr(jobs.Reporter, "training", cancel_at_dpo_step_3)
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert (job.status, job.step, job.total_steps) == (TrainingJob.Status.CANCELLED, 3, 4)
    sft_config = jobs.run_dir(job) / "sft" / "adapter" / "training_config.json"
    trained_at = sft_config.stat().st_mtime_ns

    monkeypatch.setattr(jobs.Reporter, "training", record)
    assert job.requeue()
    jobs.run(job.pk, "training@test")
    job.refresh_from_db()
    assert (job.status, job.error) == (TrainingJob.Status.DONE, "")
    assert (job.step, job.attempts) == (4, 2)
    assert sft_config.stat().st_mtime_ns == trained_at, "the SFT stage is not trained again"
    assert "The SFT stage is trained already" in job.log_tail and "Resumed at" in job.log_tail
