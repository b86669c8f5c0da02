from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.importing import ImportFileError, import_file
from curation.models import Dialogue
from curation.parsing import speaker_key


def parse_roles(value: str) -> dict[str, str]:
    """``--roles`` as written, "Caller=seeker,Volunteer=supporter", to {name: role}."""
    roles: dict[str, str] = {}
    for item in value.split(","):
        name, equals, role = item.partition("=")
        name, role = name.strip(), role.strip().casefold()
        if not equals or not name or role not in ("seeker", "supporter"):
            raise CommandError(
                f"--roles: {item.strip()!r} is not NAME=seeker or NAME=supporter "
                "(write e.g. --roles Caller=seeker,Volunteer=supporter)"
            )
        if any(speaker_key(other) == speaker_key(name) for other in roles):
            raise CommandError(f"--roles: {name!r} is named twice")
        roles[name] = role
    if sorted(roles.values()) != ["seeker", "supporter"]:
        raise CommandError(
            f"--roles: give exactly two names, one seeker and one supporter (got {value!r})"
        )
    return roles


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
        parser.add_argument(
            "--roles",
            default=None,
            metavar="NAME=seeker,NAME=supporter",
            help="ESConv: which speaker name is the seeker and which the supporter, for files "
            "whose names are not known and cannot be told from the strategy annotations",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        file_options: dict[str, Any] = {}
        if options["roles"] is not None:
            if options["format"] != "esconv":
                raise CommandError("--roles applies to ESConv files only")
            file_options["roles"] = parse_roles(options["roles"])
        try:
            report = import_file(
                options["path"],
                options["format"],
                origin=options["origin"],
                dry_run=options["dry_run"],
                rejects_path=options["rejects"],
                screen="inline" if options["screen_now"] else None,
                **file_options,
            )
        except ImportFileError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(f"interrupted: nothing from {options['path']} was saved") from None
        self.stdout.write("\n".join(report.lines()))
