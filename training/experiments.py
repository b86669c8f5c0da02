"""What an experiment does, as plain functions: the Celery task (training/tasks.py) calls `run`.

An experiment runs training.experiment's ablation on its release's files into its run folder
(TRAINING_DIR/experiment-<id>/: report.json, report.html, replies.jsonl and the arms' adapters)
and keeps the report and the first replies on its row. Progress goes to the row as it comes,
at most every TRAINING_PROGRESS_SECONDS and at once when a stage starts or ends. Nothing is
resumed: an experiment that runs again (its worker died, or stopped) starts from the beginning.

torch loads inside training.experiment's functions only: Django imports this module.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings

from training.experiment import Decoding, Progress, Stopped
from training.jobs import release_files, resolve_base
from training.models import Experiment
from training.runs import RunReporter, heartbeat

logger = logging.getLogger(__name__)

SAMPLES_KEPT = 20  # lines of replies.jsonl kept on the row, for the page
FILES = ("report.json", "replies.jsonl", "report.html")


def run_dir(experiment: Experiment) -> Path:
    return Path(settings.TRAINING_DIR) / f"experiment-{experiment.pk}"


class Reporter(RunReporter[Experiment]):
    """An experiment's progress, as the engine reports it stage by stage."""

    def __init__(self, experiment: Experiment) -> None:
        super().__init__(experiment)
        self.stage: tuple[int, str] | None = None

    def progress(self, progress: Progress) -> None:
        """A new stage, its first and its last step land at once; the steps between wait."""
        stage = (progress.stage, progress.label)
        edge = stage != self.stage or progress.done in (0, progress.total)
        self.stage = stage
        self.set(
            force=edge,
            stage=progress.stage,
            stages=progress.stages,
            label=progress.label[:200],
            done=progress.done,
            total=progress.total,
            fraction=progress.fraction,
        )


def run(experiment_id: int, worker: str) -> None:
    """Run a queued experiment to its end (or to where it is stopped)."""
    experiment = Experiment.objects.select_related("release").filter(pk=experiment_id).first()
    if experiment is None or not experiment.claim(worker):
        logger.info("experiment %s is not queued: nothing to do", experiment_id)
        return
    reporter = Reporter(experiment)
    again = " (it starts again from the beginning)" if experiment.attempts > 1 else ""
    reporter.log(f"Attempt {experiment.attempts} on {worker}{again}")
    try:
        with heartbeat(experiment):
            _run(experiment, reporter)
    except Stopped:
        _stopped(experiment, reporter)
    except Exception as exc:
        logger.exception("experiment %s failed", experiment_id)
        reporter.fail(exc)


def _run(experiment: Experiment, reporter: Reporter) -> None:
    from training.experiment import run_experiment

    reporter.set(force=True, label="Preparing the release's files")
    data = release_files(experiment.release)
    base = resolve_base(experiment.base_model)
    teacher = None
    if "teacher" in experiment.arms:
        from generation.teacher import TeacherConfig, get_teacher

        config = TeacherConfig.from_env()
        reporter.log(f"Teacher: {config.model} ({config.backend})")
        reporter.set(force=True, teacher=config.as_dict())
        teacher = get_teacher(config)
    out = run_dir(experiment)
    shutil.rmtree(out, ignore_errors=True)  # an earlier attempt's half-made files
    report = run_experiment(
        data,
        out,
        arms=experiment.arms,
        seeds=experiment.seeds,
        max_steps=experiment.max_steps,
        epochs=experiment.epochs or 1.0,
        limit=experiment.limit,
        base=base,
        decoding=Decoding.from_dict(experiment.decoding),
        teacher=teacher,
        log=reporter.log,
        on_progress=reporter.progress,
        should_stop=reporter.should_stop,
    )
    reporter.log(f"Done: {report['replies_scored']} test turns scored")
    reporter.flush()
    experiment.finish(
        Experiment.Status.DONE,
        label="Done",
        fraction=1.0,
        report=finite(report),
        samples=first_replies(out / "replies.jsonl"),
    )


def _stopped(experiment: Experiment, reporter: Reporter) -> None:
    if reporter.reason == "taken":
        logger.info("experiment %s was taken over: this attempt ends", experiment.pk)
        return
    if reporter.reason == "shutdown":
        reporter.log("The worker is shutting down: queued again, to start from the beginning")
        reporter.set(
            force=True,
            status=Experiment.Status.QUEUED,
            label="Queued again: its worker stopped; it starts again from the beginning",
        )
        return
    reporter.flush()
    where = experiment.progress_label  # the stage it was in, now on the row
    reporter.log(f"Cancelled during {where}")
    reporter.flush()
    experiment.finish(Experiment.Status.CANCELLED, label=f"Cancelled during {where}"[:200])


def first_replies(path: Path, count: int = SAMPLES_KEPT) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if len(rows) == count:
                break
            rows.append(json.loads(line))
    return rows


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as None, however deep: JSON columns refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
