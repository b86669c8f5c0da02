"""Import ExTES and ESConv files into the database: streamed, idempotent, atomic per file, fully
reported.

Also the two pieces generation shares with import: `load_reference` (the vocabulary as the database
holds it) and `create_dialogues` (parsed dialogues to Dialogue and Turn rows).

A file is never read whole: JSON Lines come a line at a time, a JSON array an element at a time
(`_Stream`: the json module's decoder, with `read_json`'s hooks, started where each element
begins). Each record is parsed and checked as it comes, and saved with BATCH_SIZE others; rejects
go to the rejects file as they come. One transaction holds the whole file, so what stays in
memory is one batch and the content hashes seen so far, whatever the file's size.

A file is refused as a whole (ImportFileError, nothing saved, no rejects file) when it cannot be
read: not UTF-8, not JSON (a JSON array with a syntax error anywhere in it), nested too deeply for
Python's json module to read (a JSON array with one such record included), not an array of
records, every record's speakers unknown (`roles_unknown`: the file needs `roles`), or a source
name longer than Dialogue.source_file holds. Some of this only shows late in a big file: the
transaction is then rolled back. A file of ESConv records imported as ExTES, or the other way
round, is refused on its first PEEK records. A BOM is skipped; a file holding one JSON object is
a file of one record. Everything else is judged per record: a JSON Lines row that is not JSON or
is nested too deeply, and whatever `parse_record` or `_check_lengths` refuses, goes to the
rejects file and the rest imports.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from django.conf import settings
from django.db import connections, models, reset_queries, router, transaction

from curation import parsing, screening, searchindex
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

BATCH_SIZE = 500  # dialogues saved together
PEEK = 20  # records the "this looks like ESConv/ExTES" check looks at
CHUNK = 1 << 20  # characters a JSON array is read by

# read_json's decoder, for decoding one element of an array where it starts (raw_decode).
_DECODER = json.JSONDecoder(
    parse_constant=NumberText, parse_float=parsing._float, parse_int=parsing._int
)
_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON allows between values


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
    come from it, and the fields it read but does not use (`source_fields`) go into provenance;
    each item's dict gives the rest of the Dialogue's fields: scenario, origin, source_file,
    source_record, source_format and raw, and where they apply provenance, the safety fields and
    the content hash (when the caller has computed it already). A turn's final text and strategy
    stay empty until its dialogue settles.

    Every dialogue passes the crisis gate here, whichever way it came in (curation.screening):
    the rules at once (a flagged one is saved FLAGGED, with the reasons, and waits in the leads'
    safety queue before any annotator sees it); then the classifier, ``screen`` saying where:
    "worker" (saved SCREENING, a worker screens it after the commit), "inline" (screened here,
    in the caller's transaction), "rules" (not at all); None follows settings.SAFETY_SCREEN.
    Fields the caller gives for safety win.
    """
    where = screen or screening.placement()
    # Into the search index together, in one statement, not turn by turn through its triggers.
    with searchindex.indexed_together() as new_ids:
        dialogues = Dialogue.objects.bulk_create(
            _dialogue(parsed, fields, where) for parsed, fields in items
        )
        _insert_turns(
            (
                dialogue.pk,
                index,
                turn.role,
                turn.text,
                strategy_ids[(parsed.taxonomy, turn.strategy)] if turn.strategy else None,
            )
            for dialogue, (parsed, _) in zip(dialogues, items, strict=True)
            for index, turn in enumerate(parsed.turns)
        )
        new_ids.extend(d.pk for d in dialogues)
    waiting = [d for d in dialogues if d.safety_status == SafetyStatus.SCREENING]
    if waiting and where == "inline":
        seekers = {
            dialogue.pk: [Turn(text=t.text) for t in parsed.turns if t.role == Turn.Role.SEEKER]
            for dialogue, (parsed, _) in zip(dialogues, items, strict=True)
        }
        for dialogue in waiting:  # the texts just written: no query for them
            dialogue.seeker_turns = seekers[dialogue.pk]  # type: ignore[attr-defined]
        screening.screen_dialogues(waiting)
    elif waiting:
        screening.queue([d.pk for d in waiting])
    return dialogues


def _dialogue(parsed: ParsedDialogue, fields: dict[str, Any], where: str) -> Dialogue:
    values: dict[str, Any] = {
        "description": parsed.description,
        "repairs": [{"kind": r.kind, "detail": r.detail} for r in parsed.repairs],
        # A caller that screened it already gives its safety fields (curation.screening.decide).
        **(
            {} if "safety_status" in fields else _gate(parsed, str(fields.get("origin", "")), where)
        ),
        **fields,
    }
    if "content_hash" not in values:
        values["content_hash"] = parsed.content_hash()
    if parsed.source_fields:
        values["provenance"] = {
            **values.get("provenance", {}),
            "source_fields": parsed.source_fields,
        }
    return Dialogue(**values)


def _gate(parsed: ParsedDialogue, origin: str, where: str) -> dict[str, Any]:
    """The safety fields of a new dialogue (curation.screening.initial_fields)."""
    seeker = Turn.Role.SEEKER.value  # looked up once: an enum member's lookup is slow
    seekers = [t.text for t in parsed.turns if t.role == seeker]
    return screening.initial_fields(parsed.description, seekers, origin, where)


_TURN_FIELDS = ("dialogue", "index", "role", "text", "strategy")


def _column(model: type[models.Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field) and field.column
    return field.column


def _insert_turns(rows: Iterable[tuple[int, int, str, str, int | None]]) -> None:
    """Insert Turn rows given as tuples of _TURN_FIELDS (final text and strategy empty).

    Plain SQL, not bulk_create: a dialogue has some 20 turns, and building a model instance and
    compiling every field of every one cost several times the insert itself (measured with
    bench/import_export.py --dialogues). PostgreSQL takes them by COPY.
    """
    connection = connections[router.db_for_write(Turn)]
    quote = connection.ops.quote_name
    table = quote(Turn._meta.db_table)
    columns = ", ".join(quote(_column(Turn, name)) for name in _TURN_FIELDS)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(_TURN_FIELDS))
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(rows))


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
    unknown_strategies: Counter[str] = field(default_factory=Counter)  # label -> occurrences
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
            if kind == "strategy_unknown" and self.unknown_strategies:
                ranked = sorted(self.unknown_strategies.items(), key=lambda x: (-x[1], x[0]))
                names = ", ".join(f"{name} ({n})" for name, n in ranked)
                out.append(f"    unknown strategy names: {names}")
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


# ---- reading: a record at a time -------------------------------------------------------------


def read_records(path: Path, fmt: Format) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(layout, iterator of (record number, record)), the file read as the iterator goes.

    Raises ImportFileError for a file that cannot be read: here for what its first PEEK records
    show, from the iterator for what comes later (a syntax error, a record nested too deeply,
    bytes that are not UTF-8, a JSON Lines file none of whose rows is JSON)."""
    try:
        file = path.open(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot be read ({exc})") from None
    try:
        layout, records = _layout(path, fmt, file)
        first = list(islice(records, PEEK))
        _check_format(path, fmt, [raw for _, raw in first if isinstance(raw, dict)])
    except BaseException:
        file.close()
        raise
    return layout, _closing(file, chain(first, records))


def _layout(path: Path, fmt: Format, file: TextIO) -> tuple[str, Iterator[tuple[int, Any]]]:
    """What the file's start says it is: a JSON array, one object, or JSON Lines."""
    array = "JSON array" if fmt == "extes" else "nested ESConv.json"
    stream = _Stream(file, path)
    try:
        if stream.peek() == "[":
            return array, _array_records(path, stream)
        whole = stream.value()
        if stream.peek():
            raise stream.error("Extra data", stream.pos)
    except RecursionError:
        # ESConv JSON Lines whose first row is the deep one: that row alone is rejected.
        if fmt == "extes":
            raise ImportFileError(f"{path}: JSON nested too deeply to read") from None
        return "JSON Lines", _json_lines(path, file)
    except _BadJSON as exc:
        if fmt == "extes":
            raise ImportFileError(f"{path}: not JSON ({exc})") from None
        return "JSON Lines", _json_lines(path, file)
    if not isinstance(whole, dict):
        got = "a number" if isinstance(whole, NumberText) else type(whole).__name__
        raise ImportFileError(f"{path}: expected a JSON array of dialogues, got {got}")
    return array, iter([(1, whole)])


def _check_format(path: Path, fmt: Format, objects: list[dict[str, Any]]) -> None:
    if fmt == "extes" and objects and all("dialog" in r and "content" not in r for r in objects):
        raise ImportFileError(
            f"{path}: this looks like ESConv (records have 'dialog'); use --format esconv"
        )
    if fmt == "esconv" and objects and all("content" in r and "dialog" not in r for r in objects):
        raise ImportFileError(
            f"{path}: this looks like ExTES (records have 'content'); use --format extes"
        )


def _closing(file: TextIO, records: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    with file:
        yield from records


class _BadJSON(Exception):
    """json's message for what is not JSON, with the place in the file."""


class _Stream:
    """A text file read CHUNK characters at a time, to decode one JSON value after another from
    it. What was decoded is dropped from memory when more is read."""

    def __init__(self, file: TextIO, path: Path) -> None:
        self.file = file
        self.path = path
        self.text = ""
        self.pos = 0
        self.eof = False
        # Where `text` starts in the file, for error messages: character, line, column.
        self.offset, self.line, self.column = 0, 1, 0

    def peek(self) -> str:
        """Skip white space: the next character, "" at the end of the file."""
        while True:
            space = _SPACE.match(self.text, self.pos)
            assert space is not None  # it matches the empty string
            self.pos = space.end()
            if self.pos < len(self.text) or not self._read():
                return self.text[self.pos : self.pos + 1]

    def value(self) -> Any:
        """The JSON value at the position (after `peek`). Raises _BadJSON, or RecursionError
        for nesting deeper than the json module reads."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                # Cut off by the end of the text read so far: read on (more each time, so that
                # a long record is decoded a few times, not once per chunk).
                cut = exc.pos >= len(self.text) - 32 or exc.msg.startswith("Unterminated string")
                if cut and self._read(max(CHUNK, len(self.text))):
                    continue
                raise self.error(exc.msg, exc.pos) from None
            # A value that ends near the end of the text may be a number that goes on in the
            # next chunk (1 of 1e5): read on first.
            if end < len(self.text) - 32 or not self._read():
                self.pos = end
                return value

    def error(self, msg: str, pos: int) -> _BadJSON:
        """`msg` at `pos` of `text`, placed as json.loads places it in the whole file."""
        before = self.text[:pos]
        newlines = before.count("\n")
        column = pos - before.rfind("\n") if newlines else self.column + pos + 1
        line = self.line + newlines
        return _BadJSON(f"{msg}: line {line} column {column} (char {self.offset + pos})")

    def _read(self, size: int = 0) -> bool:
        """Read on (CHUNK characters, or SIZE), dropping what was decoded; False at the end of
        the file."""
        if self.eof:
            return False
        try:
            chunk = self.file.read(size or CHUNK)
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportFileError(f"{self.path}: cannot be read ({exc})") from None
        if not chunk:
            self.eof = True
            return False
        done = self.text[: self.pos]
        newlines = done.count("\n")
        self.column = len(done) - done.rfind("\n") - 1 if newlines else self.column + len(done)
        self.line += newlines
        self.offset += len(done)
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True


def _array_records(path: Path, stream: _Stream) -> Iterator[tuple[int, Any]]:
    """The elements of the JSON array at the stream's position, numbered from 1."""
    try:
        yield from enumerate(_elements(stream), start=1)
    except RecursionError:
        raise ImportFileError(f"{path}: JSON nested too deeply to read") from None
    except _BadJSON as exc:
        raise ImportFileError(f"{path}: not JSON ({exc})") from None


def _elements(stream: _Stream) -> Iterator[Any]:
    stream.pos += 1  # the "["
    if stream.peek() == "]":
        stream.pos += 1
    else:
        while True:
            stream.peek()
            yield stream.value()
            after = stream.peek()
            if after not in (",", "]"):
                raise stream.error("Expecting ',' delimiter", stream.pos)
            stream.pos += 1
            if after == "]":
                break
    if stream.peek():
        raise stream.error("Extra data", stream.pos)


def _json_lines(path: Path, file: TextIO) -> Iterator[tuple[int, Any]]:
    file.seek(0)
    parsed = 0
    deep = False
    try:
        for number, line in enumerate(file, start=1):
            text = line.removesuffix("\n")
            if not text.strip():
                continue
            row: Any
            try:
                row = read_json(text)
                parsed += 1
            except json.JSONDecodeError as exc:
                row = InvalidRow(text, "invalid_json", str(exc))
            except RecursionError:
                row = InvalidRow(text, "too_deep", "nested too deeply to read")
                deep = True
            yield number, row
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{path}: cannot be read ({exc})") from None
    if not parsed:
        raise ImportFileError(
            f"{path}: JSON nested too deeply to read"
            if deep
            else f"{path}: not JSON and not JSON Lines"
        )


# ---- importing: a batch at a time ------------------------------------------------------------


def import_file(
    path: Path | str,
    fmt: Format,
    *,
    origin: str = Dialogue.Origin.IMPORTED,
    dry_run: bool = False,
    rejects_path: Path | str | None = None,
    source_name: str | None = None,
    screen: str | None = None,
    roles: Mapping[str, str] | None = None,
) -> ImportReport:
    """Import a file (see the module's doc); ``screen`` says where the crisis gate's classifier
    runs (create_dialogues), None following settings.SAFETY_SCREEN; ``roles`` (ESConv) names
    who is who, speaker -> "seeker" or "supporter" (parse_record)."""
    path = Path(path)
    source = source_name or str(path)
    try:
        _check_lengths(Dialogue, source_file=source, source_format=fmt, origin=origin)
    except Rejected as exc:
        raise ImportFileError(f"{path}: {exc.detail}") from None
    layout, records = read_records(path, fmt)
    report = ImportReport(path=str(path), format=fmt, layout=layout, dry_run=dry_run)
    rejects = _Rejects(path, rejects_path, report)

    try:
        with transaction.atomic():
            reference = load_reference()
            vocab = reference.vocab
            batches = _Batches(report, reference.strategy_ids, fmt, origin, source, screen)
            seen: set[bytes] = set()
            roles_unknown = ""  # the first record's reason
            for number, raw in records:
                report.records += 1
                if isinstance(raw, InvalidRow):
                    rejects.add(number, raw.kind, raw.error, raw.text)
                    continue
                try:
                    dialogue = parse_record(raw, fmt, vocab, roles=roles)
                    _check_lengths(Scenario, name=dialogue.scene, key=normalize(dialogue.scene))
                except Rejected as exc:
                    if exc.kind == "roles_unknown" and not roles_unknown:
                        roles_unknown = f"record {number}: {exc.detail}"
                    rejects.add(number, exc.kind, exc.detail, raw)
                    continue
                digest = dialogue.content_hash()
                key = bytes.fromhex(digest)
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
                if any(r.kind == "scene_unknown" for r in dialogue.repairs):
                    vocab.add_scenario(dialogue.scene)
                batches.add(_Item(number, raw, dialogue, digest))
            batches.flush()
            if report.records and report.rejected["roles_unknown"] == report.records:
                raise ImportFileError(
                    f"{path}: the speakers of every record are unknown ({roles_unknown})"
                )
            report.new_scenarios.sort()
            if dry_run:
                transaction.set_rollback(True)
    except BaseException:
        rejects.discard()
        raise
    report.rejects_path = rejects.keep()
    return report


class _Item(NamedTuple):
    number: int
    raw: Any
    parsed: ParsedDialogue
    digest: str


class _Batches:
    """Parsed dialogues, new to the file, saved BATCH_SIZE at a time: those the database holds
    already are skipped, the rest counted in the report and inserted."""

    def __init__(
        self,
        report: ImportReport,
        strategy_ids: Mapping[tuple[str, str], int],
        fmt: str,
        origin: str,
        source: str,
        screen: str | None,
    ) -> None:
        self.report = report
        self.strategy_ids = strategy_ids
        self.fmt, self.origin, self.source, self.screen = fmt, origin, source, screen
        self.scenario_ids: dict[str, int] = {}
        self.items: list[_Item] = []

    def add(self, item: _Item) -> None:
        self.items.append(item)
        if len(self.items) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        batch, self.items = self.items, []
        existing = _existing_hashes([item.digest for item in batch])
        fresh = [item for item in batch if item.digest not in existing]
        report = self.report
        report.duplicates += len(batch) - len(fresh)
        if not fresh:
            return
        for item in fresh:
            kinds = Counter(r.kind for r in item.parsed.repairs)
            report.repairs.update(kinds)
            report.repaired_dialogues.update(kinds.keys())
            report.repaired += bool(kinds)
            report.unknown_strategies.update(
                r.detail for r in item.parsed.repairs if r.kind == "strategy_unknown"
            )
        self._add_scenarios({item.parsed.scene for item in fresh})
        flagged, waiting = _insert_batch(
            fresh,
            self.fmt,
            self.origin,
            self.source,
            self.scenario_ids,
            self.strategy_ids,
            self.screen,
        )
        report.flagged += flagged
        report.screening += waiting
        report.imported += len(fresh)
        # With DEBUG on, Django keeps the last 9,000 queries with their parameters: a batch's
        # inserts carry its records, so the log grew with the file (310 MiB at 20,000 dialogues
        # against 135 MiB without it, bench/import_export.py). Nothing reads it in an import.
        reset_queries()

    def _add_scenarios(self, names: set[str]) -> None:
        missing = names - self.scenario_ids.keys()
        if not missing:
            return
        found = dict(Scenario.objects.filter(name__in=missing).values_list("name", "pk"))
        for name in sorted(missing - found.keys()):
            found[name] = Scenario.objects.create(name=name, is_official=False).pk
            self.report.new_scenarios.append(name)
        self.scenario_ids.update(found)


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


def _insert_batch(
    batch: list[_Item],
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
                item.parsed,
                {
                    "scenario_id": scenario_ids[item.parsed.scene],
                    "origin": origin,
                    "source_file": source,
                    "source_record": item.number,
                    "source_format": fmt,
                    "raw": item.raw,
                    "content_hash": item.digest,
                },
            )
            for item in batch
        ],
        strategy_ids,
        screen,
    )
    return (
        sum(d.safety_status == SafetyStatus.FLAGGED for d in saved),
        sum(d.safety_status == SafetyStatus.SCREENING for d in saved),
    )


class _Rejects:
    """The rejects file, a row written as each reject comes: into a temporary file beside it,
    which becomes the file only when the import ends well."""

    def __init__(self, source: Path, target: Path | str | None, report: ImportReport) -> None:
        self.source = source
        self.target = Path(target) if target is not None else None
        self.report = report
        self.out: TextIO | None = None
        self.part: Path | None = None

    def add(self, number: int, kind: str, detail: str, raw: Any) -> None:
        self.report.rejected[kind] += 1
        if self.out is None:
            self.out = self._open()
        row = {"record": number, "reason": kind, "detail": detail, "raw": raw}
        # Strict JSON on every line: numbers JSON cannot hold were read as text (NumberText) and
        # are written as strings; an unpaired surrogate, which only a string can hold, becomes
        # its \\u escape (backslashreplace), which reads back as the same character.
        self.out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

    def _open(self) -> TextIO:
        if self.target is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self.target = Path(settings.REJECTS_DIR) / f"{self.source.stem}-{stamp}.rejects.jsonl"
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.target.with_name(f".{self.target.name}.{os.getpid()}.part")
        return self.part.open("w", encoding="utf-8", errors="backslashreplace")

    def keep(self) -> str:
        """Where the rejects are now, "" when there were none."""
        if self.out is None or self.part is None or self.target is None:
            return ""
        self.out.close()
        self.part.replace(self.target)
        return str(self.target)

    def discard(self) -> None:
        if self.out is not None and self.part is not None:
            self.out.close()
            self.part.unlink(missing_ok=True)
