"""`import_dialogues` end to end: drift report, ESConv, rejects, error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from curation.importing import import_file
from curation.models import Dialogue, Scenario, Turn
from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.django_db

DRIFT = DATA / "drift_extes.json"


def run_import(path: Path, fmt: str, **options) -> str:
    out = StringIO()
    call_command("import_dialogues", str(path), format=fmt, stdout=out, **options)
    return out.getvalue()


def test_drift_file_report_counts_every_kind(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    report = import_file(DRIFT, "extes", rejects_path=rejects)

    assert report.records == 18
    assert report.imported == 12
    assert report.duplicates == 1
    assert dict(report.repairs) == {
        "scene_alias": 1,
        "scene_unknown": 1,
        "extra_keys": 2,
        "object_utterance": 2,
        "strategy_key_spelling": 1,
        "merged_object": 1,
        "empty_text": 2,
        "merged_consecutive": 1,
        "strategy_case": 2,
        "strategy_unknown": 1,
        "supporter_first": 1,
    }
    assert dict(report.rejected) == {
        "not_an_object": 1,
        "missing_scene": 1,
        "missing_content": 1,
        "unreadable_utterance": 1,
        "too_short": 1,
    }
    assert report.new_scenarios == ["Existential Dread at Work"]

    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["record"] for r in rows] == [13, 14, 15, 16, 17]
    assert rows[0]["raw"] == "oops, not a dialogue"
    assert rows[3]["raw"]["content"][1] == {"Speaker": "supporter", "Words": "Hello"}
    assert all(r["reason"] and r["detail"] for r in rows)


def test_drift_repairs_land_in_the_database():
    import_file(DRIFT, "extes")
    breakup = Dialogue.objects.get(description__startswith="We split")
    assert breakup.scenario.name == "Breakups or Divorce"

    flagged = Dialogue.objects.get(description__startswith="I sort invoices")
    assert not flagged.scenario.is_official
    assert flagged.raw["scene"] == "Existential Dread at Work"

    caregiver = Dialogue.objects.get(description__contains="Parkinson")
    assert caregiver.raw["id"] == 4711  # extra keys are kept verbatim

    lyon = Dialogue.objects.get(description__contains="Lyon")
    assert lyon.turns.get(index=1).strategy is None
    assert {"kind": "strategy_unknown", "detail": "Gentle humour"} in lyon.repairs

    miso = Dialogue.objects.get(description__contains="Miso")
    assert list(miso.turns.values_list("role", "strategy__name")) == [
        ("seeker", None),
        ("supporter", "Emotional Validation"),
        ("seeker", None),
        ("supporter", "Share Information"),
    ]

    meeting = Dialogue.objects.get(description__contains="team meetings")
    assert list(
        meeting.turns.filter(role="supporter").values_list("strategy__name", flat=True)
    ) == ["Emotional Validation", "Avoid Judgment And Criticism"]

    pub = Dialogue.objects.get(description__contains="ninety days")
    assert pub.turns.get(index=0).role == "supporter"


def test_command_prints_the_summary():
    output = run_import(DRIFT, "extes")
    assert "imported: 12" in output
    assert "duplicates skipped: 1" in output
    assert "object_utterance: 2 in 1 dialogues" in output
    assert "too_short: 1" in output
    assert "new scenarios, flagged for review: Existential Dread at Work" in output
    assert "rejected records written to" in output


def test_esconv_valid_split(esconv_dir):
    path = esconv_dir / "valid.txt"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # What the repairs must give, counted independently: one turn per run of one speaker.
    runs = sum(
        1
        + sum(
            a["speaker"] != b["speaker"] for a, b in zip(r["dialog"], r["dialog"][1:], strict=False)
        )
        for r in records
    )
    opening_supporter = sum(r["dialog"][0]["speaker"] == "sys" for r in records)
    repeats = sum(len(r["dialog"]) for r in records) - runs

    report = import_file(path, "esconv")
    assert (report.records, report.imported, sum(report.rejected.values())) == (195, 195, 0)
    assert report.layout == "JSON Lines"
    assert report.repairs["supporter_first"] == opening_supporter == 101
    assert report.repairs["merged_consecutive"] == repeats == 1211
    assert Dialogue.objects.filter(origin="imported", source_format="esconv").count() == 195
    assert Turn.objects.count() == runs
    assert (
        Turn.objects.filter(role="supporter", strategy__isnull=False).count()
        == Turn.objects.filter(role="supporter").count()
    )
    assert Turn.objects.filter(strategy__taxonomy="extes").count() == 0
    assert set(report.new_scenarios) == {"Procrastination", "Sleep Problems"}
    depression = Dialogue.objects.filter(scenario__name="Depression and Low Mood").count()
    assert depression == sum(r["problem_type"] == "ongoing depression" for r in records)
    first = Dialogue.objects.get(source_record=1)
    assert first.raw == records[0]


def test_nested_esconv_json(tmp_path):
    report = import_file(DATA / "esconv_nested.json", "esconv")
    assert report.layout == "nested ESConv.json"
    assert report.imported == 2
    job = Dialogue.objects.get(description__startswith="My contract")
    assert job.scenario.name == "Job Loss or Career Setbacks"
    assert list(job.turns.values_list("role", "strategy__name")) == [
        ("supporter", "Question"),
        ("seeker", None),
        ("supporter", "Reflection of feelings"),
        ("seeker", None),
        ("supporter", "Providing Suggestions"),
    ]
    assert (
        job.turns.get(index=1).text
        == "Not great. My contract ends in four weeks. And I have nothing lined up."
    )
    assert report.repairs["strategy_case"] == 1
    assert report.new_scenarios == ["Sleep problems"]


def test_same_dialogue_in_both_esconv_layouts_is_one_dialogue(tmp_path):
    nested = json.loads((DATA / "esconv_nested.json").read_text())[1]
    lines = {
        "problem_type": nested["problem_type"],
        "situation": nested["situation"],
        "dialog": [
            {
                "text": u["content"],
                "speaker": "usr" if u["speaker"] == "seeker" else "sys",
                **({"strategy": u["annotation"]["strategy"]} if u["annotation"] else {}),
            }
            for u in nested["dialog"]
        ],
    }
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(lines) + "\n")
    import_file(DATA / "esconv_nested.json", "esconv")
    report = import_file(path, "esconv")
    assert (report.imported, report.duplicates) == (0, 1)


def test_bad_json_lines_are_rejected_not_fatal(tmp_path, esconv_dir):
    good = (esconv_dir / "valid.txt").read_text().splitlines()[:2]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good[0], '{"problem_type": "x", "dialog": [', good[1]]) + "\n")
    report = import_file(path, "esconv", rejects_path=tmp_path / "r.jsonl")
    assert (report.imported, dict(report.rejected)) == (2, {"invalid_json": 1})
    assert json.loads((tmp_path / "r.jsonl").read_text())["record"] == 2


def test_default_rejects_file_goes_to_the_data_dir(settings):
    report = import_file(DRIFT, "extes")
    assert Path(report.rejects_path).parent == settings.REJECTS_DIR
    assert len(Path(report.rejects_path).read_text().splitlines()) == 5


def test_dry_run_saves_nothing():
    output = run_import(DRIFT, "extes", dry_run=True)
    assert "would import: 12" in output
    assert "dry run: nothing was saved" in output
    assert Dialogue.objects.count() == 0
    assert not Scenario.objects.filter(is_official=False).exists()


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("this is not json at all", "extes", "not JSON"),
        ("this is not json\nnor this", "esconv", "not JSON and not JSON Lines"),
        ('{"scene": 1}\n{"scene": 2}', "extes", "not JSON"),
        ("42", "extes", "expected a JSON array"),
        ('[{"problem_type": "x", "dialog": []}]', "extes", "looks like ESConv"),
        ('[{"scene": "x", "content": []}]', "esconv", "looks like ExTES"),
    ],
)
def test_unreadable_files_raise_a_one_line_error(tmp_path, content, fmt, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CommandError, match=message) as caught:
        run_import(path, fmt)
    assert "\n" not in str(caught.value)
    assert Dialogue.objects.count() == 0


def test_missing_file_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "import_dialogues",
            str(tmp_path / "nope.json"),
            "--format",
            "extes",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {tmp_path / 'nope.json'}: no such file"
    ]


def test_a_file_with_rejects_still_exits_zero(tmp_path):
    env = _env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "import_dialogues",
            str(DRIFT),
            "--format",
            "extes",
            "--rejects",
            str(tmp_path / "r.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "rejected: 5" in result.stdout


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["EXTES_DATA_DIR"] = str(tmp_path / "var")
    return env
