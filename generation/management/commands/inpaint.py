from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.models import Dialogue
from generation.management.commands._jobs import add_teacher_arguments, launch, teacher_and_sampling
from generation.management.commands.generate import find_scenarios
from generation.models import GenerationJob, new_job


class Command(BaseCommand):
    help = (
        "Start a DRI job: for COUNT dialogues (accepted ones by default) mask supporter turns and "
        "have the teacher write K candidate replies for each."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--count", type=int, required=True, help="how many dialogues")
        parser.add_argument("--candidates", type=int, default=4, help="candidates per masked turn")
        parser.add_argument(
            "--status",
            choices=Dialogue.Status.values,
            default="accepted",
            help="which dialogues to take",
        )
        parser.add_argument("--scenario", action="append", default=[])
        parser.add_argument("--mask", choices=["all", "random", "strategy"], default="random")
        parser.add_argument(
            "--turns", type=int, default=1, help="with --mask random: turns per dialogue"
        )
        parser.add_argument("--strategy", action="append", default=[], help="with --mask strategy")
        parser.add_argument(
            "--no-right-context",
            action="store_true",
            help="show the teacher only the turns before the gap",
        )
        parser.add_argument(
            "--duplicate-threshold",
            type=float,
            default=0.92,
            help="cosine above which candidates count as the same; 0: exact only",
        )
        add_teacher_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1 or options["candidates"] < 1:
            raise CommandError("--count and --candidates must be at least 1")
        if not Dialogue.objects.filter(status=options["status"]).exists():
            raise CommandError(f"no {options['status']} dialogues to inpaint")
        teacher, sampling = teacher_and_sampling(options)
        job = new_job(
            GenerationJob.Kind.DRI,
            teacher=teacher,
            sampling=sampling,
            scenarios=find_scenarios(options["scenario"]) if options["scenario"] else None,
            dri_source_status=options["status"],
            dri_dialogue_limit=options["count"],
            dri_candidates=options["candidates"],
            dri_mask=options["mask"],
            dri_turns_per_dialogue=options["turns"],
            dri_strategies=options["strategy"],
            dri_right_context=not options["no_right_context"],
            duplicate_threshold=options["duplicate_threshold"] or None,
        )
        launch(self, job, options)
