"""Celery tasks of training: thin wrappers around training.jobs.run and training.experiments.run,
on the training queue.

Serve them with a solo worker of their own (torch runs in the worker's main process):

    celery -A config worker --queues training --pool solo --concurrency 1 --hostname training@%h
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from training import experiments, jobs, sendback
from training.models import Experiment, ReplyPool, TrainingJob

logger = logging.getLogger(__name__)


@shared_task(name="training.run_job", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: int) -> None:
    jobs.run(job_id, self.request.hostname or "unknown-worker")


@shared_task(name="training.run_experiment", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_experiment(self: Any, experiment_id: int) -> None:
    experiments.run(experiment_id, self.request.hostname or "unknown-worker")


@shared_task(name="training.score_pool", bind=True, acks_late=True, reject_on_worker_lost=True)
def score_pool(self: Any, pool_id: int) -> None:
    sendback.run_pool(pool_id, self.request.hostname or "unknown-worker")


@worker_ready.connect
def _recover_after_start(sender: Any = None, **kwargs: Any) -> None:
    """A training worker that starts takes back the jobs a killed one left, from their last
    checkpoint, the experiments it left, from the beginning, and any queued job or experiment
    whose message was lost."""
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if settings.TRAINING_QUEUE not in queues:
        return
    job_ids = TrainingJob.orphans_of(sender.hostname)
    for job_id in job_ids:
        run_job.delay(job_id)
    if job_ids:
        logger.info("queued %d training jobs again: %s", len(job_ids), job_ids)
    experiment_ids = Experiment.orphans_of(sender.hostname)
    for experiment_id in experiment_ids:
        run_experiment.delay(experiment_id)
    if experiment_ids:
        logger.info("queued %d experiments again: %s", len(experiment_ids), experiment_ids)
    pool_ids = ReplyPool.orphans_of(sender.hostname)
    for pool_id in pool_ids:
        score_pool.delay(pool_id)
