"""Screen a file with the studio's crisis gate before it comes in.

    python manage.py check_safety FILE [--format text|extes|esconv]

`text` (the default): JSON Lines of {"text": ...}, one result per line. `extes`/`esconv`: a
dialogue file as import_dialogues reads it, one result per record (its description and seeker
turns). Each result is one JSON line: {"line" or "record", "flagged", "categories", "reasons"}
(the sentences that matched). A line or record that cannot be read gets {"error": ...}.

Lines that carry a label ({"text", "crisis": true|false, "category": ...}, as in a set written
to measure the gate) are scored too: a last line {"summary": ...} gives recall per category and
overall, precision, and the counts behind them.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.importing import ImportFileError, InvalidRow, load_reference, read_records
from curation.parsing import Rejected, parse_record
from generation.safety import CrisisCheck, check_dialogue, check_texts


class Command(BaseCommand):
    help = "Print the crisis gate's verdict for every line or dialogue of a file."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", default="text", choices=["text", "extes", "esconv"])

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if options["format"] == "text":
            self._texts(path)
            return
        try:
            _layout, records = read_records(path, options["format"])
        except ImportFileError as exc:
            raise CommandError(str(exc)) from None
        vocab = load_reference().vocab
        for number, raw in records:
            if isinstance(raw, InvalidRow):
                self._print({"record": number, "error": f"{raw.kind}: {raw.error}"})
                continue
            try:
                parsed = parse_record(raw, options["format"], vocab)
            except Rejected as exc:
                self._print({"record": number, "error": f"{exc.kind}: {exc.detail}"})
                continue
            seekers = [t.text for t in parsed.turns if t.role == "seeker"]
            self._print({"record": number, **_verdict(check_dialogue(parsed.description, seekers))})

    def _texts(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path}: cannot be read ({exc})") from None
        scored: list[tuple[dict[str, Any], bool]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
                self._print({"line": number, "error": f"not a {{'text': ...}} line ({exc})"})
                continue
            verdict = _verdict(check_texts([text]))
            self._print({"line": number, **verdict})
            if isinstance(row.get("crisis"), bool):
                scored.append((row, verdict["flagged"]))
        if scored:
            self._print({"summary": summary(scored)})

    def _print(self, result: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(result, ensure_ascii=False))


def _verdict(check: CrisisCheck) -> dict[str, Any]:
    return {
        "flagged": check.flagged,
        "categories": list(check.categories),
        "reasons": list(check.matches),
    }


def summary(scored: list[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """Recall per category and overall, and precision, of verdicts against labelled lines."""
    crisis = [(row, flagged) for row, flagged in scored if row["crisis"]]
    caught = sum(flagged for _, flagged in crisis)
    false = sum(flagged for row, flagged in scored if not row["crisis"])
    per_category: dict[str, str] = {}
    for category in sorted({str(row.get("category")) for row, _ in crisis}):
        mine = [flagged for row, flagged in crisis if str(row.get("category")) == category]
        per_category[category] = f"{sum(mine)}/{len(mine)}"
    return {
        "recall": round(caught / len(crisis), 3) if crisis else None,
        "precision": round(caught / (caught + false), 3) if caught + false else None,
        "crisis_flagged": f"{caught}/{len(crisis)}",
        "others_flagged": f"{false}/{len(scored) - len(crisis)}",
        "recall_by_category": per_category,
    }
