"""The crisis gate's optional teacher check (generation.crisis_teacher), against a real local HTTP
server that speaks the chat-completions protocol (tests/fake_teacher.py): one request per
dialogue, its verdict and evidence shown as the "teacher" layer, cached per text, and a teacher
that answers out of shape or not at all never blocks an import."""

from __future__ import annotations

import pytest

from curation.importing import import_file
from curation.models import Dialogue, SafetyStatus
from generation import crisis_gate, crisis_teacher
from tests.fake_teacher import FakeTeacher
from tests.test_safety_gate import record, write

pytestmark = pytest.mark.django_db

CALM = "My manager moved my deadline again and I am tired of the extra hours."
# Ordinary words to the rules and the classifier; the fake judge calls "the bridge" risk.
TEACHER_ONLY = "I drove past the bridge again on the way home. I sat in the car for a while."


@pytest.fixture
def teacher(settings, monkeypatch):
    crisis_teacher.clear_cache()
    with FakeTeacher() as fake:
        monkeypatch.setenv("EXTES_TEACHER_BASE_URL", fake.url)
        monkeypatch.setenv("EXTES_TEACHER_MODEL", "fake-teacher")
        monkeypatch.setenv("EXTES_TEACHER_API_KEY", "sk-test")
        settings.SAFETY_TEACHER_CHECK = True
        settings.TEACHER_MAX_RETRIES = 0
        yield fake
    crisis_teacher.clear_cache()


def test_off_unless_asked_for_and_a_real_endpoint(settings, monkeypatch):
    monkeypatch.delenv("EXTES_TEACHER_BASE_URL", raising=False)
    settings.SAFETY_TEACHER_CHECK = True
    assert not crisis_teacher.enabled()  # the local 135M model is no judge
    assert "teacher" not in crisis_gate.default_layers()


def test_the_teacher_flags_what_the_other_layers_miss_with_its_evidence(tmp_path, teacher):
    assert crisis_gate.default_layers() == ("rules", "model", "teacher")
    report = import_file(write(tmp_path / "in.json", [record(TEACHER_ONLY), record(CALM)]), "extes")
    assert (report.imported, report.flagged) == (2, 1)
    flagged = Dialogue.objects.get(safety_status=SafetyStatus.FLAGGED)
    [reason] = [r for r in flagged.safety_notes["reasons"] if r["layer"] == "teacher"]
    assert reason["text"] == "I drove past the bridge again on the way home."
    assert reason["category"] == "suicide" and "fake-teacher" in reason["detail"]
    checks = [r for r in teacher.requests if "evidence" in r["messages"][0]["content"]]
    assert len(checks) == 2  # one request per dialogue
    assert checks[0]["temperature"] == 0.0
    assert "1. Work stress." in checks[0]["messages"][1]["content"]
    # Cached per text: the same words again cost no request.
    crisis_gate.check_many([["Work stress.", TEACHER_ONLY, "Thanks for listening."]])
    assert len([r for r in teacher.requests if "evidence" in r["messages"][0]["content"]]) == 2


def test_a_teacher_out_of_shape_or_down_gives_no_verdict_and_blocks_nothing(tmp_path, teacher):
    teacher.script = ["invalid_json"]  # one answer out of shape; then the server is down
    teacher.default = "server_error"
    report = import_file(
        write(tmp_path / "in.json", [record(TEACHER_ONLY), record(TEACHER_ONLY + " Hm.")]),
        "extes",
    )
    teacher.default = "valid"
    assert (report.imported, report.flagged) == (2, 0)  # the other layers saw nothing
    assert set(Dialogue.objects.values_list("safety_status", flat=True)) == {SafetyStatus.NONE}
    # Not cached: asked again, the teacher answers.
    result = crisis_gate.check(
        ["Work stress.", TEACHER_ONLY, "Thanks for listening, that helps a bit."]
    )
    assert result.flagged and result.by_layer("teacher")
