from __future__ import annotations

import os
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.exporting import write_extes
from curation.models import Dialogue, Scenario
from curation.vocabulary import normalize


class Command(BaseCommand):
    help = "Export dialogues in the exact ExTES format (a JSON array); '-' writes to stdout."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--format", default="extes", choices=["extes"])
        parser.add_argument("--out", required=True)
        parser.add_argument("--status", choices=Dialogue.Status.values)
        parser.add_argument("--origin", choices=Dialogue.Origin.values)
        parser.add_argument("--scenario", help="scenario name or alias, any case")

    def handle(self, *args: Any, **options: Any) -> None:
        dialogues = Dialogue.objects.all()
        if options["status"]:
            dialogues = dialogues.filter(status=options["status"])
        if options["origin"]:
            dialogues = dialogues.filter(origin=options["origin"])
        if options["scenario"]:
            dialogues = dialogues.filter(scenario=_find_scenario(options["scenario"]))

        if options["out"] == "-":
            count = write_extes(dialogues, sys.stdout)
            return
        target = Path(options["out"])
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            count = write_extes(dialogues, out)
        os.replace(partial, target)  # a reader never sees half a file
        self.stderr.write(f"wrote {count} dialogues to {target}")


def _find_scenario(name: str) -> Scenario:
    scenario = Scenario.by_key().get(normalize(name))
    if scenario is None:
        raise CommandError(f"no scenario called {name!r}")
    return scenario
