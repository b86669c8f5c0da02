"""Screen the dialogues waiting for the crisis gate's classifier, here and now.

    python manage.py screen_safety [--limit N]

For when no worker runs (or its messages were lost): new dialogues wait as "screening", held out
of review, until a worker or this command runs the classifier over them. Prints what it did.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from curation import screening


class Command(BaseCommand):
    help = "Run the crisis gate's classifier over the dialogues waiting for it."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--limit", type=int, default=None, help="at most this many")

    def handle(self, *args: Any, **options: Any) -> None:
        waiting = screening.waiting_count()
        if not waiting:
            self.stdout.write("no dialogue is waiting for the safety screen")
            return
        self.stdout.write(f"{waiting} dialogues wait for the safety screen")
        report = screening.screen_waiting(limit=options["limit"])
        self.stdout.write(str(report))
        left = screening.waiting_count()
        if left:
            self.stdout.write(f"still waiting: {left}")
