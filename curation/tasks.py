"""Celery tasks of curation: building a release's files in a worker."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from celery import shared_task
from django.conf import settings

from curation.models import Release
from curation.releases import ReleaseWriter, freeze, write_files

logger = logging.getLogger(__name__)


def release_folder(release: Release) -> Path:
    return Path(settings.MEDIA_ROOT) / "releases" / release.name


@shared_task(name="curation.build_release", acks_late=True, reject_on_worker_lost=True)
def build_release(release_id: int) -> None:
    # Claim: only the first delivery of the task builds (progress moves off 0).
    claimed = Release.objects.filter(
        pk=release_id, status=Release.Status.BUILDING, progress=0
    ).update(progress=1)
    if not claimed:
        logger.info("release %s is built or being built elsewhere", release_id)
        return
    release = Release.objects.get(pk=release_id)
    folder = release_folder(release)

    def progress(percent: int) -> None:
        Release.objects.filter(pk=release_id).update(progress=max(2, percent))

    try:
        if folder.exists():
            shutil.rmtree(folder)
        # One pass: each snapshot goes to the database and to the files as it is made.
        writer = ReleaseWriter(release, folder, progress=progress)
        try:
            frozen_now = freeze(release, sink=writer, progress=progress)
        except BaseException:
            writer.abort()
            raise
        if frozen_now:
            writer.finish()
        else:  # frozen by an earlier attempt: the files come from the stored snapshots
            writer.abort()
            write_files(release, folder, progress=progress)
    except Exception as exc:
        logger.exception("release %s failed", release_id)
        Release.objects.filter(pk=release_id).update(
            status=Release.Status.FAILED, error=f"{type(exc).__name__}: {exc}"
        )
        return
    Release.objects.filter(pk=release_id).update(status=Release.Status.READY, progress=100)
