"""Hostile or broken input to `import_dialogues`: a one-line error for a file that cannot be read,
a reject with its reason for a record that cannot be stored, never a traceback; rejects files that
a strict JSON parser reads. Tests marked dbsensitive run again on PostgreSQL (`make test`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from curation.importing import import_file
from curation.models import Dialogue, Scenario
from curation.parsing import MAX_DEPTH, Vocabulary
from curation.vocabulary import EXTES_STRATEGIES
from generation import selfchat
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def extes(turns: int = 2, scene: str = "Anxiety and Panic", **extra: Any) -> dict[str, Any]:
    content: list[dict[str, str]] = []
    for i in range(turns):
        if i % 2 == 0:
            content.append({"User": f"My heart races on the train, day {i}."})
        else:
            content.append({"AI Strategy": "Emotional Validation", "AI": f"That sounds scary {i}."})
    return {
        "scene": scene,
        "description": f"Panic, {turns} turns, {scene[:20]}",
        "content": content,
        **extra,
    }


def esconv_line(situation: str) -> str:
    return json.dumps(
        {
            "problem_type": "ongoing depression",
            "situation": situation,
            "dialog": [
                {"text": "I feel flat every morning.", "speaker": "usr"},
                {
                    "text": "How long has it been like this?",
                    "speaker": "sys",
                    "strategy": "Question",
                },
            ],
        }
    )


def nested(depth: int) -> str:
    """A JSON object DEPTH levels deep."""
    return '{"a":' * depth + "1" + "}" * depth


def write(tmp_path: Path, text: str, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_import(path: Path, fmt: str, **options: Any) -> str:
    out = StringIO()
    call_command("import_dialogues", str(path), format=fmt, stdout=out, **options)
    return out.getvalue()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def strict_rows(path: Path) -> list[dict[str, Any]]:
    """Every line of a rejects file, read by a JSON parser that refuses NaN and Infinity."""
    return [
        json.loads(line, parse_constant=_no_constants) for line in path.read_text().splitlines()
    ]


# ---- files that cannot be read: one line, non-zero exit, nothing saved ------------------------


@pytest.mark.parametrize("fmt", ["extes", "esconv"])
def test_an_array_nested_100k_deep_is_a_one_line_error(tmp_path, fmt):
    path = write(tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(CommandError, match="nested too deeply") as caught:
        run_import(path, fmt)
    assert "\n" not in str(caught.value)
    assert Dialogue.objects.count() == 0


def test_deep_nesting_exits_non_zero_with_one_line(tmp_path):
    path = write(tmp_path, "[" * 100_000 + "]" * 100_000)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["EXTES_DATA_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "manage.py", "import_dialogues", str(path), "--format", "extes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # The last line: start-up may log before it (django-axes, system checks).
    assert result.stderr.strip().splitlines()[-1] == (
        f"CommandError: {path}: JSON nested too deeply to read"
    )


def test_a_record_nested_10000_deep_makes_an_extes_array_unreadable(tmp_path):
    # Python's json cannot read past it, so the file as a whole is refused.
    text = json.dumps([extes()])[:-1] + ', {"scene": ' + nested(10_000) + "}]"
    with pytest.raises(CommandError, match="nested too deeply") as caught:
        run_import(write(tmp_path, text), "extes")
    assert "\n" not in str(caught.value)
    assert Dialogue.objects.count() == 0


def test_a_100k_digit_integer_for_a_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CommandError, match="expected a JSON array of dialogues, got a number"):
        run_import(write(tmp_path, "9" * 100_000), "extes")
    assert Dialogue.objects.count() == 0


@pytest.mark.dbsensitive
def test_a_path_longer_than_source_file_holds_is_a_one_line_error(tmp_path):
    folder = tmp_path / ("d" * 250) / ("d" * 250)
    folder.mkdir(parents=True)
    path = write(folder, json.dumps([extes()]))
    with pytest.raises(CommandError, match=r"Dialogue\.source_file would be \d+ characters"):
        run_import(path, "extes")
    assert Dialogue.objects.count() == 0


# ---- records that cannot be stored: rejected with the reason, the rest imports ---------------


def test_a_record_nested_10000_deep_in_json_lines_is_rejected_alone(tmp_path):
    deep = json.dumps({"problem_type": "x", "dialog": []})[:-1] + ', "x": ' + nested(10_000) + "}"
    # The deep row first: reading the file as one JSON document fails on it.
    path = write(tmp_path, "\n".join([deep, esconv_line("One."), esconv_line("Two.")]) + "\n")
    report = import_file(path, "esconv", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (2, {"too_deep": 1})
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert (row["record"], row["reason"], row["raw"]) == (1, "too_deep", deep)


def test_a_record_nested_past_the_limit_is_rejected(tmp_path):
    # The record is level 1, so an extra key holding N nested objects reaches level N + 1.
    at_limit = json.dumps(extes())[:-1] + ', "x": ' + nested(MAX_DEPTH - 1) + "}"
    past_limit = json.dumps(extes(4))[:-1] + ', "x": ' + nested(MAX_DEPTH) + "}"
    far_past = json.dumps(extes(6))[:-1] + ', "x": ' + nested(500) + "}"
    path = write(tmp_path, f"[{at_limit}, {past_limit}, {far_past}]")
    report = import_file(path, "extes", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (1, {"too_deep": 2})
    rows = strict_rows(tmp_path / "r.jsonl")
    assert [r["record"] for r in rows] == [2, 3]
    assert rows[1]["raw"] == json.loads(far_past)


@pytest.mark.dbsensitive
@pytest.mark.parametrize(
    "number", ["1e999999", "-1e999999", "9" * 100_000, "NaN", "Infinity", "-Infinity"]
)
def test_numbers_json_cannot_hold_reject_their_record(tmp_path, number):
    good = json.dumps(extes())
    bad = json.dumps(extes(4))[:-1] + f', "score": {number}}}'
    path = write(tmp_path, f"[{good}, {bad}]")
    report = import_file(path, "extes", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (1, {"bad_number": 1})
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert row["raw"]["score"] == number  # kept as the text it was written as
    assert row["raw"]["content"] == extes(4)["content"]


def test_nan_in_a_rejected_record_still_gives_strict_json_lines(tmp_path):
    path = write(tmp_path, '[{"scene": "Anxiety and Panic", "score": NaN, "more": [Infinity]}]')
    report = import_file(path, "extes", rejects_path=tmp_path / "r.jsonl")
    assert report.imported == 0
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert row["raw"] == {"scene": "Anxiety and Panic", "score": "NaN", "more": ["Infinity"]}


@pytest.mark.dbsensitive
@pytest.mark.parametrize(
    "change",
    [
        {"description": "a NUL \u0000 here"},
        {"x\u0000": "a NUL in a key"},
        {"description": "an unpaired surrogate \ud800 here"},
    ],
    ids=["nul", "nul_in_key", "surrogate"],
)
def test_text_no_database_stores_rejects_its_record(tmp_path, change):
    bad = {**extes(4), **change}
    # ensure_ascii: the surrogate travels as its \u escape, as it would in a real file.
    path = write(tmp_path, json.dumps([extes(), bad]))
    report = import_file(path, "extes", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (1, {"bad_text": 1})
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert row["raw"] == bad


@pytest.mark.dbsensitive
@pytest.mark.parametrize(
    ("scene", "detail"),
    [
        ("S" * 201, "Scenario.name would be 201 characters, more than the 200 it holds"),
        # 200 characters, but its matching key reads each "&" as " and ".
        ("x&" * 100, "Scenario.key would be 599 characters, more than the 200 it holds"),
    ],
    ids=["name", "key"],
)
def test_an_over_long_scene_is_rejected_and_the_rest_imports(tmp_path, scene, detail):
    records = [extes(), extes(4, scene=scene), extes(6, scene="T" * 200)]
    report = import_file(
        write(tmp_path, json.dumps(records)), "extes", rejects_path=tmp_path / "r.jsonl"
    )
    assert (report.imported, dict(report.rejected)) == (2, {"field_too_long": 1})
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert (row["record"], row["detail"]) == (2, detail)
    assert Scenario.objects.filter(name="T" * 200).exists()
    assert not Scenario.objects.filter(name=scene).exists()


# ---- the cap on utterances -------------------------------------------------------------------


def test_a_dialogue_over_the_cap_is_rejected_with_the_reason(tmp_path, settings):
    settings.MAX_UTTERANCES = 6
    path = write(tmp_path, json.dumps([extes(6), extes(8)]))
    report = import_file(path, "extes", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (1, {"too_long": 1})
    (row,) = strict_rows(tmp_path / "r.jsonl")
    assert row["detail"] == "8 utterances, more than the 6 allowed (EXTES_MAX_UTTERANCES)"


def test_the_default_cap_rejects_a_5000_turn_record(tmp_path):
    output = run_import(write(tmp_path, json.dumps([extes(5000), extes()])), "extes")
    assert "imported: 1" in output
    assert "too_long: 1" in output
    assert Dialogue.objects.get().turns.count() == 2


def test_generation_respects_the_same_cap(settings):
    settings.MAX_UTTERANCES = 6
    strategies = [(s.name, s.definition) for s in EXTES_STRATEGIES]
    spec = selfchat.DialogueSpec("Anxiety and Panic", strategies, [], 2, 30)
    vocab = Vocabulary.from_specs()
    assert len(selfchat.validate(extes(6), spec, vocab, "{}").turns) == 6
    with pytest.raises(selfchat.Failure, match="EXTES_MAX_UTTERANCES") as caught:
        selfchat.validate(extes(8), spec, vocab, "{}")
    assert caught.value.failure_class == "schema"
