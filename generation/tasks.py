"""Celery tasks: thin wrappers that take ids and call generation.runner."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_ready
from django.conf import settings

from generation import runner

logger = logging.getLogger(__name__)


@shared_task(name="generation.start_job", acks_late=True, reject_on_worker_lost=True)
def start_job(job_id: int) -> None:
    for unit_id in runner.start(job_id):
        run_unit.delay(unit_id)


@shared_task(name="generation.run_unit", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_unit(self: Any, unit_id: int) -> None:
    worker = self.request.hostname or "unknown-worker"
    for next_id in runner.process_unit(unit_id, worker):
        run_unit.delay(next_id)


@worker_init.connect
@worker_process_init.connect
def _torch_threads(**kwargs: Any) -> None:
    """EXTES_WORKER_TORCH_THREADS: torch's intra-op threads in this worker process."""
    if settings.WORKER_TORCH_THREADS > 0:
        import torch

        torch.set_num_threads(settings.WORKER_TORCH_THREADS)


@worker_ready.connect
def _recover_after_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker that starts picks up what a killed one left: its units and unstarted jobs."""
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if settings.GENERATION_QUEUE not in queues:
        return
    jobs, units = runner.recover(sender.hostname)
    for job_id in jobs:
        start_job.delay(job_id)
    for unit_id in units:
        run_unit.delay(unit_id)
    if jobs or units:
        logger.info("recovered %d queued jobs and %d units", len(jobs), len(units))
