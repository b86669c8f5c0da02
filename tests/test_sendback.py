"""A trained student's weakest replies go back to annotators as ranking rounds, blind; their
rankings come out of the next release as preference pairs against the student's reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from curation.models import Candidate, Dialogue, Ranking, RankRound, Release, Turn
from curation.releases.build import create_release, write_files
from curation.releases.lineage import lineage
from generation import runner
from generation.models import GenerationJob
from tests.fake_teacher import FakeTeacher
from training import sendback
from training.evaluate import Sample, reply_scores
from training.models import TrainingJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

WEAK = "I cannot say anything about that."


def row(dialogue: int, message: int, reference: str, student: str, nll: float = 20.0) -> dict:
    """A job's sample row, scored as the worker scores it."""
    [scores] = reply_scores([Sample(0, message, [], reference, student, nll=nll, tokens=10)])
    return {
        "id": str(dialogue),
        "turn": message,
        "context": [],
        "reference": reference,
        "base": "",
        "student": student,
        "base_scores": None,
        "student_scores": scores,
    }


# ---- choosing the weakest: plain data --------------------------------------------------------


def test_each_rule_picks_the_worst_replies_first():
    rows = [
        row(1, 2, "[Question] How long has it felt like this?", "[Question] How long now?", 12.0),
        row(2, 2, "[Affirmation] You did well to speak up.", "[Question] Why did you?", 45.0),
        row(3, 4, "[Reflection] It sounds exhausting.", "[Reflection] It sounds exhausting.", 3.0),
        row(4, 2, "[Question] What happened next?", "[Self-disclosure] I had a dog.", 30.0),
    ]
    by_likelihood = sendback.weakest(rows, "likelihood", 2)
    assert [w.dialogue_id for w in by_likelihood] == [2, 4]  # 4.5 then 3.0 nats a token
    assert by_likelihood[0].score == pytest.approx(4.5)
    by_overlap = sendback.weakest(rows, "overlap", 4)
    assert by_overlap[-1].dialogue_id == 3  # the word-for-word reply is the best
    assert [w.score for w in by_overlap] == sorted(w.score for w in by_overlap)
    mismatched = sendback.weakest(rows, "strategy", 10)
    assert {w.dialogue_id for w in mismatched} == {2, 4}  # the tags differ only there
    assert sendback.weakest(rows, "overlap", 0) == []


def test_a_rule_that_cannot_pick_says_why():
    untagged = [row(1, 2, "How long has it felt like this?", "How long now?")]
    assert "strategy tags" in sendback.rule_problem("strategy", untagged)
    assert sendback.rule_problem("overlap", untagged) == ""
    assert "not evaluated" in sendback.rule_problem("overlap", [])
    old = [dict(untagged[0], student_scores={"bleu": [0, 0]})]
    assert "no likelihood of the written replies" in sendback.rule_problem("likelihood", old)
    with pytest.raises(ValueError, match="unknown rule"):
        sendback.weakest(untagged, "length", 1)


# ---- the loop through the pages --------------------------------------------------------------


@pytest.fixture
def released(settings, tmp_path: Path) -> Release:
    settings.TRAINING_DIR = tmp_path / "training"
    settings.MEDIA_ROOT = tmp_path / "media"
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    return create_release("r-student", split={"train": 60, "valid": 20, "test": 20})


def finished_job(release: Release, weak_at: list[tuple[int, int]]) -> TrainingJob:
    """A done job whose student repeats every written reply of the release's dialogues but
    writes WEAK at (dialogue id, message index) `weak_at`."""
    rows = []
    for item in release.items.order_by("dialogue_id"):
        snap = item.snapshot
        for message, turn in enumerate(snap["turns"], start=1):
            if turn["role"] == "supporter":
                weak = (snap["id"], message) in weak_at
                rows.append(row(snap["id"], message, turn["text"], WEAK if weak else turn["text"]))
    return TrainingJob.objects.create(
        release=release,
        status=TrainingJob.Status.DONE,
        hyperparameters={},
        samples=rows,
        adapter_dir="/runs/job/adapter",
        resolved_config={"base": "tiny-student"},
    )


def supporter_messages(release: Release, count: int) -> list[tuple[int, int, Turn]]:
    """(dialogue id, message index, turn) of the first supporter turns of different dialogues."""
    found = []
    for item in release.items.order_by("dialogue_id"):
        for message, turn in enumerate(item.snapshot["turns"], start=1):
            if turn["role"] == "supporter" and message > 2:
                stored = Turn.objects.get(dialogue_id=item.dialogue_id, index=turn["index"])
                found.append((item.dialogue_id, message, stored))
                break
        if len(found) == count:
            return found
    raise AssertionError("not enough dialogues")


def person(name: str, group: str) -> User:
    user = User.objects.create_user(name, password=f"pw-{name}-123", is_staff=group == "lead")
    user.groups.add(Group.objects.get(name=group))
    if group == "lead":
        from django.contrib.auth.models import Permission

        user.user_permissions.add(Permission.objects.get(codename="view_trainingjob"))
    return user


def rank_all(user: User) -> list[list[dict]]:
    """The user ranks every round the queue gives, in a browser of their own: the original
    first, the student's reply (WEAK) last; returns the items each page showed."""
    client = Client()
    client.force_login(user)
    shown = []
    response = client.post(reverse("curation-rank-next"))
    while response.url != reverse("curation-review-home"):
        page = client.get(response.url)
        assert b"student" not in page.content.lower()  # who wrote which is never shown
        items = page.context["items"]
        shown.append(items)
        ranks = {item["key"]: 2 for item in items}
        for item in items:
            if item["text"] == WEAK:
                ranks[item["key"]] = 3
            elif item["key"].startswith("t"):
                ranks[item["key"]] = 1
        form = {f"rank-{k}": str(v) for k, v in ranks.items()} | {"round": page.context["round"]}
        response = client.post(response.url, form)
    return shown


@pytest.mark.django_db(transaction=True)  # the teacher's DRI job runs its units on threads
@pytest.mark.usefixtures("vocabulary_db")
def test_weakest_replies_go_back_blind_and_come_out_as_preference_pairs(
    client, released, monkeypatch, tmp_path, settings
):
    settings.REVIEWS_PER_DIALOGUE = 2
    picked = supporter_messages(released, 3)
    job = finished_job(released, [(d, m) for d, m, _ in picked])
    with_candidates = picked[0][2]
    teacher = [
        Candidate.objects.create(turn=with_candidates, text=text, provenance={"job": 1})
        for text in ("That sounds so heavy to carry.", "What has helped you before?")
    ]
    queued: list[int] = []
    monkeypatch.setattr("generation.tasks.start_job.delay", queued.append)
    lead = person("lena", "lead")
    client.force_login(lead)

    page = client.get(job.get_absolute_url())
    assert b"Back to annotators" in page.content
    assert b"Not available: the release&#x27;s replies carry no strategy tags" in page.content
    response = client.post(
        reverse("training-job-send-back", args=[job.pk]), {"rule": "overlap", "count": 3}
    )
    assert response.status_code == 302
    said = [str(m) for m in response.wsgi_request._messages]
    assert "3 of the student's replies sent to annotators to rank (1 open now)." in said
    assert any("The teacher writes candidates for 2 gaps" in m for m in said)

    students = Candidate.objects.filter(author=Candidate.Author.STUDENT)
    assert students.count() == 3 and {c.text for c in students} == {WEAK}
    provenance = students.first().provenance
    assert provenance["training_job"] == job.pk and provenance["rule"] == "overlap"
    assert (
        provenance["adapter"] == "/runs/job/adapter" and provenance["base_model"] == "tiny-student"
    )
    opened = RankRound.objects.get(turn=with_candidates)
    assert opened.status == RankRound.Status.OPEN and opened.number == 2
    assert opened.keys[:3] == [f"t{with_candidates.pk}", *(f"c{c.pk}" for c in teacher)]
    [dri_id] = queued
    dri = GenerationJob.objects.get(pk=dri_id)
    assert sorted(dri.dri_turn_ids) == sorted(t.pk for _, _, t in picked[1:])
    assert RankRound.objects.filter(status=RankRound.Status.WAITING, dri_job_id=dri.pk).count() == 2

    # Sent twice: nothing more.
    again = client.post(
        reverse("training-job-send-back", args=[job.pk]), {"rule": "overlap", "count": 3}
    )
    assert any("sent back from this job already" in str(m) for m in again.wsgi_request._messages)
    assert RankRound.objects.count() == 3

    # Only the open round can be ranked until the teacher has written its candidates.
    first = person("ann", "annotator")
    assert [len(items) for items in rank_all(first)] == [4]
    with FakeTeacher() as fake:
        settings.TEACHER_MAX_RETRIES = 0
        settings.TEACHER_RESPONSE_FORMAT = "none"
        dri.teacher = {"backend": "http", "model": "fake-teacher", "base_url": fake.url}
        dri.save(update_fields=["teacher"])
        dri = runner.run_inline(dri.pk)
    assert dri.status == GenerationJob.Status.COMPLETED
    assert not RankRound.objects.filter(status=RankRound.Status.WAITING).exists()
    for _, _, turn in picked[1:]:
        shown = RankRound.objects.get(turn=turn).keys
        assert len(shown) == 2 + dri.dri_candidates and shown[-1].startswith("c")
    assert len(rank_all(first)) == 2
    second = person("bo", "annotator")
    assert len(rank_all(second)) == 3
    assert Ranking.objects.filter(round=2).count() == 6

    client.force_login(lead)
    page = client.get(job.get_absolute_url()).content.decode()
    assert "3 replies sent back, 3 ranked by everyone needed." in page

    after = create_release("r-after")
    out = tmp_path / "files"
    write_files(after, out)
    pairs = [
        json.loads(line)
        for split in ("train", "valid", "test")
        for line in (out / "dpo" / f"{split}.jsonl").read_text().splitlines()
    ]
    from_student = [p for p in pairs if "-student-" in p["id"]]
    assert len(from_student) == 3
    assert all(p["rejected"][0]["content"] == WEAK for p in from_student)
    assert all(p["chosen"][0]["content"] != WEAK for p in from_student)
    sft = (out / "sft_dri" / "train.jsonl").read_text()
    assert WEAK not in sft  # a student's reply is never an SFT example
    card = (out / "README.md").read_text()
    assert "3 from rankings of a student's replies sent back to annotators" in card

    history = lineage(released)
    assert history.sent_back == [
        {"kind": "job", "id": job.pk, "rounds": 3, "ranked": 3, "rankings": 6}
    ]
    assert history.took == [{"release": "r-after", "rankings": 6}]
    page = client.get(reverse("curation-release", args=[released.name])).content.decode()
    assert "Their rankings went into" in page and "r-after" in page


def test_with_the_queue_down_the_rounds_open_with_what_there_is(released, monkeypatch, settings):
    from config.celery import BrokerUnreachable

    [(dialogue, message, turn)] = supporter_messages(released, 1)
    job = finished_job(released, [(dialogue, message)])

    def down(job_id: int) -> None:
        raise BrokerUnreachable("refused")

    monkeypatch.setattr("generation.tasks.start_job.delay", down)
    lead = person("lena", "lead")
    outcome = sendback.send_back(job, "overlap", 1, lead)
    assert outcome.waiting and not outcome.opened
    note = sendback.queue_teacher(outcome, lead)
    assert "cannot be reached" in note and "open with the original and the student's reply" in note
    opened = RankRound.objects.get(turn=turn)
    assert opened.status == RankRound.Status.OPEN
    student = Candidate.objects.get(turn=turn, author=Candidate.Author.STUDENT)
    assert opened.keys == [f"t{turn.pk}", f"c{student.pk}"]
    assert GenerationJob.objects.get(pk=opened.dri_job_id).status == GenerationJob.Status.FAILED


def test_only_a_lead_sends_and_only_a_finished_job(client, released):
    [(dialogue, message, _)] = supporter_messages(released, 1)
    job = finished_job(released, [(dialogue, message)])
    url = reverse("training-job-send-back", args=[job.pk])
    watcher = person("walt", "annotator")
    watcher.is_staff = True
    watcher.save()
    from django.contrib.auth.models import Permission

    watcher.user_permissions.add(Permission.objects.get(codename="view_trainingjob"))
    client.force_login(watcher)
    assert client.post(url, {"rule": "overlap", "count": 1}).status_code == 403
    client.force_login(person("lena", "lead"))
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.RUNNING)
    response = client.post(url, {"rule": "overlap", "count": 1})
    assert any("only a finished job" in str(m) for m in response.wsgi_request._messages)
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.DONE)
    response = client.post(url, {"rule": "overlap", "count": 0})
    assert any("a number from 1 to 500" in str(m) for m in response.wsgi_request._messages)
    assert not RankRound.objects.exists()


def test_a_new_round_of_a_turn_ranked_before_is_ranked_again_by_the_same_people(
    client, released, settings
):
    """Round 1 rankings stay as they were; the new round is offered to those who ranked the
    first, and a hold or form of the earlier round cannot be saved into the new one."""
    settings.REVIEWS_PER_DIALOGUE = 1
    [(dialogue, message, turn)] = supporter_messages(released, 1)
    Candidate.objects.create(turn=turn, text="Tell me more about it.", provenance={"job": 1})
    annotator, other = person("ann", "annotator"), person("cy", "annotator")
    assert len(rank_all(annotator)) == 1
    first = Ranking.objects.get()
    assert first.round == 1
    settings.REVIEWS_PER_DIALOGUE = 2
    client.force_login(other)
    url = client.post(reverse("curation-rank-next")).url  # round 1, held
    held = client.get(url).context
    form = {f"rank-{item['key']}": "1" for item in held["items"]} | {"round": held["round"]}
    job = finished_job(released, [(dialogue, message)])
    sendback.send_back(job, "overlap", 1, person("lena", "lead"))
    stale = client.post(url, form)  # the form of round 1, sent after round 2 opened
    assert stale.status_code == 409
    assert b"The replies for this gap changed while you ranked them" in stale.content
    [items] = rank_all(annotator)
    assert len(items) == 3
    assert Ranking.objects.filter(round=2).count() == 1
    assert not Ranking.objects.filter(annotator=other).exists()
    first.refresh_from_db()
    assert len(first.order) == 2  # the first round's ranking is untouched


def test_a_student_reply_at_risk_goes_to_a_lead_before_any_annotator(released):
    from curation.models import SafetyStatus

    [(dialogue, message, turn)] = supporter_messages(released, 1)
    Candidate.objects.create(turn=turn, text="Tell me more about it.", provenance={"job": 1})
    job = finished_job(released, [(dialogue, message)])
    risky = "I want to end my life."
    job.samples = [dict(s, student=risky) if s["student"] == WEAK else s for s in job.samples]
    job.save(update_fields=["samples"])
    outcome = sendback.send_back(job, "overlap", 1, person("lena", "lead"))
    assert len(outcome.opened) == 1
    held = Dialogue.objects.get(pk=dialogue)
    assert held.safety_status == SafetyStatus.FLAGGED
    assert held.safety_notes["source"] == "student reply gate"
    assert rank_all(person("ann", "annotator")) == []  # not offered while a lead holds it


def test_an_experiment_arm_sends_its_weakest_replies(client, released, settings):
    from training import experiments
    from training.models import Experiment

    picked = supporter_messages(released, 2)
    weak_at = {(d, m) for d, m, _ in picked}
    experiment = Experiment.objects.create(
        release=released, arms=["base", "sft"], status=Experiment.Status.DONE,
        report={"base": "tiny-student", "decoding": {"kind": "greedy", "max_new_tokens": 8}},
    )  # fmt: skip
    folder = experiments.run_dir(experiment)
    (folder / "sft-seed0").mkdir(parents=True)
    lines = []
    for item in released.items.order_by("dialogue_id"):
        for message, turn in enumerate(item.snapshot["turns"], start=1):
            if turn["role"] == "supporter":
                reply = WEAK if (item.dialogue_id, message) in weak_at else turn["text"]
                lines.append({"id": str(item.dialogue_id), "turn": message, "context": [],
                              "reference": turn["text"], "base": "Hm.", "sft": reply})  # fmt: skip
    (folder / "replies.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    client.force_login(person("lena", "lead"))
    page = client.get(experiment.get_absolute_url()).content.decode()
    assert "Back to annotators" in page and "experiments keep none" in page
    url = reverse("training-experiment-send-back", args=[experiment.pk])
    response = client.post(url, {"arm": "sft", "rule": "overlap", "count": 2})
    said = [str(m) for m in response.wsgi_request._messages]
    assert "2 of the student's replies sent to annotators to rank (0 open now)." in said
    rounds = RankRound.objects.filter(source__experiment=experiment.pk)
    assert {r.turn_id for r in rounds} == {t.pk for _, _, t in picked}
    assert all(r.training_job_id is None and r.source["arm"] == "sft" for r in rounds)
    student = Candidate.objects.filter(author=Candidate.Author.STUDENT).first()
    assert student.provenance["adapter"] == str(folder / "sft-seed0" / "adapter")
    again = client.post(url, {"arm": "sft", "rule": "overlap", "count": 2})
    assert any(
        "from this experiment's sft arm already" in str(m) for m in again.wsgi_request._messages
    )
    refused = client.post(url, {"arm": "base", "rule": "overlap", "count": 2})
    assert any("not a trained arm" in str(m) for m in refused.wsgi_request._messages)
    assert "2 replies sent back" in client.get(experiment.get_absolute_url()).content.decode()
    [row] = lineage(released).sent_back
    assert (row["kind"], row["id"], row["rounds"]) == ("experiment", experiment.pk, 2)
