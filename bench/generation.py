"""Generation throughput through the real worker path, and the local model's speed.

    python bench/generation.py [--dialogues 200] [--concurrency 16] [--latency 0.2]
                               [--duplicate-threshold 0] [--skip-local] [--threads-per-slot 1]

Starts the HTTP fake teacher (tests/fake_teacher.py) answering every request after `--latency`
seconds, a Redis (the one on 127.0.0.1:6379, else one started here), and one Celery worker process
with a thread pool of `--concurrency`; then runs a self-chat job of `--dialogues` dialogues over
10 scenarios on a fresh SQLite data folder and times it from enqueueing until every dialogue is
stored and screened (with EXTES_SAFETY_SCREEN=worker, the default, a worker on the default queue
screens them in batches, as the studio's does; its CPU counts as the workers').
Ideal throughput is concurrency / latency (every slot always waiting on the teacher). The teacher
is given `--concurrency` slots in all (EXTES_TEACHER_MAX_CONCURRENCY per worker process); with
`--threads-per-slot` above 1 a worker has more threads than slots, so that a thread storing its
dialogue does not keep a slot idle.
Prints:
    generation dialogues=200 concurrency=16 … seconds=… dialogues_per_s=… ideal_per_s=80 ratio=…
    generation_cpu worker_ms_per_dialogue=… machine_busy=… (share of all cores busy meanwhile)
    local_backend batch=4 new_tokens=… seconds=… tokens_per_s=…
The near-duplicate filter (embeddings) is off by default here: it costs CPU per dialogue that a
2-core machine cannot hide; pass --duplicate-threshold 0.92 to measure with it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = [
    "Anxiety and Panic", "Academic Stress", "Breakups or Divorce", "Caregiver Support",
    "Career Transitions", "Depression and Low Mood", "Financial Worries and Uncertainty",
    "Job Loss or Career Setbacks", "Moving to a New City or Country", "Spirituality and Faith",
]  # fmt: skip


def main(
    dialogues: int,
    concurrency: int,
    latency: float,
    threshold: float,
    skip_local: bool,
    pool: str,
    workers: int,
    postgres: str,
    gates: str,
    warmup: int,
    threads_per_slot: float = 1.0,
    torch_threads: int = 0,
) -> None:
    from tests.fake_teacher import FakeTeacher

    data = Path(tempfile.mkdtemp(prefix="extes-bench-gen-"))
    database = _fresh_postgres(postgres) if postgres else ""
    with FakeTeacher(latency=latency) as fake:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        if database:
            env["DATABASE_URL"] = database
        env |= {
            "EXTES_DATA_DIR": str(data),
            "EXTES_GENERATION_QUEUE": f"generation-bench-{uuid.uuid4().hex[:8]}",
            "EXTES_TEACHER_BASE_URL": fake.url,
            "EXTES_TEACHER_MODEL": "fake-teacher",
            "EXTES_TEACHER_MAX_CONCURRENCY": str(concurrency // workers),
            # The fake teacher's dialogues are ESConv's, on any topic: the off-scenario gate
            # would reject them at random (it is measured with the near-duplicate filter's
            # embedding, --gates ...,off_scenario).
            "EXTES_GENERATION_GATES": gates,
            "EXTES_WORKER_TORCH_THREADS": str(torch_threads),
        }
        from config import studio

        started: list[subprocess.Popen[bytes]] = []
        redis_url, _ = studio._redis(started)  # before Django reads its settings
        # A Redis database of its own: the screening messages go to the default queue, which
        # other workers on this machine may serve.
        redis_url = redis_url.rsplit("/", 1)[0] + "/11"
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        env["REDIS_URL"] = redis_url
        if not database:
            os.environ.pop("DATABASE_URL", None)
        os.environ.update(env)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115

        # `workers` processes share the concurrency: several processes use several cores.
        worker_processes = [
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
                 "--queues", env["EXTES_GENERATION_QUEUE"], "--pool", pool, "--hostname",
                 f"bench{number}@%h", "--concurrency", str(round(concurrency // workers * threads_per_slot)),
                 "--without-mingle", "--without-gossip"],
                cwd=ROOT, env=env, start_new_session=True,
            )
            for number in range(workers)
        ]  # fmt: skip
        screen = os.environ.get("EXTES_SAFETY_SCREEN", "worker").strip().lower()
        if screen == "worker":  # the default: a worker on the default queue screens in batches
            worker_processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel",
                     "WARNING", "--queues", "default", "--pool", "threads", "--hostname",
                     "benchscreen@%h", "--concurrency", "2", "--without-mingle",
                     "--without-gossip"],
                    cwd=ROOT, env=env, start_new_session=True,
                )
            )  # fmt: skip
        try:
            if not studio._worker_answers(redis_url, timeout=60):
                raise SystemExit("the worker did not start")
            time.sleep(2)  # let every worker process connect
            if warmup:
                # Every process loads its models (embedder, classifier: seconds of CPU each) on
                # first use; a first job does that, so the figures are the steady state's.
                _run_job(warmup, threshold, fake)
            cpu_before = _cpu_seconds([w.pid for w in worker_processes])
            own_before = time.process_time()
            busy_before = _machine_busy()
            seconds = _run_job(dialogues, threshold, fake)
            worker_cpu = _cpu_seconds([w.pid for w in worker_processes]) - cpu_before
            own_cpu = time.process_time() - own_before
            busy = _machine_busy() - busy_before
        finally:
            for worker in worker_processes:
                os.killpg(worker.pid, signal.SIGTERM)
            for worker in worker_processes:
                worker.wait(timeout=30)
            for server in started:
                os.killpg(server.pid, signal.SIGTERM)
        ideal = concurrency / latency
        rate = dialogues / seconds
        print(
            f"generation dialogues={dialogues} concurrency={concurrency} pool={pool} "
            f"database={'postgresql' if database else 'sqlite'} "
            f"workers={workers} threads_per_slot={threads_per_slot} torch_threads={torch_threads} "
            f"latency_s={latency} "
            f"duplicate_filter={'on' if threshold else 'off'} seconds={seconds:.2f} "
            f"dialogues_per_s={rate:.1f} ideal_per_s={ideal:.0f} ratio={rate / ideal:.2f} "
            f"peak_teacher_requests={fake.peak_in_flight} gates={gates} warmup={warmup} "
            f"screen={screen}"
        )
        print(
            f"generation_cpu worker_ms_per_dialogue={1000 * worker_cpu / dialogues:.1f} "
            f"fake_teacher_and_bench_ms_per_dialogue={1000 * own_cpu / dialogues:.1f} "
            f"cores={os.cpu_count()} machine_busy={busy / seconds / (os.cpu_count() or 1):.2f}"
        )
    if not skip_local:
        _local_backend(data / "models")


def _run_job(dialogues: int, threshold: float, fake) -> float:
    from django.db import transaction

    from curation.models import Dialogue, SafetyStatus, Scenario
    from generation.models import GenerationJob, new_job
    from generation.tasks import start_job
    from generation.teacher import Sampling, TeacherConfig

    per_scenario, extra = divmod(dialogues, len(SCENARIOS))
    if extra:
        raise SystemExit(f"--dialogues must be a multiple of {len(SCENARIOS)}")
    job = new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
        sampling=Sampling().as_dict(),
        scenarios=list(Scenario.objects.filter(name__in=SCENARIOS)),
        per_scenario=per_scenario,
        duplicate_threshold=threshold or None,
    )
    start = time.perf_counter()
    with transaction.atomic():
        start_job.delay_on_commit(job.pk)
    while True:
        job.refresh_from_db()
        if job.is_finished:
            break
        time.sleep(0.02)
    # Until every dialogue is screened: before that no annotator can review it.
    waiting = Dialogue.objects.filter(origin="generated", safety_status=SafetyStatus.SCREENING)
    while waiting.exists():
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    made = job.units.filter(dialogue__isnull=False).count()
    if job.status != "completed" or made != dialogues:
        raise SystemExit(f"job ended {job.status} with {made} dialogues: {job.progress()}")
    return seconds


def _cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of processes (Linux /proc), their threads included."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat): every process, not
    only the workers (the fake teacher, Redis, the database)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _fresh_postgres(url: str) -> str:
    """A new, empty database on the server of `url`, e.g. postgres://postgres@127.0.0.1/postgres."""
    import psycopg

    name = f"extes_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def _local_backend(models_dir: Path) -> None:
    from generation.localmodel import LocalRunner, ensure_local_model
    from generation.teacher import Sampling

    cached = Path(os.environ.get("EXTES_TEST_MODELS_DIR", ROOT / "var" / "test-models"))
    folder = ensure_local_model(cached if cached.exists() else models_dir)
    runner = LocalRunner(folder)
    conversations = [
        [
            {
                "role": "user",
                "content": f"In two sentences, how can someone calm down before {topic}?",
            }
        ]
        for topic in ("an exam", "a job interview", "a flight", "a hard conversation")
    ]
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=64, seed=1)
    runner.generate(conversations[:1], Sampling(max_tokens=4))  # warm up
    start = time.perf_counter()
    results = runner.generate(conversations, sampling)
    seconds = time.perf_counter() - start
    new_tokens = sum(r.completion_tokens for rows in results for r in rows)
    print(
        f"local_backend batch={len(conversations)} new_tokens={new_tokens} seconds={seconds:.2f} "
        f"tokens_per_s={new_tokens / seconds:.1f} threads={_threads()}"
    )


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--duplicate-threshold", type=float, default=0.0)
    parser.add_argument("--pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("--workers", type=int, default=2, help="worker processes sharing the slots")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--gates", default="repetition,role_confusion,prompt_leakage")
    parser.add_argument(
        "--warmup", type=int, default=20, help="dialogues of a first, unmeasured job (0: none)"
    )
    parser.add_argument(
        "--threads-per-slot",
        type=float,
        default=1.0,
        help="worker threads per teacher slot (the teacher's limit stays --concurrency)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="EXTES_WORKER_TORCH_THREADS of the workers (0: torch's default)",
    )
    parser.add_argument(
        "--postgres",
        default="",
        help="server URL (e.g. postgres://postgres@127.0.0.1:5432/postgres): run on a new database there",
    )
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(
        args.dialogues,
        args.concurrency,
        args.latency,
        args.duplicate_threshold,
        args.skip_local,
        args.pool,
        args.workers,
        args.postgres,
        args.gates,
        args.warmup,
        args.threads_per_slot,
        args.torch_threads,
    )
