from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.models import Scenario
from curation.vocabulary import normalize
from generation.management.commands._jobs import add_teacher_arguments, launch, teacher_and_sampling
from generation.models import GenerationJob, new_job


class Command(BaseCommand):
    help = (
        "Start a self-chat generation job: COUNT new dialogues per scenario in each round. "
        "Without --inline a Celery worker runs it; with --inline it runs here and prints a summary."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--scenario", action="append", default=[], help="repeatable; 'all' for all 36"
        )
        parser.add_argument(
            "--count", type=int, required=True, help="dialogues per scenario per round"
        )
        parser.add_argument("--rounds", type=int, default=1)
        parser.add_argument(
            "--mode",
            choices=GenerationJob.Mode.values,
            default=None,
            help="default: dialogue with an HTTP teacher, turns with the local model",
        )
        parser.add_argument("--examples", type=int, default=1, help="example dialogues per prompt")
        parser.add_argument(
            "--exchanges", type=int, default=6, help="turns mode: seeker/supporter pairs"
        )
        parser.add_argument("--strategy-policy", choices=["target", "teacher"], default="target")
        parser.add_argument(
            "--duplicate-threshold",
            type=float,
            default=0.92,
            help="cosine similarity above which a dialogue is a near-duplicate; 0 turns it off",
        )
        add_teacher_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["scenario"]:
            raise CommandError("name at least one --scenario (or --scenario all)")
        if options["count"] < 1 or options["rounds"] < 1:
            raise CommandError("--count and --rounds must be at least 1")
        teacher, sampling = teacher_and_sampling(options)
        mode = options["mode"] or ("dialogue" if teacher["backend"] == "http" else "turns")
        job = new_job(
            GenerationJob.Kind.SELFCHAT,
            teacher=teacher,
            sampling=sampling,
            scenarios=find_scenarios(options["scenario"]),
            mode=mode,
            per_scenario=options["count"],
            rounds=options["rounds"],
            examples_per_prompt=options["examples"],
            exchanges=options["exchanges"],
            strategy_policy=options["strategy_policy"],
            duplicate_threshold=options["duplicate_threshold"] or None,
        )
        launch(self, job, options)


def find_scenarios(names: list[str]) -> list[Scenario]:
    official = Scenario.objects.filter(is_official=True)
    if any(n.strip().lower() == "all" for n in names):
        return list(official)
    found = []
    by_key = Scenario.by_key()
    for name in names:
        match = by_key.get(normalize(name))
        if match is None:
            raise CommandError(f"no scenario called {name!r}")
        found.append(match)
    return found
