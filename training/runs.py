"""A training worker's side of a leased row (training.models.LeasedRun), shared by training jobs
(training.jobs) and experiments (training.experiments): the heartbeat while it works, whether the
worker is shutting down, and the reporter that writes progress and the log to the row."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import connection
from django.utils import timezone

from training.models import LOG_LINES, LeasedRun

Run = TypeVar("Run", bound=LeasedRun)


class RunReporter(Generic[Run]):
    """Writes a row's progress and log to it: at most every TRAINING_PROGRESS_SECONDS, and at
    once for what must not wait (`force`: phase changes, the end). Also answers `should_stop`."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.interval = settings.TRAINING_PROGRESS_SECONDS
        self.lines = run.log_tail.splitlines()
        self.pending: dict[str, Any] = {}
        self.written = -math.inf
        self.reason = ""  # why should_stop said yes

    def log(self, line: str) -> None:
        self.lines.append(f"{timezone.now():%H:%M:%S} {line}")
        del self.lines[:-LOG_LINES]
        self.pending["log_tail"] = "\n".join(self.lines)

    def set(self, force: bool = False, **values: Any) -> None:
        self.pending |= values
        now = time.monotonic()
        if force or now - self.written >= self.interval:
            self.run.record(**self.pending)
            self.pending = {}
            self.written = now

    def flush(self) -> None:
        self.set(force=True)

    def fail(self, exc: Exception) -> None:
        """End the row as failed, with `exc` in its log and as its error."""
        error = f"{type(exc).__name__}: {exc}"
        self.log(f"Failed: {error}")
        self.flush()
        self.run.finish(self.run.Status.FAILED, error=error)

    def should_stop(self) -> bool:
        """Whether to stop where it is; `reason` says why: "shutdown" (this worker is stopping),
        "cancelled" or "taken" (another worker holds the row now)."""
        if worker_stopping():
            self.reason = "shutdown"
            return True
        answer = list(self.run.held().values_list("cancel_requested", flat=True))
        if not answer:
            self.reason = "taken"
        elif answer[0]:
            self.reason = "cancelled"
        else:
            return False
        return True


def worker_stopping() -> bool:
    """Whether this Celery worker is shutting down (warm or cold)."""
    from celery.worker import state

    # Celery sets these on a warm or cold shutdown; 0 (EX_OK) counts, None and False do not.
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )


@contextlib.contextmanager
def heartbeat(run: LeasedRun) -> Iterator[None]:
    """While the block runs, tell the row every tenth of a lease that this worker is alive: some
    phases (loading, validation, a long generation batch) report no progress for minutes, and a
    row silent for a whole lease is taken for abandoned."""
    done = threading.Event()

    def beat() -> None:
        try:
            while not done.wait(settings.TRAINING_LEASE_SECONDS / 10):
                run.beat()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{run.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
