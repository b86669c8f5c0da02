from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from curation.importing import import_file
from curation.models import Dialogue, Turn
from tests.conftest import DATA, SEED_FILE

pytestmark = pytest.mark.django_db


def export(tmp_path, **options) -> list:
    out = tmp_path / "out.json"
    call_command("export_dialogues", format="extes", out=str(out), stderr=StringIO(), **options)
    return json.loads(out.read_text(encoding="utf-8"))


def test_sample_round_trip_is_equal(tmp_path, extes_sample):
    import_file(extes_sample, "extes")
    assert export(tmp_path) == json.loads(extes_sample.read_text())


def test_seed_file_round_trip_is_equal(tmp_path):
    import_file(SEED_FILE, "extes", origin="seed")
    assert export(tmp_path) == json.loads(SEED_FILE.read_text())


def test_export_uses_exact_extes_keys(tmp_path, extes_sample):
    import_file(extes_sample, "extes")
    (record,) = export(tmp_path)
    assert list(record) == ["scene", "description", "content"]
    assert {tuple(u) for u in record["content"]} == {("User",), ("AI Strategy", "AI")}
    assert record["content"][1] == {
        "AI Strategy": "",
        "AI": "Of course! I'm here to listen. What's been going on?",
    }


def test_repaired_drift_exports_clean(tmp_path):
    import_file(DATA / "drift_extes.json", "extes")
    records = export(tmp_path)
    assert len(records) == 12
    for record in records:
        assert list(record) == ["scene", "description", "content"]
        for utterance in record["content"]:
            assert set(utterance) in ({"User"}, {"AI Strategy", "AI"})
            assert all(isinstance(v, str) and v is not None for v in utterance.values())
    reimported = tmp_path / "again.json"
    reimported.write_text(json.dumps(records))
    assert import_file(reimported, "extes").duplicates == 12


def test_filters_by_status_and_scenario(tmp_path):
    import_file(SEED_FILE, "extes", origin="seed")
    chosen = Dialogue.objects.filter(scenario__name="Anxiety and Panic")
    chosen.update(status="accepted")
    assert len(export(tmp_path, status="accepted")) == chosen.count() >= 1
    by_scene = export(tmp_path, scenario="breakups  OR divorce")
    assert {r["scene"] for r in by_scene} == {"Breakups or Divorce"}
    assert len(by_scene) == Dialogue.objects.filter(scenario__name="Breakups or Divorce").count()
    assert export(tmp_path, status="rejected") == []


def test_unknown_scenario_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="no scenario called 'Knitting'"):
        export(tmp_path, scenario="Knitting")


def test_esconv_dialogues_export_with_their_labels(tmp_path, esconv_dir):
    import_file(esconv_dir / "valid.txt", "esconv")
    records = export(tmp_path)
    assert len(records) == 195
    supporter_turns = sum("AI" in u for r in records for u in r["content"])
    assert supporter_turns == Turn.objects.filter(role="supporter").count()
    labels = {u["AI Strategy"] for r in records for u in r["content"] if "AI" in u}
    assert "Question" in labels and "" not in labels


def test_export_to_stdout(capsys, extes_sample):
    import_file(extes_sample, "extes")
    call_command("export_dialogues", out="-")
    assert json.loads(capsys.readouterr().out) == json.loads(extes_sample.read_text())
