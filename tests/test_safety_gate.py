"""The crisis gate on every way in (issue 14, item 1): imported, seed and generated dialogues pass
it where parsed dialogues become rows; DRI candidates and annotators' edits of seeker turns pass
it too; `recheck_safety` runs it again over the studio, `check_safety` over a file."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command

from curation.importing import import_file
from curation.models import Dialogue, Event, SafetyStatus, Turn
from curation.review import reviewing

pytestmark = pytest.mark.django_db

RISK = "Honestly I feel like ending my life."
CALM = "My manager moved my deadline again and I am tired."


def record(seeker: str, description: str = "Work stress.") -> dict:
    return {
        "scene": "Work Stress",
        "description": description,
        "content": [
            {"User": seeker},
            {"AI Strategy": "Emotional Validation", "AI": "That sounds like a lot to carry."},
            {"User": "Thanks for listening."},
            {"AI Strategy": "Affirmation", "AI": "You reached out, and that matters."},
        ],
    }


def write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def annotator(name: str = "ann") -> User:
    user = User.objects.create_user(name, password="pw-123456")
    user.groups.add(Group.objects.get(name="annotator"))
    return user


def test_an_imported_dialogue_at_risk_waits_for_a_lead(tmp_path: Path, vocabulary_db):
    report = import_file(write(tmp_path / "in.json", [record(RISK), record(CALM)]), "extes")
    assert (report.imported, report.flagged) == (2, 1)
    assert "flagged by the crisis gate, waiting for a lead: 1" in "\n".join(report.lines())
    flagged = Dialogue.objects.get(safety_status=SafetyStatus.FLAGGED)
    notes = flagged.safety_notes
    assert (notes["source"], notes["categories"], notes["matches"]) == (
        "import gate",
        ["suicide"],
        [RISK],
    )
    # Each reason says which layer saw what (the rule's match here; the classifier, at the
    # threshold the studio uses, may or may not add its own).
    assert {"layer": "rules", "category": "suicide", "text": RISK, "detail": ""} in notes["reasons"]
    assert notes["layers"] == ["rules", "model"]
    assert flagged.turns.get(index=0).text == RISK
    # Nobody is served it before a lead clears it.
    offered = {reviewing.claim_next(annotator(f"a{i}")) for i in range(3)}
    assert flagged not in offered


def test_the_description_counts_and_seeds_pass_the_gate_too(tmp_path: Path, vocabulary_db):
    path = write(tmp_path / "seed.json", [record(CALM, description="I want to end my life.")])
    report = import_file(path, "extes", origin=Dialogue.Origin.SEED)
    assert report.flagged == 1
    assert Dialogue.objects.get().safety_notes["source"] == "seed gate"


def test_esconv_dialogues_that_trip_the_gate_are_held(esconv_dir: Path, vocabulary_db):
    report = import_file(esconv_dir / "test.txt", "esconv")
    held = Dialogue.objects.filter(safety_status=SafetyStatus.FLAGGED)
    assert report.flagged == held.count() > 0
    assert all(d.safety_notes["matches"] for d in held)


def test_an_annotators_edit_of_a_seeker_turn_passes_the_gate(tmp_path: Path, vocabulary_db):
    import_file(write(tmp_path / "in.json", [record(CALM)]), "extes")
    a = annotator()
    dialogue = reviewing.claim_next(a)
    assert dialogue is not None
    seeker = dialogue.turns.get(index=0)
    supporter = dialogue.turns.get(index=1)
    review = reviewing.draft_for(dialogue, a)
    # A supporter's reply that names the risk does not flag (it reflects what the seeker said).
    reviewing.propose_edit(review, supporter, "I hear that you want to end your life.", 1)
    dialogue.refresh_from_db()
    assert dialogue.safety_status == SafetyStatus.NONE
    reviewing.propose_edit(review, seeker, RISK, 1)
    dialogue.refresh_from_db()
    assert dialogue.safety_status == SafetyStatus.FLAGGED
    assert dialogue.safety_notes["source"] == "edit gate"
    assert Event.objects.filter(dialogue=dialogue, action=Event.Action.CRISIS_FLAGGED).exists()
    # Out of the queue at once: the annotator's next request gets another dialogue or none.
    assert reviewing.claim_next(annotator("b")) != dialogue


def test_a_gate_flag_keeps_a_leads_exclusion_and_flags_a_cleared_dialogue_again(
    tmp_path: Path, vocabulary_db
):
    import_file(write(tmp_path / "in.json", [record(CALM), record(CALM + " Really.")]), "extes")
    excluded, cleared = Dialogue.objects.order_by("id")
    Dialogue.objects.filter(pk=excluded.pk).update(safety_status=SafetyStatus.EXCLUDED)
    Dialogue.objects.filter(pk=cleared.pk).update(safety_status=SafetyStatus.CLEARED)
    excluded.refresh_from_db()
    cleared.refresh_from_db()
    assert not excluded.flag_by_gate("DRI gate", ["suicide"], [RISK])
    assert cleared.flag_by_gate("DRI gate", ["suicide"], [RISK])
    excluded.refresh_from_db()
    assert excluded.safety_status == SafetyStatus.EXCLUDED
    assert cleared.safety_status == SafetyStatus.FLAGGED
    assert cleared.safety_notes["source"] == "DRI gate"


def test_recheck_flags_what_the_gate_finds_now_and_unflags_nothing(tmp_path: Path, vocabulary_db):
    import_file(
        write(tmp_path / "in.json", [record(CALM), record(CALM + " A"), record(RISK)]), "extes"
    )
    missed, cleared, caught = Dialogue.objects.order_by("id")
    # As if the gate had changed since: risk the old gate missed, a flag it would not raise now.
    Turn.objects.filter(dialogue__in=[missed, cleared], index=0).update(text=RISK)
    Dialogue.objects.filter(pk=cleared.pk).update(safety_status=SafetyStatus.CLEARED)
    Turn.objects.filter(dialogue=caught, index=0).update(text=CALM)

    out = StringIO()
    call_command("recheck_safety", "--dry-run", stdout=out)
    assert "would flag: 1 (imported 1)" in out.getvalue()
    assert Dialogue.objects.get(pk=missed.pk).safety_status == SafetyStatus.NONE

    out = StringIO()
    call_command("recheck_safety", stdout=out)
    printed = out.getvalue()
    assert "checked 2 dialogues" in printed  # the cleared one is a lead's decision
    assert "newly flagged: 1 (imported 1)" in printed
    assert "not matched now (left for a lead to clear): 1" in printed
    missed.refresh_from_db()
    assert missed.safety_status == SafetyStatus.FLAGGED
    assert missed.safety_notes["source"] == "recheck gate"
    assert Dialogue.objects.get(pk=cleared.pk).safety_status == SafetyStatus.CLEARED
    assert Dialogue.objects.get(pk=caught.pk).safety_status == SafetyStatus.FLAGGED


def test_check_safety_screens_text_lines_and_dialogue_files(tmp_path: Path, vocabulary_db):
    lines = tmp_path / "texts.jsonl"
    lines.write_text(
        "\n".join([json.dumps({"text": RISK}), json.dumps({"text": CALM}), "{not json", ""]) + "\n"
    )
    out = StringIO()
    call_command("check_safety", str(lines), stdout=out)
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert results[0]["line"] == 1 and results[0]["flagged"]
    assert results[0]["categories"] == ["suicide"]
    assert ("rules", RISK) in {(r["layer"], r["text"]) for r in results[0]["reasons"]}
    assert results[1] == {"line": 2, "flagged": False, "categories": [], "reasons": []}
    assert results[2]["line"] == 3 and "error" in results[2]
    assert len(results) == 3

    dialogues = write(tmp_path / "in.json", [record(CALM), record(RISK)])
    out = StringIO()
    call_command("check_safety", str(dialogues), "--format", "extes", stdout=out)
    verdicts = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(v["record"], v["flagged"]) for v in verdicts] == [(1, False), (2, True)]
    assert Dialogue.objects.count() == 0  # screening saves nothing


@pytest.mark.django_db(transaction=True)  # the job's threads write through their own connections
def test_a_dri_candidate_at_risk_sends_its_dialogue_to_a_lead(settings, vocabulary_db, seeds):
    import dataclasses

    from curation.models import Candidate
    from tests.fake_teacher import FakeTeacher, run_dri_job

    settings.TEACHER_MAX_RETRIES = 0
    calm, risky = Dialogue.objects.filter(origin="seed").order_by("id")[:2]
    Dialogue.objects.filter(pk__in=[calm.pk, risky.pk]).update(status="accepted")
    with FakeTeacher() as fake:
        fills = ["Take your time; I am here.", "What helps you on days like this?", "I want to end my life.",
                 "That sounds exhausting, truly.", "You have done a lot today.", "Tell me more about it."]  # fmt: skip
        fake.pool = dataclasses.replace(fake.pool, supporter=fills)
        run_dri_job(fake.url, concurrency=1)
    flagged = Dialogue.objects.filter(
        safety_status=SafetyStatus.FLAGGED, pk__in=[calm.pk, risky.pk]
    )
    risky_fill = Candidate.objects.select_related("turn").get(text="I want to end my life.")
    [dialogue] = flagged  # the one that got the risky fill; the other stays in review
    assert dialogue.pk == risky_fill.turn.dialogue_id
    assert dialogue.safety_notes["source"] == "DRI gate"
    assert dialogue.safety_notes["matches"] == ["I want to end my life."]


def test_check_safety_scores_labelled_lines(tmp_path: Path, vocabulary_db):
    rows = [
        {"text": RISK, "crisis": True, "category": "suicide"},
        {
            "text": "I keep thinking about the pills in the cupboard.",
            "crisis": True,
            "category": "suicide",
        },
        {"text": CALM, "crisis": False, "category": None},
        {"text": "This commute is killing me.", "crisis": False, "category": None},
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = StringIO()
    call_command("check_safety", str(path), stdout=out)
    *verdicts, last = [json.loads(line) for line in out.getvalue().splitlines()]
    flagged = [v["flagged"] for v in verdicts]
    caught = sum(flagged[:2])
    assert last["summary"]["crisis_flagged"] == f"{caught}/2"
    assert last["summary"]["recall"] == round(caught / 2, 3)
    assert last["summary"]["others_flagged"] == f"{sum(flagged[2:])}/2"
    assert last["summary"]["recall_by_category"] == {"suicide": f"{caught}/2"}
    # Each layer alone, beside the gate as the studio runs it.
    layers = last["summary"]["by_layer"]
    assert set(layers) == {"rules", "model"}
    assert layers["rules"]["crisis_flagged"] == "1/2"  # the rules know no pills in cupboards
    out = StringIO()
    call_command("check_safety", str(path), "--layers", "rules", stdout=out)
    assert "by_layer" not in json.loads(out.getvalue().splitlines()[-1])["summary"]
