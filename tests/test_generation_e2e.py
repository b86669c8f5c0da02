"""Generation through the real job system: Redis, Celery worker processes, the HTTP fake teacher."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fake_teacher import FakeTeacher
from tests.workers import celery_worker

pytestmark = pytest.mark.e2e


class Site:
    """A studio data folder (SQLite file) shared by this test, `manage.py` runs and workers."""

    def __init__(self, tmp_path: Path, redis_url: str, teacher_url: str) -> None:
        self.data = tmp_path / "var"
        self.env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.env |= {
            "EXTES_DATA_DIR": str(self.data),
            "REDIS_URL": redis_url,
            "EXTES_GENERATION_QUEUE": f"generation-test-{uuid.uuid4().hex[:8]}",
            "EXTES_TEACHER_BASE_URL": teacher_url,
            "EXTES_TEACHER_MODEL": "fake-teacher",
            "EXTES_GENERATION_LEASE_SECONDS": "30",
            # Imports by `manage.py` here are screened where they run, not by a worker.
            "EXTES_SAFETY_SCREEN": "inline",
            # The fake teacher's dialogues are ESConv's, on any topic (tests/conftest.py).
            "EXTES_GENERATION_GATES": "repetition,role_confusion,prompt_leakage",
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.manage("migrate", "-v0")
        self.manage("setup_studio", "--no-demo-users")

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start_worker(
        self,
        name: str = "gen-worker",
        queue: str | None = None,
        pool: tuple[str, str] = ("threads", "3"),
    ) -> subprocess.Popen[bytes]:
        """A real Celery worker process on this site's queue (`pool`: kind, concurrency)."""
        worker = celery_worker(
            queue or self.env["EXTES_GENERATION_QUEUE"],
            self.env,
            self.data / f"{name}-{len(self.workers)}.log",
            pool,
            name,
        )
        self.workers.append(worker)
        return worker

    def query(self, sql: str, *params: object) -> list[tuple]:
        with sqlite3.connect(self.data / "extes.sqlite3", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def job_status(self, job_id: int) -> str:
        return self.query("SELECT status FROM generation_generationjob WHERE id = ?", job_id)[0][0]

    def wait_for(self, condition, timeout: float = 90, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = "\n".join(
                    p.read_text(errors="replace")[-3000:] for p in self.data.glob("*.log")
                )
                pytest.fail(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.3)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)


@pytest.fixture
def site(tmp_path, redis_url):
    with FakeTeacher(latency=0.1) as fake:
        site = Site(tmp_path, redis_url, fake.url)
        site.fake = fake
        try:
            yield site
        finally:
            site.stop()


def queued_job_id(output: str) -> int:
    line = next(line for line in output.splitlines() if " job #" in line)
    return int(line.split(" job #")[1].split(":")[0])


def test_a_dialogue_job_and_a_dri_job_run_to_completion_on_a_worker(site):
    site.fake.script = ["fenced_prose", "refusal"]
    site.start_worker()
    job_id = queued_job_id(
        site.manage(
            "generate",
            "--scenario",
            "Anxiety and Panic",
            "--scenario",
            "Academic Stress",
            "--count",
            "3",
            "--rounds",
            "2",
            "--duplicate-threshold",
            "0",
        )
    )
    site.wait_for(lambda: site.job_status(job_id) == "completed", what="the self-chat job")
    made = site.query(
        "SELECT COUNT(*) FROM curation_dialogue WHERE origin = 'generated' AND status = 'pending'"
    )
    assert made == [(12,)]
    failures = site.query(
        "SELECT failure_class FROM generation_generationfailure WHERE job_id = ?", job_id
    )
    assert failures == [("refusal",)]

    site.query("UPDATE curation_dialogue SET status = 'accepted' WHERE origin = 'generated'")
    dri_id = queued_job_id(
        site.manage("inpaint", "--count", "3", "--candidates", "2", "--duplicate-threshold", "0")
    )
    site.wait_for(lambda: site.job_status(dri_id) == "completed", what="the DRI job")
    assert site.query("SELECT COUNT(*) FROM curation_candidate") == [(6,)]


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(site):
    site.fake.latency = 0.6
    units_in_job = 24  # 8 rounds of 3 threads: the kill lands while some are in flight
    first = site.start_worker("gen-a")
    job_id = queued_job_id(
        site.manage(
            "generate",
            "--scenario",
            "Caregiver Support",
            "--count",
            str(units_in_job),
            "--duplicate-threshold",
            "0",
        )
    )
    done = "SELECT COUNT(*) FROM generation_generationunit WHERE job_id = ? AND status = 'done'"
    site.wait_for(lambda: site.query(done, job_id)[0][0] >= 3, what="three finished units")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    running = site.query(
        "SELECT COUNT(*) FROM generation_generationunit WHERE job_id = ? AND status = 'running'",
        job_id,
    )
    assert running[0][0] >= 1, "the kill should have interrupted units in flight"

    site.start_worker("gen-a")  # the same worker name, restarted: it takes its orphans back
    site.wait_for(lambda: site.job_status(job_id) == "completed", what="the job after the restart")
    units = site.query(
        "SELECT status, dialogue_id FROM generation_generationunit WHERE job_id = ?", job_id
    )
    assert len(units) == units_in_job
    assert {status for status, _ in units} == {"done"}
    dialogue_ids = [d for _, d in units]
    assert len(set(dialogue_ids)) == units_in_job
    generated = site.query(
        "SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM curation_dialogue WHERE origin = 'generated'"
    )
    assert generated == [(units_in_job, units_in_job)]
