"""Imported by a test's Celery worker (CELERY_WORKER_INCLUDE=tests.slow_release_writer): each
dialogue a release build writes takes EXTES_TEST_WRITE_DELAY seconds more, so that the test can
kill the worker in the middle of a build."""

from __future__ import annotations

import os
import time
from typing import Any

from curation.releases.build import ReleaseWriter

DELAY = float(os.environ.get("EXTES_TEST_WRITE_DELAY", "0.2"))
_add = ReleaseWriter.add


def _slow_add(self: ReleaseWriter, split: str, snap: dict[str, Any], *rest: Any) -> None:
    time.sleep(DELAY)
    _add(self, split, snap, *rest)


ReleaseWriter.add = _slow_add  # type: ignore[method-assign]
