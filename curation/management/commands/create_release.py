from __future__ import annotations

import re
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation.models import Dialogue, Release
from curation.releases.build import FileOptions, Filters, create_release, new_release
from curation.tasks import build_release


class Command(BaseCommand):
    help = (
        "Freeze a release: snapshot the chosen dialogues (by default every accepted one) and split "
        "them deterministically, stratified by scenario. Write its files with export_release. "
        "With --background a worker builds it instead, files included, as from the web."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="e.g. extes-curated-1.0.0")
        parser.add_argument(
            "--status",
            action="append",
            choices=Dialogue.Status.values,
            help="repeatable; default: accepted",
        )
        parser.add_argument("--scenario", action="append", default=[])
        parser.add_argument("--min-agreeing-reviews", type=int, default=0)
        parser.add_argument("--no-dri", action="store_true", help="leave DRI candidates out")
        parser.add_argument(
            "--dri-policy",
            choices=Release.DriPolicy.values,
            default=Release.DriPolicy.ACCEPTABLE,
            help="which DRI candidates become sft_dri examples: acceptable (ranked, marked "
            "unacceptable by no one), unrejected (no one marked them unacceptable, unranked ones "
            "too) or best (the top-ranked reply of each masked turn); default: acceptable",
        )
        parser.add_argument(
            "--strategy-tags",
            action="store_true",
            help="its SFT files prefix supporter texts with [Strategy]",
        )
        parser.add_argument(
            "--dpo-pairs", choices=["best_vs_rest", "all_pairs"], default="best_vs_rest"
        )
        parser.add_argument("--dpo-min-margin", type=float, default=1.0)
        parser.add_argument("--split", default="80/10/10", help="train/valid/test percentages")
        parser.add_argument("--licence", default="CC BY-NC 4.0")
        parser.add_argument("--notes", default="")
        parser.add_argument(
            "--background",
            action="store_true",
            help="queue the build on a worker (which writes the files too) and return at once",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise CommandError(f"{name!r}: use lower case letters, digits, '.', '-' and '_' only")
        try:
            train, valid, test = (int(x) for x in options["split"].split("/"))
        except ValueError:
            raise CommandError("--split must look like 80/10/10") from None
        filters = Filters(
            statuses=options["status"] or [Dialogue.Status.ACCEPTED],
            scenarios=options["scenario"],
            min_agreeing_reviews=options["min_agreeing_reviews"],
            dri=not options["no_dri"],
        )
        make = self._queue if options["background"] else create_release
        try:
            release = make(
                name,
                filters,
                {"train": train, "valid": valid, "test": test},
                licence=options["licence"],
                notes=options["notes"],
                file_options=FileOptions(
                    options["strategy_tags"], options["dpo_pairs"], options["dpo_min_margin"]
                ),
                dri_policy=options["dri_policy"],
            )
        except IntegrityError:
            raise CommandError(
                f"a release called {name!r} exists already; releases never change"
            ) from None
        if options["background"]:
            self.stdout.write(
                f"release #{release.pk} {release.name}: queued; a worker freezes it and writes "
                "its files (its page shows the progress)"
            )
            return
        counts = release.counts
        self.stdout.write(
            f"{release.name}: {sum(counts.values())} dialogues (train {counts['train']}, "
            f"valid {counts['valid']}, test {counts['test']}), DRI policy {release.dri_policy}, "
            f"checksum {release.checksum[:16]}…"
        )

    def _queue(self, name: str, *args: Any, **kwargs: Any) -> Release:
        try:
            with transaction.atomic():
                release = new_release(name, *args, **kwargs)
                build_release.delay_on_commit(release.pk)
        except BrokerUnreachable:
            release.delete()  # committed a moment ago, and no worker would ever build it
            raise CommandError(f"{QUEUE_UNREACHABLE} Try again once it is back.") from None
        return release
