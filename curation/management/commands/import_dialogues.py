from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.importing import ImportFileError, import_file
from curation.models import Dialogue


class Command(BaseCommand):
    help = (
        "Import dialogues from an ExTES JSON array or ESConv (JSON Lines or the nested ESConv.json). "
        "Repairs known drift, rejects what cannot be repaired into a JSON Lines file, skips "
        "dialogues already present, and saves nothing from the file if anything goes wrong."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", required=True, choices=["extes", "esconv"])
        parser.add_argument("--dry-run", action="store_true", help="report, but save nothing")
        parser.add_argument(
            "--rejects",
            type=Path,
            default=None,
            help="where to write rejected records (default: EXTES_DATA_DIR/rejects/)",
        )
        parser.add_argument(
            "--origin",
            default=Dialogue.Origin.IMPORTED,
            choices=[Dialogue.Origin.IMPORTED, Dialogue.Origin.SEED],
        )
        parser.add_argument(
            "--screen-now",
            action="store_true",
            help="run the crisis gate's classifier here, not in a worker (EXTES_SAFETY_SCREEN)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = import_file(
                options["path"],
                options["format"],
                origin=options["origin"],
                dry_run=options["dry_run"],
                rejects_path=options["rejects"],
                screen="inline" if options["screen_now"] else None,
            )
        except ImportFileError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(f"interrupted: nothing from {options['path']} was saved") from None
        self.stdout.write("\n".join(report.lines()))
