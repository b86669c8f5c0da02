"""Screen a file with the studio's crisis gate before it comes in.

    python manage.py check_safety FILE [--format text|extes|esconv] [--layers rules,model]

`text` (the default): JSON Lines of {"text": ...}, one result per line. `extes`/`esconv`: a
dialogue file as import_dialogues reads it, one result per record (its description and seeker
turns). Each result is one JSON line: {"line" or "record", "flagged", "categories", "reasons"}
(per reason: the layer that saw it, rules or model, its category, the words, and for the model
its probability and the written example it is most like). A line or record that cannot be read
gets {"error": ...}. The layers are the studio's (both, unless EXTES_SAFETY_SCREEN=off).

Lines that carry a label ({"text", "crisis": true|false, "category": ...}, as in a set written
to measure the gate, or the training files' {"text", "label": "none"|category}) are scored too: a last line {"summary": ...} gives recall per category and
overall, precision, and the counts behind them, for the gate and for each layer alone.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.importing import ImportFileError, InvalidRow, load_reference, read_records
from curation.parsing import Rejected, parse_record
from generation import crisis_gate
from generation.crisis_gate import GateResult


class Command(BaseCommand):
    help = "Print the crisis gate's verdict for every line or dialogue of a file."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", default="text", choices=["text", "extes", "esconv"])
        parser.add_argument(
            "--layers", default=None, help="comma-separated: rules,model (default: the studio's)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        layers = options["layers"]
        self.layers = (
            tuple(x.strip() for x in layers.split(",") if x.strip())
            if layers
            else crisis_gate.default_layers()
        )
        unknown = set(self.layers) - set(crisis_gate.ALL_LAYERS)
        if unknown or not self.layers:
            raise CommandError(f"--layers takes {','.join(crisis_gate.ALL_LAYERS)}, got {layers!r}")
        if options["format"] == "text":
            self._texts(path)
            return
        try:
            _layout, records = read_records(path, options["format"])
        except ImportFileError as exc:
            raise CommandError(str(exc)) from None
        vocab = load_reference().vocab
        pending: list[tuple[int, list[str] | str]] = []
        for number, raw in records:
            if isinstance(raw, InvalidRow):
                pending.append((number, f"{raw.kind}: {raw.error}"))
                continue
            try:
                parsed = parse_record(raw, options["format"], vocab)
            except Rejected as exc:
                pending.append((number, f"{exc.kind}: {exc.detail}"))
                continue
            seekers = [t.text for t in parsed.turns if t.role == "seeker"]
            pending.append((number, [parsed.description, *seekers]))
            if len(pending) >= BATCH:
                self._dialogues(pending)
        self._dialogues(pending)

    def _dialogues(self, pending: list[tuple[int, list[str] | str]]) -> None:
        """Print the pending records' verdicts (or errors), in the file's order."""
        dialogues = [texts for _, texts in pending if not isinstance(texts, str)]
        results = iter(crisis_gate.check_many(dialogues, self.layers))
        for number, texts in pending:
            if isinstance(texts, str):
                self._print({"record": number, "error": texts})
            else:
                self._print({"record": number, **_verdict(next(results))})
        pending.clear()

    def _texts(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path}: cannot be read ({exc})") from None
        rows: list[tuple[int, dict[str, Any]]] = []
        errors: dict[int, str] = {}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
                errors[number] = f"not a {{'text': ...}} line ({exc})"
                continue
            rows.append((number, row))
        results = crisis_gate.check_many([[row["text"]] for _, row in rows], self.layers)
        printed: dict[int, dict[str, Any]] = {
            number: {"line": number, "error": error} for number, error in errors.items()
        }
        for (number, _), result in zip(rows, results, strict=True):
            printed[number] = {"line": number, **_verdict(result)}
        for number in sorted(printed):  # in the file's order
            self._print(printed[number])
        scored: list[tuple[dict[str, Any], GateResult]] = []
        for (_, row), result in zip(rows, results, strict=True):
            if isinstance(row.get("crisis"), bool):
                scored.append((row, result))
            elif row.get("label") in ("none", *crisis_gate.CATEGORIES):  # the bank's form
                label = row["label"]
                scored.append(({"crisis": label != "none", "category": label}, result))
        if scored:
            self._print({"summary": summary(scored, self.layers)})

    def _print(self, result: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(result, ensure_ascii=False))


BATCH = 200  # dialogues per pass through the classifier


def _verdict(result: GateResult) -> dict[str, Any]:
    return {
        "flagged": result.flagged,
        "categories": list(result.categories),
        "reasons": [r.as_dict() for r in result.reasons],
    }


def summary(
    scored: list[tuple[dict[str, Any], GateResult]], layers: tuple[str, ...]
) -> dict[str, Any]:
    """The gate's figures against labelled lines, and each layer's alone."""
    out = rates([(row, result.flagged) for row, result in scored])
    if len(layers) > 1:
        out["by_layer"] = {
            layer: rates([(row, bool(result.by_layer(layer))) for row, result in scored])
            for layer in layers
        }
    return out


def rates(scored: list[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
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
