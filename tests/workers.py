"""Real Celery worker processes for the end-to-end and browser tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def celery_worker(
    queue: str,
    env: Mapping[str, str],
    log: Path,
    pool: tuple[str, str] = ("threads", "3"),
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """`celery worker` on `queue` in its own process group (`pool`: kind, concurrency); its
    output goes to `log`. Stop it with os.killpg."""
    hostname = ["--hostname", f"{name}@%h"] if name else []
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
             "--queues", queue, "--pool", pool[0], "--concurrency", pool[1], *hostname,
             "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
