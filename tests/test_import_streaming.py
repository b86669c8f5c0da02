"""Streaming import: a file read a record at a time and saved a batch at a time, still one
transaction; the roles_unknown refusal, source fields in provenance, unknown strategy names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from curation import importing
from curation.importing import ImportFileError, create_dialogues, import_file, read_records
from curation.models import Dialogue, Scenario, Turn
from curation.parsing import Rejected, Vocabulary, parse_record, read_json

pytestmark = pytest.mark.django_db


def esconv(n: int, **extra: Any) -> dict[str, Any]:
    """An ESConv record whose texts carry N, so that records of different N differ."""
    return {
        "problem_type": "ongoing depression",
        "situation": f"Flat for weeks, case {n}.",
        "dialog": [
            {"text": f"I feel flat every morning ({n}).", "speaker": "usr"},
            {"text": f"How long has it been like this ({n})?", "speaker": "sys", "strategy": "Question"},
        ],
        **extra,
    }  # fmt: skip


def extes(n: int, strategy: str = "Emotional Validation") -> dict[str, Any]:
    return {
        "scene": "Anxiety and Panic",
        "description": f"Panic on the train, case {n}.",
        "content": [
            {"User": f"My heart races on the train ({n})."},
            {"AI Strategy": strategy, "AI": f"That sounds frightening ({n})."},
        ],
    }


def lines(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def array(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


# ---- reading a record at a time ----------------------------------------------------------------


def test_json_lines_are_read_as_the_records_are_used(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "CHUNK", 64)  # what is read to tell JSON Lines from JSON
    # Bytes that are not UTF-8 some way after the first records (the file is decoded 8 KB at a
    # time): read_records returns, the first records come, and only reading on reaches them.
    path = lines(tmp_path / "in.jsonl", [esconv(n) for n in range(500)])
    with path.open("ab") as out:
        out.write(b'{"problem_type": "\xff"}\n')
    layout, records = read_records(path, "esconv")
    assert layout == "JSON Lines"
    assert next(records) == (1, esconv(0))
    with pytest.raises(ImportFileError, match="cannot be read"):
        list(records)


def test_a_json_array_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "CHUNK", 64)
    path = tmp_path / "in.json"
    path.write_text(json.dumps([extes(n) for n in range(200)])[:-1] + ", oops]")
    read: list[int] = []
    real_read = importing._Stream._read

    def counted(stream, size=0):
        before = len(stream.text) - stream.pos
        found = real_read(stream, size)
        read.append(len(stream.text) - before if found else 0)
        return found

    monkeypatch.setattr(importing._Stream, "_read", counted)
    layout, records = read_records(path, "extes")
    assert layout == "JSON array"
    assert next(records) == (1, extes(0))
    assert sum(read) < path.stat().st_size / 4  # the first PEEK records and a little more
    with pytest.raises(ImportFileError, match=r"not JSON \(Expecting value"):
        list(records)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_an_array_read_in_chunks_is_what_read_json_reads(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(importing, "CHUNK", chunk)
    text = (
        '\ufeff [ {"scene": "caf\\u00e9 \\"quoted\\" \\\\ end", "n": 12345, "x": -7.5e3},\n'
        '  12345678901234567890, NaN, 1e999999, -Infinity, "tail \\ud83d\\ude00", true, null,'
        '\n\t[[], {}], {"deep": [[[[1]]]]} ]\n\n'
    )
    path = tmp_path / "in.json"
    path.write_text(text, encoding="utf-8")
    _, records = read_records(path, "extes")
    assert list(records) == list(enumerate(read_json(text.lstrip("\ufeff")), start=1))


@pytest.mark.parametrize(
    "text",
    [
        '[{"a": 1},\n {"b": 2}\n {"c": 3}]',  # a missing comma on line 3
        '[{"a": 1},\n\n  {"b": tru}]',
        '[{"a": 1}, {"b": "unterminated',
        '[{"a": 1}] {"extra": 2}',
        '[{"a": 1},]',
    ],
)
def test_a_broken_array_is_placed_as_json_loads_places_it(tmp_path, monkeypatch, text):
    monkeypatch.setattr(importing, "CHUNK", 4)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    path = tmp_path / "in.json"
    path.write_text(text)
    with pytest.raises(ImportFileError) as caught:
        list(read_records(path, "extes")[1])
    assert str(caught.value) == f"{path}: not JSON ({expected.value})"


def test_a_bom_is_skipped_in_json_lines_and_arrays(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("\ufeff" + json.dumps(esconv(1)) + "\n" + json.dumps(esconv(2)) + "\n")
    assert import_file(jsonl, "esconv").imported == 2
    extes_file = tmp_path / "bom.json"
    extes_file.write_text("\ufeff" + json.dumps([extes(1)]), encoding="utf-8")
    assert import_file(extes_file, "extes").imported == 1


def test_a_line_separator_inside_a_json_lines_text_does_not_split_the_row(tmp_path):
    record = esconv(1)
    record["situation"] = "Two lines\u2028in one situation."
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    report = import_file(path, "esconv")
    assert (report.records, report.imported) == (1, 1)
    assert Dialogue.objects.get().description == "Two lines\u2028in one situation."


# ---- saving a batch at a time ------------------------------------------------------------------


def test_a_file_of_many_batches_imports_every_record_with_its_turns(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    path = lines(tmp_path / "in.jsonl", [esconv(n) for n in range(10)])
    with mock.patch.object(importing, "_insert_batch", wraps=importing._insert_batch) as insert:
        report = import_file(path, "esconv")
    assert insert.call_count == 4  # 3 + 3 + 3 + 1
    assert (report.records, report.imported, report.duplicates) == (10, 10, 0)
    assert sorted(Dialogue.objects.values_list("source_record", flat=True)) == list(range(1, 11))
    tenth = Dialogue.objects.get(source_record=10)
    assert list(tenth.turns.values_list("index", "role", "text", "strategy__name")) == [
        (0, "seeker", "I feel flat every morning (9).", None),
        (1, "supporter", "How long has it been like this (9)?", "Question"),
    ]
    assert tenth.turns.get(index=0).final_text is None


def test_duplicates_across_batch_boundaries_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 2)
    import_file(lines(tmp_path / "old.jsonl", [esconv(100), esconv(101)]), "esconv")
    # 1 and 2 come back in later batches; 100 and 101 are in the database already.
    order = [1, 2, 3, 100, 4, 1, 5, 101, 2, 6]
    report = import_file(lines(tmp_path / "in.jsonl", [esconv(n) for n in order]), "esconv")
    assert (report.records, report.imported, report.duplicates) == (10, 6, 4)
    assert Dialogue.objects.count() == 8
    assert Turn.objects.count() == 16
    again = import_file(tmp_path / "in.jsonl", "esconv")
    assert (again.imported, again.duplicates) == (0, 10)


@pytest.mark.dbsensitive
@pytest.mark.usefixtures("vocabulary_db")
def test_a_failure_in_a_later_batch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 2)
    records: list[Any] = [esconv(n, problem_type=f"New worry {n}") for n in range(7)]
    records.insert(1, "not a dialogue")  # a reject, written before the failure
    path = lines(tmp_path / "in.jsonl", records)
    real_insert = importing._insert_batch
    calls: list[int] = []

    def insert(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real_insert(*args, **kwargs)

    before = Dialogue.objects.count(), Turn.objects.count(), Scenario.objects.count()
    with (
        mock.patch.object(importing, "_insert_batch", side_effect=insert),
        pytest.raises(RuntimeError),
    ):
        import_file(path, "esconv", rejects_path=tmp_path / "rejects" / "r.jsonl")
    assert len(calls) == 3  # two batches were written, and rolled back
    assert (Dialogue.objects.count(), Turn.objects.count(), Scenario.objects.count()) == before
    assert list((tmp_path / "rejects").iterdir()) == []  # no rejects file, no leftover


@pytest.mark.dbsensitive
@pytest.mark.usefixtures("vocabulary_db")
def test_a_syntax_error_at_the_end_of_an_array_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 2)
    monkeypatch.setattr(importing, "CHUNK", 256)
    path = tmp_path / "in.json"
    records = [extes(n) for n in range(importing.PEEK + 10)]
    path.write_text(json.dumps(records)[:-1] + ', {"scene": }]')
    with mock.patch.object(importing, "_insert_batch", wraps=importing._insert_batch) as insert:
        with pytest.raises(ImportFileError, match="not JSON"):
            import_file(path, "extes")
        assert insert.call_count == 15  # all of them were saved before the error showed
    assert Dialogue.objects.count() == 0


def test_rejects_are_kept_in_order_and_no_part_file_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "BATCH_SIZE", 1)
    path = lines(tmp_path / "in.jsonl", ["first reject", esconv(1), "second reject", esconv(2)])
    target = tmp_path / "r.jsonl"
    report = import_file(path, "esconv", rejects_path=target)
    assert report.rejects_path == str(target)
    assert [json.loads(row)["record"] for row in target.read_text().splitlines()] == [1, 3]
    assert list(tmp_path.glob(".*.part")) == []


# ---- roles ---------------------------------------------------------------------------------------


def test_roles_are_passed_to_the_parser(tmp_path):
    path = lines(tmp_path / "in.jsonl", [esconv(1)])
    with mock.patch.object(importing, "parse_record", wraps=parse_record) as parse:
        import_file(path, "esconv", roles={"usr": "seeker", "sys": "supporter"})
    assert parse.call_args.kwargs["roles"] == {"usr": "seeker", "sys": "supporter"}


def roles_unknown_for(numbers: set[int]):
    """parse_record, but rejecting the records whose situation names one of NUMBERS."""

    def parse(raw, fmt, vocab, roles=None):
        for n in numbers:
            if raw["situation"].endswith(f"case {n}."):
                raise Rejected("roles_unknown", f"speakers of case {n} do not tell")
        return parse_record(raw, fmt, vocab, roles=roles)

    return parse


def test_a_file_whose_every_record_has_unknown_roles_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "parse_record", roles_unknown_for({1, 2, 3}))
    path = lines(tmp_path / "in.jsonl", [esconv(1), esconv(2), esconv(3)])
    with pytest.raises(ImportFileError) as caught:
        import_file(path, "esconv", rejects_path=tmp_path / "r.jsonl")
    assert str(caught.value) == (
        f"{path}: the speakers of every record are unknown "
        "(record 1: speakers of case 1 do not tell)"
    )
    assert Dialogue.objects.count() == 0
    assert not (tmp_path / "r.jsonl").exists()


def test_some_records_with_unknown_roles_are_rejected_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(importing, "parse_record", roles_unknown_for({2}))
    path = lines(tmp_path / "in.jsonl", [esconv(1), esconv(2), esconv(3)])
    report = import_file(path, "esconv", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (2, {"roles_unknown": 1})


def test_unknown_speakers_with_the_real_parser_refuse_the_file_until_roles_are_named(tmp_path):
    record = esconv(1)
    for turn, name in zip(record["dialog"], ["Alex", "Sam"], strict=True):
        turn["speaker"] = name
        turn.pop("strategy", None)
    path = lines(tmp_path / "in.jsonl", [record])
    with pytest.raises(ImportFileError, match="the speakers of every record are unknown"):
        import_file(path, "esconv")
    report = import_file(path, "esconv", roles={"Alex": "seeker", "Sam": "supporter"})
    assert report.imported == 1


# ---- what the report and the rows say --------------------------------------------------------


def test_fields_the_parser_does_not_use_go_into_provenance(tmp_path):
    record = esconv(1, emotion_type="anxiety", survey_score={"seeker": {"empathy": "5"}})
    import_file(lines(tmp_path / "in.jsonl", [record, esconv(2)]), "esconv")
    first = Dialogue.objects.get(source_record=1)
    assert first.provenance["source_fields"]["emotion_type"] == "anxiety"
    assert first.provenance["source_fields"]["survey_score"] == {"seeker": {"empathy": "5"}}
    assert Dialogue.objects.get(source_record=2).provenance == {}


def test_source_fields_are_merged_with_the_provenance_given():
    vocab = Vocabulary.from_specs()
    parsed = parse_record(esconv(1, emotion_type="anxiety"), "esconv", vocab)
    reference = importing.load_reference()
    (dialogue,) = create_dialogues(
        [
            (
                parsed,
                {
                    "scenario": Scenario.objects.get(name=parsed.scene),
                    "origin": "generated",
                    "raw": {},
                    "provenance": {"job": 7},
                },
            )
        ],
        reference.strategy_ids,
        screen="rules",
    )
    dialogue.refresh_from_db()
    assert dialogue.provenance == {"job": 7, "source_fields": {"emotion_type": "anxiety"}}
    assert dialogue.content_hash == parsed.content_hash()


def test_the_report_names_unknown_strategies_with_their_counts(tmp_path):
    records = [extes(1, "Gentle humour"), extes(2, "Gentle humour"), extes(3, "Foo"), extes(4)]
    report = import_file(array(tmp_path / "in.json", records), "extes")
    assert dict(report.unknown_strategies) == {"Gentle humour": 2, "Foo": 1}
    printed = report.lines()
    at = printed.index("    strategy_unknown: 3 in 3 dialogues")
    assert printed[at + 1] == "    unknown strategy names: Gentle humour (2), Foo (1)"


def test_no_unknown_strategy_line_without_unknown_strategies(tmp_path):
    report = import_file(array(tmp_path / "in.json", [extes(1)]), "extes")
    assert not [line for line in report.lines() if "unknown strategy names" in line]


def test_turn_rows_inserted_by_hand_leave_only_nullable_fields_out():
    # importing._insert_turns writes _TURN_FIELDS in plain SQL: any other Turn field gets no
    # value, so it must be one the database may leave empty (a new field with a default would
    # need adding there).
    from curation.importing import _TURN_FIELDS
    from curation.models import Turn

    left_out = [
        f for f in Turn._meta.concrete_fields if f.name not in _TURN_FIELDS and not f.primary_key
    ]
    assert left_out, "the check checks nothing"
    assert all(f.null for f in left_out), [f.name for f in left_out if not f.null]


def test_an_import_with_debug_on_does_not_keep_every_query(tmp_path, monkeypatch, settings):
    """DEBUG keeps the last 9,000 queries, parameters and all: an import's batches carry the
    file's records, so that log grew with the file. It is emptied after every batch."""
    from django.db import connection

    settings.DEBUG = True
    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    path = lines(tmp_path / "in.jsonl", [esconv(n) for n in range(30)])
    connection.queries_log.clear()
    queries_per_batch: list[int] = []
    real = importing._insert_batch

    def insert_batch(*args, **kwargs):
        result = real(*args, **kwargs)
        queries_per_batch.append(len(connection.queries_log))
        return result

    monkeypatch.setattr(importing, "_insert_batch", insert_batch)
    assert import_file(path, "esconv").imported == 30
    assert len(queries_per_batch) == 10
    # Each batch starts from an empty log: what it holds never adds up across batches.
    assert max(queries_per_batch[1:]) <= max(queries_per_batch[:2]) + 2
    assert len(connection.queries_log) <= max(queries_per_batch)
