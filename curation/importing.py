"""Import ExTES and ESConv files into the database: idempotent, atomic per file, fully reported."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from curation.models import Dialogue, Scenario, Strategy, Turn
from curation.parsing import Format, ParsedDialogue, Rejected, Vocabulary, parse_record

BATCH_SIZE = 500


class ImportFileError(Exception):
    """The file as a whole cannot be read: nothing was imported."""


@dataclass
class _Invalid:
    """A JSON Lines row that is not JSON."""

    text: str
    error: str


@dataclass
class ImportReport:
    path: str
    format: str
    layout: str = ""
    records: int = 0
    imported: int = 0
    duplicates: int = 0
    repaired: int = 0  # dialogues with at least one repair
    repairs: Counter[str] = field(default_factory=Counter)  # kind -> occurrences
    repaired_dialogues: Counter[str] = field(default_factory=Counter)  # kind -> dialogues
    rejected: Counter[str] = field(default_factory=Counter)
    new_scenarios: list[str] = field(default_factory=list)
    rejects_path: str = ""
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would import" if self.dry_run else "imported"
        out = [
            f"{self.path} ({self.format}, {self.layout}): {self.records} records",
            f"  {verb}: {self.imported}",
            f"  duplicates skipped: {self.duplicates}",
            f"  repaired: {self.repaired} dialogues",
        ]
        for kind, count in sorted(self.repairs.items()):
            out.append(f"    {kind}: {count} in {self.repaired_dialogues[kind]} dialogues")
        out.append(f"  rejected: {sum(self.rejected.values())}")
        for kind, count in sorted(self.rejected.items()):
            out.append(f"    {kind}: {count}")
        if self.new_scenarios:
            out.append(f"  new scenarios, flagged for review: {', '.join(self.new_scenarios)}")
        if self.rejects_path:
            out.append(f"  rejected records written to {self.rejects_path}")
        if self.dry_run:
            out.append("  dry run: nothing was saved")
        return out


def read_records(path: Path, fmt: Format) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(layout, iterator of (record number, record)); raises ImportFileError for unreadable files."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{path}: cannot be read ({exc})") from None

    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if fmt == "extes":
            raise ImportFileError(f"{path}: not JSON ({exc})") from None
        return _json_lines(path, text)

    if isinstance(whole, dict):
        whole = [whole]
    if not isinstance(whole, list):
        raise ImportFileError(
            f"{path}: expected a JSON array of dialogues, got {type(whole).__name__}"
        )
    objects = [r for r in whole if isinstance(r, dict)]
    if fmt == "extes" and objects and all("dialog" in r and "content" not in r for r in objects):
        raise ImportFileError(
            f"{path}: this looks like ESConv (records have 'dialog'); use --format esconv"
        )
    if fmt == "esconv" and objects and all("content" in r and "dialog" not in r for r in objects):
        raise ImportFileError(
            f"{path}: this looks like ExTES (records have 'content'); use --format extes"
        )
    layout = "JSON array" if fmt == "extes" else "nested ESConv.json"
    return layout, enumerate(whole, start=1)


def _json_lines(path: Path, text: str) -> tuple[str, Iterator[tuple[int, Any]]]:
    rows: list[tuple[int, Any]] = []
    parsed = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
            parsed += 1
        except json.JSONDecodeError as exc:
            rows.append((number, _Invalid(line, str(exc))))
    if not parsed:
        raise ImportFileError(f"{path}: not JSON and not JSON Lines")
    return "JSON Lines", iter(rows)


def import_file(
    path: Path | str,
    fmt: Format,
    *,
    origin: str = Dialogue.Origin.IMPORTED,
    dry_run: bool = False,
    rejects_path: Path | str | None = None,
    source_name: str | None = None,
) -> ImportReport:
    path = Path(path)
    layout, records = read_records(path, fmt)
    report = ImportReport(path=str(path), format=fmt, layout=layout, dry_run=dry_run)
    rejects: list[dict[str, Any]] = []

    with transaction.atomic():
        vocab = _vocabulary_from_db()
        parsed: list[tuple[int, Any, ParsedDialogue, str]] = []
        seen: set[str] = set()
        for number, raw in records:
            report.records += 1
            if isinstance(raw, _Invalid):
                _reject(report, rejects, number, "invalid_json", raw.error, raw.text)
                continue
            try:
                dialogue = parse_record(raw, fmt, vocab)
            except Rejected as exc:
                _reject(report, rejects, number, exc.kind, exc.detail, raw)
                continue
            digest = dialogue.content_hash()
            if digest in seen:
                report.duplicates += 1
                continue
            seen.add(digest)
            if any(r.kind == "scene_unknown" for r in dialogue.repairs):
                vocab.add_scenario(dialogue.scene)
            parsed.append((number, raw, dialogue, digest))

        existing = _existing_hashes([digest for *_, digest in parsed])
        fresh = [item for item in parsed if item[3] not in existing]
        report.duplicates += len(parsed) - len(fresh)
        for _number, _raw, dialogue, _digest in fresh:
            kinds = Counter(r.kind for r in dialogue.repairs)
            report.repairs.update(kinds)
            report.repaired_dialogues.update(kinds.keys())
            report.repaired += bool(kinds)

        scenario_ids = _scenario_ids({d.scene for _, _, d, _ in fresh}, report)
        strategy_ids = {(s.taxonomy, s.name): s.pk for s in Strategy.objects.all()}
        source = source_name or str(path)
        for start in range(0, len(fresh), BATCH_SIZE):
            _insert_batch(
                fresh[start : start + BATCH_SIZE], fmt, origin, source, scenario_ids, strategy_ids
            )
        report.imported = len(fresh)
        if dry_run:
            transaction.set_rollback(True)

    if rejects:
        report.rejects_path = str(_write_rejects(path, rejects, rejects_path))
    return report


def _vocabulary_from_db() -> Vocabulary:
    return Vocabulary.build(
        Strategy.objects.values_list("taxonomy", "name", "aliases"),
        Scenario.objects.values_list("name", "aliases", "is_official"),
    )


def _existing_hashes(digests: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(digests), 900):  # stay under SQLite's bound-parameter limit
        chunk = digests[start : start + 900]
        found.update(
            Dialogue.objects.filter(content_hash__in=chunk).values_list("content_hash", flat=True)
        )
    return found


def _scenario_ids(names: set[str], report: ImportReport) -> dict[str, int]:
    ids = dict(Scenario.objects.filter(name__in=names).values_list("name", "pk"))
    for name in sorted(names - ids.keys()):
        ids[name] = Scenario.objects.create(name=name, is_official=False).pk
        report.new_scenarios.append(name)
    return ids


def _insert_batch(
    batch: list[tuple[int, Any, ParsedDialogue, str]],
    fmt: str,
    origin: str,
    source: str,
    scenario_ids: dict[str, int],
    strategy_ids: dict[tuple[str, str], int],
) -> None:
    dialogues = Dialogue.objects.bulk_create(
        Dialogue(
            scenario_id=scenario_ids[parsed.scene],
            description=parsed.description,
            origin=origin,
            source_file=source,
            source_record=number,
            source_format=fmt,
            content_hash=digest,
            raw=raw,
            repairs=[{"kind": r.kind, "detail": r.detail} for r in parsed.repairs],
        )
        for number, raw, parsed, digest in batch
    )
    Turn.objects.bulk_create(
        Turn(
            dialogue_id=dialogue.pk,
            index=index,
            role=turn.role,
            text=turn.text,
            strategy_id=strategy_ids[(parsed.taxonomy, turn.strategy)] if turn.strategy else None,
        )
        for dialogue, (_, _, parsed, _) in zip(dialogues, batch, strict=True)
        for index, turn in enumerate(parsed.turns)
    )


def _reject(
    report: ImportReport,
    rejects: list[dict[str, Any]],
    number: int,
    kind: str,
    detail: str,
    raw: Any,
) -> None:
    report.rejected[kind] += 1
    rejects.append({"record": number, "reason": kind, "detail": detail, "raw": raw})


def _write_rejects(source: Path, rejects: list[dict[str, Any]], target: Path | str | None) -> Path:
    if target is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = Path(settings.REJECTS_DIR) / f"{source.stem}-{stamp}.rejects.jsonl"
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for row in rejects:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target
