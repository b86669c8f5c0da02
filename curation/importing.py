"""Import ExTES and ESConv files into the database: idempotent, atomic per file, fully reported.

Also the two pieces generation shares with import: `load_reference` (the vocabulary as the database
holds it) and `create_dialogues` (parsed dialogues to Dialogue and Turn rows).

A file is refused as a whole (ImportFileError, nothing saved) when it cannot be read: not JSON,
nested too deeply for Python's json module to read (a JSON array with one such record included),
not an array of records, or a source name longer than Dialogue.source_file holds. Everything else
is judged per record: a JSON Lines row that is not JSON or is nested too deeply, and whatever
`parse_record` or `_check_lengths` refuses, goes to the rejects file and the rest imports.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models, transaction

from curation import screening
from curation.models import Dialogue, SafetyStatus, Scenario, Strategy, Turn
from curation.parsing import (
    Format,
    NumberText,
    ParsedDialogue,
    Rejected,
    Vocabulary,
    parse_record,
    read_json,
)
from curation.vocabulary import normalize

BATCH_SIZE = 500


class ImportFileError(Exception):
    """The file as a whole cannot be read: nothing was imported."""


@dataclass
class InvalidRow:
    """A JSON Lines row that is not JSON, or nested too deeply to read."""

    text: str
    kind: str
    error: str


@dataclass(frozen=True)
class Reference:
    """Strategies and scenarios as the database holds them, read by `load_reference`."""

    vocab: Vocabulary  # what `parse_record` matches names against
    strategy_ids: dict[tuple[str, str], int]  # (taxonomy, name) -> pk
    definitions: list[tuple[str, str]]  # ExTES strategies as (name, definition), in pk order


def load_reference() -> Reference:
    """The one reader of the vocabulary tables, for import and generation alike."""
    strategies = list(
        Strategy.objects.values_list("pk", "taxonomy", "name", "aliases", "definition")
    )
    return Reference(
        vocab=Vocabulary.build(
            ((taxonomy, name, aliases) for _, taxonomy, name, aliases, _ in strategies),
            Scenario.objects.values_list("name", "aliases", "is_official"),
        ),
        strategy_ids={(taxonomy, name): pk for pk, taxonomy, name, _, _ in strategies},
        definitions=[
            (name, definition)
            for _, taxonomy, name, _, definition in sorted(strategies)
            if taxonomy == "extes"
        ],
    )


def create_dialogues(
    items: Sequence[tuple[ParsedDialogue, dict[str, Any]]],
    strategy_ids: Mapping[tuple[str, str], int],
    screen: str | None = None,
) -> list[Dialogue]:
    """Save parsed dialogues as Dialogue rows and their Turn rows, in two bulk inserts.

    The one way a `ParsedDialogue` becomes rows. Its description, content hash, repairs and turns
    come from it; each item's dict gives the rest of the Dialogue's fields: scenario, origin,
    source_file, source_record, source_format and raw, and where they apply provenance and the
    safety fields. A turn's final text and strategy stay empty until its dialogue settles.

    Every dialogue passes the crisis gate here, whichever way it came in (curation.screening):
    the rules at once (a flagged one is saved FLAGGED, with the reasons, and waits in the leads'
    safety queue before any annotator sees it); then the classifier, ``screen`` saying where:
    "worker" (saved SCREENING, a worker screens it after the commit), "inline" (screened here,
    in the caller's transaction), "rules" (not at all); None follows settings.SAFETY_SCREEN.
    Fields the caller gives for safety win.
    """
    where = screen or screening.placement()
    dialogues = Dialogue.objects.bulk_create(
        Dialogue(
            description=parsed.description,
            content_hash=parsed.content_hash(),
            repairs=[{"kind": r.kind, "detail": r.detail} for r in parsed.repairs],
            **(_gate(parsed, str(fields.get("origin", "")), where) | fields),
        )
        for parsed, fields in items
    )
    Turn.objects.bulk_create(
        Turn(
            dialogue_id=dialogue.pk,
            index=index,
            role=turn.role,
            text=turn.text,
            strategy_id=strategy_ids[(parsed.taxonomy, turn.strategy)] if turn.strategy else None,
        )
        for dialogue, (parsed, _) in zip(dialogues, items, strict=True)
        for index, turn in enumerate(parsed.turns)
    )
    waiting = [d for d in dialogues if d.safety_status == SafetyStatus.SCREENING]
    if waiting and where == "inline":
        screening.screen_dialogues(waiting)
        for dialogue in waiting:
            dialogue.refresh_from_db(fields=["safety_status", "safety_notes"])
    elif waiting:
        screening.queue([d.pk for d in waiting])
    return dialogues


def _gate(parsed: ParsedDialogue, origin: str, where: str) -> dict[str, Any]:
    """The safety fields of a new dialogue (curation.screening.initial_fields)."""
    seekers = [t.text for t in parsed.turns if t.role == Turn.Role.SEEKER]
    return screening.initial_fields(parsed.description, seekers, origin, where)


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
    flagged: int = 0  # imported dialogues the crisis gate sent to the leads' safety queue
    screening: int = 0  # imported dialogues waiting for a worker's safety screen

    def lines(self) -> list[str]:
        verb = "would import" if self.dry_run else "imported"
        out = [
            f"{self.path} ({self.format}, {self.layout}): {self.records} records",
            f"  {verb}: {self.imported}",
            f"  duplicates skipped: {self.duplicates}",
            f"  repaired: {self.repaired} dialogues",
            f"  flagged by the crisis gate, waiting for a lead: {self.flagged}",
        ]
        if self.screening:
            out.append(
                f"  waiting for the safety screen (a worker screens them before review): "
                f"{self.screening}"
            )
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
        whole = read_json(text)
    except RecursionError:
        # ESConv JSON Lines whose first row is the deep one: that row alone is rejected.
        if fmt == "extes" or text.lstrip().startswith("["):
            raise ImportFileError(f"{path}: JSON nested too deeply to read") from None
        return _json_lines(path, text)
    except json.JSONDecodeError as exc:
        if fmt == "extes":
            raise ImportFileError(f"{path}: not JSON ({exc})") from None
        return _json_lines(path, text)

    if isinstance(whole, dict):
        whole = [whole]
    if not isinstance(whole, list):
        got = "a number" if isinstance(whole, NumberText) else type(whole).__name__
        raise ImportFileError(f"{path}: expected a JSON array of dialogues, got {got}")
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
            rows.append((number, read_json(line)))
            parsed += 1
        except json.JSONDecodeError as exc:
            rows.append((number, InvalidRow(line, "invalid_json", str(exc))))
        except RecursionError:
            rows.append((number, InvalidRow(line, "too_deep", "nested too deeply to read")))
    if not parsed:
        deep = any(isinstance(raw, InvalidRow) and raw.kind == "too_deep" for _, raw in rows)
        raise ImportFileError(
            f"{path}: JSON nested too deeply to read"
            if deep
            else f"{path}: not JSON and not JSON Lines"
        )
    return "JSON Lines", iter(rows)


def import_file(
    path: Path | str,
    fmt: Format,
    *,
    origin: str = Dialogue.Origin.IMPORTED,
    dry_run: bool = False,
    rejects_path: Path | str | None = None,
    source_name: str | None = None,
    screen: str | None = None,
) -> ImportReport:
    """Import a file (see the module's doc); ``screen`` says where the crisis gate's classifier
    runs (create_dialogues), None following settings.SAFETY_SCREEN."""
    path = Path(path)
    source = source_name or str(path)
    try:
        _check_lengths(Dialogue, source_file=source, source_format=fmt, origin=origin)
    except Rejected as exc:
        raise ImportFileError(f"{path}: {exc.detail}") from None
    layout, records = read_records(path, fmt)
    report = ImportReport(path=str(path), format=fmt, layout=layout, dry_run=dry_run)
    rejects: list[dict[str, Any]] = []

    with transaction.atomic():
        reference = load_reference()
        vocab = reference.vocab
        parsed: list[tuple[int, Any, ParsedDialogue, str]] = []
        seen: set[str] = set()
        for number, raw in records:
            report.records += 1
            if isinstance(raw, InvalidRow):
                _reject(report, rejects, number, raw.kind, raw.error, raw.text)
                continue
            try:
                dialogue = parse_record(raw, fmt, vocab)
                _check_lengths(Scenario, name=dialogue.scene, key=normalize(dialogue.scene))
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
        for start in range(0, len(fresh), BATCH_SIZE):
            flagged, waiting = _insert_batch(
                fresh[start : start + BATCH_SIZE],
                fmt,
                origin,
                source,
                scenario_ids,
                reference.strategy_ids,
                screen,
            )
            report.flagged += flagged
            report.screening += waiting
        report.imported = len(fresh)
        if dry_run:
            transaction.set_rollback(True)

    if rejects:
        report.rejects_path = str(_write_rejects(path, rejects, rejects_path))
    return report


def _check_lengths(model: type[models.Model], **values: str) -> None:
    """Refuse values longer than their CharField holds: PostgreSQL would fail the whole file,
    SQLite would store them anyway."""
    for name, value in values.items():
        field = model._meta.get_field(name)
        assert isinstance(field, models.CharField)
        limit = field.max_length
        if limit is not None and len(value) > limit:
            raise Rejected(
                "field_too_long",
                f"{model.__name__}.{name} would be {len(value)} characters, "
                f"more than the {limit} it holds",
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
    strategy_ids: Mapping[tuple[str, str], int],
    screen: str | None = None,
) -> tuple[int, int]:
    """Save a batch; returns how many of its dialogues the crisis gate flagged, and how many
    wait for a worker's screen."""
    saved = create_dialogues(
        [
            (
                parsed,
                {
                    "scenario_id": scenario_ids[parsed.scene],
                    "origin": origin,
                    "source_file": source,
                    "source_record": number,
                    "source_format": fmt,
                    "raw": raw,
                },
            )
            for number, raw, parsed, _digest in batch
        ],
        strategy_ids,
        screen,
    )
    return (
        sum(d.safety_status == SafetyStatus.FLAGGED for d in saved),
        sum(d.safety_status == SafetyStatus.SCREENING for d in saved),
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
    # Strict JSON on every line: numbers JSON cannot hold were read as text (NumberText) and are
    # written as strings; an unpaired surrogate, which only a string can hold, becomes its \\u
    # escape (backslashreplace), which reads back as the same character.
    with target.open("w", encoding="utf-8", errors="backslashreplace") as out:
        for row in rejects:
            out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return target
