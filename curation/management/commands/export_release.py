from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.models import Release
from curation.releases.build import FileOptions, write_folder


class Command(BaseCommand):
    help = "Write a release's files (ExTES JSON, SFT, SFT+DRI, DPO, ESConv, manifest) to a folder."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--out", type=Path, required=True)
        # Unset options keep the release's own (chosen when it was created).
        parser.add_argument(
            "--strategy-tags",
            action="store_true",
            default=None,
            help="prefix supporter texts in SFT files with [Strategy]",
        )
        parser.add_argument("--dpo-pairs", choices=["best_vs_rest", "all_pairs"], default=None)
        parser.add_argument("--dpo-min-margin", type=float, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        release = Release.objects.filter(name=options["name"]).first()
        if release is None:
            raise CommandError(f"no release called {options['name']!r}")
        if release.status != Release.Status.READY:
            raise CommandError(
                f"release {release.name} is {release.get_status_display().lower()}: "
                "only a ready release has files"
            )
        out: Path = options["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not empty: choose a new folder")
        chosen = FileOptions.from_dict(release.file_options)
        for name in ("strategy_tags", "dpo_pairs", "dpo_min_margin"):
            if options[name] is not None:
                setattr(chosen, name, options[name])
        manifest = write_folder(release, out, chosen)
        self.stdout.write(f"wrote {len(manifest['files'])} files to {out}:")
        for item in manifest["files"]:
            self.stdout.write(
                f"  {item['path']}  {item['bytes']} bytes  sha256 {item['sha256'][:12]}…"
            )
