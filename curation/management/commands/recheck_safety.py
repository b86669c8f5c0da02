"""Run the crisis gate again over the dialogues already in the studio (after the gate changed).

    python manage.py recheck_safety [--dry-run] [--layers rules,model]

A dialogue nobody flagged that the gate flags now goes to the leads' safety queue, with the
gate's reasons ("recheck gate"). Nothing is ever unflagged here: a dialogue a gate flagged that
the gate no longer matches stays where it is, for a lead to clear, and is only counted. Dialogues
a lead cleared or excluded are left alone: a lead decided.
"""

from __future__ import annotations

from argparse import ArgumentParser
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import Prefetch

from curation.models import Dialogue, SafetyStatus, Turn
from generation import crisis_gate


class Command(BaseCommand):
    help = "Run the crisis gate again over every dialogue; report what changed."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report, but change nothing")
        parser.add_argument(
            "--layers", default=None, help="comma-separated: rules,model (default: the studio's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        seekers = Turn.objects.filter(role=Turn.Role.SEEKER).order_by("index")
        dialogues = Dialogue.objects.filter(
            safety_status__in=[SafetyStatus.NONE, SafetyStatus.FLAGGED]
        ).prefetch_related(Prefetch("turns", queryset=seekers, to_attr="seeker_turns"))
        layers = (
            tuple(x.strip() for x in options["layers"].split(",") if x.strip())
            if options["layers"]
            else crisis_gate.default_layers()
        )
        checked, newly, unmatched = 0, Counter[str](), 0

        def settle(batch: list[Dialogue]) -> None:
            nonlocal unmatched
            groups = [
                [d.description, *(t.current_text for t in getattr(d, "seeker_turns"))]  # noqa: B009
                for d in batch
            ]
            for dialogue, check in zip(batch, crisis_gate.check_many(groups, layers), strict=True):
                if dialogue.safety_status == SafetyStatus.FLAGGED:
                    source = str(dialogue.safety_notes.get("source", ""))
                    unmatched += source.endswith("gate") and not check.flagged
                elif check.flagged:
                    newly[dialogue.origin] += 1
                    if not options["dry_run"]:
                        dialogue.flag_by_gate(
                            "recheck gate",
                            list(check.categories),
                            list(check.matches),
                            [r.as_dict() for r in check.reasons],
                        )
            batch.clear()

        with transaction.atomic():
            batch: list[Dialogue] = []
            for dialogue in dialogues.iterator(chunk_size=500):
                checked += 1
                batch.append(dialogue)
                if len(batch) >= 200:
                    settle(batch)
            settle(batch)
            if options["dry_run"]:
                transaction.set_rollback(True)
        by_origin = ", ".join(f"{origin} {count}" for origin, count in sorted(newly.items()))
        verb = "would flag" if options["dry_run"] else "newly flagged"
        self.stdout.write(f"checked {checked} dialogues not settled by a lead")
        self.stdout.write(f"{verb}: {sum(newly.values())}{f' ({by_origin})' if newly else ''}")
        self.stdout.write(
            f"flagged by a gate, not matched now (left for a lead to clear): {unmatched}"
        )
