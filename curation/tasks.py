"""Celery tasks of curation: building a release's files, the safety screen of new dialogues,
and the agreement page's figures, in a worker."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from curation import screening
from curation.models import Release
from curation.releases import build as releases

logger = logging.getLogger(__name__)


@shared_task(name="curation.build_release", bind=True, acks_late=True, reject_on_worker_lost=True)
def build_release(self: Any, release_id: int) -> None:
    release = Release.objects.filter(pk=release_id).first()
    if release is None or not release.claim(self.request.hostname or "unknown-worker"):
        logger.info("release %s is built or being built elsewhere", release_id)
        return
    releases.build(release)


@shared_task(name="curation.screen_dialogues", acks_late=True, reject_on_worker_lost=True)
def screen_dialogues_task(ids: list[int] | None = None) -> str:
    """The classifier over the new dialogues waiting for it: ``ids`` (the ones its sender
    stored) among every one waiting, in batches, by one worker at a time (screening.sweep).
    Each dialogue is settled once, by a conditional update, however often it is queued."""
    return str(screening.sweep())


@shared_task(name="curation.refresh_agreement", acks_late=True, reject_on_worker_lost=True)
def refresh_agreement_task() -> str:
    """New figures for the agreement page (curation.lead.insights.agreement_figures): computed
    from the data as it is when the task runs, however many requests queued it."""
    from curation.lead import insights

    if insights.agreement_up_to_date():
        return "up to date"
    snapshot = insights.refresh_agreement()
    return f"computed in {snapshot.seconds:.1f} s"


@worker_ready.connect
def _recover_after_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker that starts queues again the builds a killed one left, and any whose message was
    lost (each is claimed once, however often it is queued)."""
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if settings.CELERY_TASK_DEFAULT_QUEUE not in queues:
        return
    if screening.mode() != "off" and screening.waiting_count():
        screen_dialogues_task.delay(None)  # whatever waited while no worker was there
    release_ids = Release.recover(sender.hostname)
    for release_id in release_ids:
        build_release.delay(release_id)
    if release_ids:
        logger.info("queued %d release builds again: %s", len(release_ids), release_ids)
    # Builds other workers hold are looked at again when their lease would run out: one whose
    # worker died as this one started (a restart under a new name) is then taken, not left.
    for release_id, seconds in Release.leases_left().items():
        build_release.apply_async((release_id,), countdown=seconds + 1)
