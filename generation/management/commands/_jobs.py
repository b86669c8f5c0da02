"""What `generate` and `inpaint` share: teacher and sampling options, running, the summary."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from generation import runner
from generation.models import GenerationJob
from generation.teacher import LOCAL_TEMPERATURE, Sampling, TeacherConfig


def add_teacher_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"default {Sampling.temperature}; {LOCAL_TEMPERATURE} with the local model",
    )
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--max-tokens", type=int, default=Sampling.max_tokens)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--model", help="teacher model name (default: EXTES_TEACHER_MODEL, or the local model)"
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="run in this process, without a worker, and print the summary",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="with --inline: units at a time")


def teacher_and_sampling(options: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    config = TeacherConfig.from_env()
    if options.get("model"):
        config = TeacherConfig(config.backend, options["model"], config.base_url)
    temperature = options["temperature"]
    if temperature is None:
        temperature = LOCAL_TEMPERATURE if config.backend == "local" else Sampling.temperature
    sampling = Sampling(temperature, options["top_p"], options["max_tokens"], options["seed"])
    return config.as_dict(), sampling.as_dict()


def launch(command: BaseCommand, job: GenerationJob, options: dict[str, Any]) -> None:
    teacher = job.teacher
    command.stdout.write(
        f"{job}: teacher {teacher['backend']} {teacher['model']}"
        f"{' at ' + teacher['base_url'] if teacher.get('base_url') else ''}, "
        f"prompt {job.prompt_version}"
    )
    if not options["inline"]:
        from generation.tasks import start_job

        try:
            start_job.delay(job.pk)
        except BrokerUnreachable:
            job.delete()  # no worker would ever start it
            raise CommandError(
                f"{QUEUE_UNREACHABLE} Run it with --inline, or once it is back."
            ) from None
        command.stdout.write(f"queued; follow it at /generation/jobs/{job.pk}/")
        return
    try:
        job = runner.run_inline(job.pk, concurrency=options["concurrency"])
    except KeyboardInterrupt:
        job.request_cancel()
        raise CommandError(f"interrupted: {job} cancelled; what was made so far is kept") from None
    command.stdout.write("\n".join(summary(job)))


def summary(job: GenerationJob) -> list[str]:
    progress = job.progress()
    made = "candidates" if job.kind == GenerationJob.Kind.DRI else "dialogues"
    lines = [
        f"{job}: {job.get_status_display().lower()}{' (' + job.error + ')' if job.error else ''}",
        f"  units: {progress['done']} done, {progress['failed']} failed of {progress['planned']}",
        f"  created: {progress['created']} {made}",
        f"  filtered as duplicates: {progress['duplicates']}",
        f"  failed attempts: {progress['failed_attempts']}",
    ]
    lines += [f"    {kind}: {count}" for kind, count in progress["failures"].items()]
    lines.append(
        f"  teacher calls: {progress['calls']}, tokens: {progress['prompt_tokens']} prompt + "
        f"{progress['completion_tokens']} completion"
    )
    return lines
