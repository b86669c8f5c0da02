"""Generation jobs run in-process (`--inline`) against the real HTTP fake teacher."""

from __future__ import annotations

import random
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from curation.models import Candidate, Dialogue, Event, Scenario, Turn
from curation.parsing import ParsedDialogue, ParsedTurn
from generation import runner
from generation.models import GenerationFailure, GenerationJob, GenerationUnit, new_job
from generation.teacher import Sampling, TeacherConfig
from tests.fake_teacher import FakeTeacher, run_dri_job

pytestmark = pytest.mark.usefixtures("vocabulary_db", "seeds")


@pytest.fixture
def fake(settings):
    settings.TEACHER_MAX_RETRIES = 0
    with FakeTeacher() as server:
        yield server


def selfchat_job(fake, scenarios=("Anxiety and Panic",), **options) -> GenerationJob:
    options.setdefault("duplicate_threshold", None)
    return new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
        sampling=Sampling(max_tokens=2000).as_dict(),
        scenarios=[Scenario.objects.get(name=n) for n in scenarios],
        **options,
    )


def test_every_failure_class_is_counted_and_each_unit_still_delivers(fake):
    fake.script = [
        "refusal",
        "fenced_prose",
        "truncated",
        "invalid_json",
        "wrong_key_case",
        "server_error",
        "object_utterances",
        "valid",
    ]
    job = runner.run_inline(selfchat_job(fake, per_scenario=4).pk, concurrency=1)
    assert job.status == GenerationJob.Status.COMPLETED
    progress = job.progress()
    assert progress["created"] == 4
    assert progress["failures"] == {
        "invalid_json": 1,
        "truncated": 1,
        "refusal": 1,
        "http_error": 1,
    }
    assert progress["calls"] == 7  # the failed HTTP request is not a completed call
    assert progress["prompt_tokens"] > 0 and progress["completion_tokens"] > 0
    refusal = job.failures.get(failure_class="refusal")
    assert refusal.raw_output.startswith("I'm sorry")
    assert Dialogue.objects.filter(origin="generated").count() == 4


def test_generated_dialogues_wait_for_review_with_their_provenance(fake):
    job = runner.run_inline(selfchat_job(fake, per_scenario=2).pk, concurrency=2)
    dialogues = Dialogue.objects.filter(origin="generated")
    assert dialogues.count() == 2
    for dialogue in dialogues:
        assert dialogue.status == Dialogue.Status.PENDING
        assert dialogue.scenario.name == "Anxiety and Panic"
        assert dialogue.source_file == f"generation job {job.pk}"
        p = dialogue.provenance
        assert p["job"] == job.pk and p["round"] == 1 and p["attempts"] == 1
        assert p["teacher"] == {"backend": "http", "model": "fake-teacher", "base_url": fake.url}
        assert p["prompt_version"] == job.prompt_version and p["prompt_version"].startswith(
            "dialogue-"
        )
        assert p["sampling"]["max_tokens"] == 2000
        assert p["usage"]["calls"] == 1
        assert dialogue.turns.filter(role="supporter", strategy__taxonomy="extes").exists()
        assert dialogue.raw["output"]
    # The job's prompt showed a seed of the scenario.
    prompt = fake.requests[0]["messages"][1]["content"]
    seed = Dialogue.objects.filter(origin="seed", scenario__name="Anxiety and Panic").first()
    assert seed.description in prompt


def test_rounds_plan_new_units_and_later_rounds_see_accepted_dialogues(fake):
    job = runner.run_inline(selfchat_job(fake, per_scenario=2, rounds=2).pk, concurrency=2)
    assert job.status == GenerationJob.Status.COMPLETED
    assert list(job.units.values_list("round", flat=True).order_by("round")) == [1, 1, 2, 2]
    accepted = Dialogue.objects.filter(origin="generated").first()
    accepted.status = Dialogue.Status.ACCEPTED
    accepted.save()
    summary = job.rounds_summary()
    assert [r["created"] for r in summary] == [2, 2]
    assert sum(r["accepted"] for r in summary) == 1

    scenario = accepted.scenario
    job.examples_per_prompt = 100
    runner.clear_caches()  # workers see newly accepted dialogues after EXAMPLES_TTL seconds
    round1 = {e["description"] for e in runner._examples(scenario, job, 1, random.Random(0))}
    round2 = {e["description"] for e in runner._examples(scenario, job, 2, random.Random(0))}
    assert accepted.description not in round1
    assert accepted.description in round2
    assert round1 < round2


def test_near_duplicates_are_filtered_with_embeddings(fake):
    first = runner.run_inline(selfchat_job(fake, per_scenario=1).pk)
    made = Dialogue.objects.get(origin="generated")
    # Same dialogue, one word changed: not an exact copy, but nearly the same text.
    turn = made.turns.get(index=0)
    turn.text = turn.text + " Honestly."
    turn.save()
    Dialogue.objects.filter(pk=made.pk).update(content_hash="changed")
    assert first.status == GenerationJob.Status.COMPLETED

    with FakeTeacher() as again:  # serves the same text again, from the start of its pool
        job = runner.run_inline(selfchat_job(again, per_scenario=1, duplicate_threshold=0.92).pk)
    failure = job.failures.get()
    assert failure.failure_class == "duplicate"
    assert f"dialogue #{made.pk}" in failure.detail
    assert job.progress()["created"] == 1  # the next attempt was a different dialogue


def test_exact_copies_are_duplicates_even_without_embeddings(fake):
    runner.run_inline(selfchat_job(fake, per_scenario=1).pk)
    with FakeTeacher() as again:
        job = runner.run_inline(selfchat_job(again, per_scenario=1).pk)
    assert job.failures.get().failure_class == "duplicate"
    assert Dialogue.objects.filter(origin="generated").count() == 2


def test_a_unit_runs_once_however_often_it_is_delivered(fake):
    job = selfchat_job(fake, per_scenario=1)
    (unit_id,) = runner.start(job.pk)
    assert runner.start(job.pk) == []  # a second start plans nothing
    runner._plan_round(job, 1)
    assert job.units.count() == 1
    runner.process_unit(unit_id, "worker-a")
    runner.process_unit(unit_id, "worker-b")
    assert Dialogue.objects.filter(origin="generated").count() == 1
    assert len(fake.requests) == 1


def test_a_stale_claim_passes_to_another_worker_and_the_first_result_is_dropped(fake, settings):
    settings.GENERATION_LEASE_SECONDS = 60
    job = selfchat_job(fake, per_scenario=1)
    (unit_id,) = runner.start(job.pk)
    first = GenerationUnit.claim(unit_id, "worker-a")
    assert GenerationUnit.claim(unit_id, "worker-b") is None  # lease still held
    GenerationUnit.objects.filter(pk=unit_id).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    assert runner.stale_units(job.pk) == [unit_id]
    second = GenerationUnit.claim(unit_id, "worker-b")
    assert second is not None
    assert not first.complete("done", created=1, attempts=1, usage={})
    assert second.complete("done", created=1, attempts=1, usage={})
    assert GenerationUnit.objects.get(pk=unit_id).claimed_by == "worker-b"


def test_cancel_stops_pending_units_and_keeps_what_was_made(fake):
    job = selfchat_job(fake, per_scenario=3)
    ids = runner.start(job.pk)
    runner.process_unit(ids[0], "w")
    assert job.request_cancel()
    assert not job.request_cancel()
    assert runner.process_unit(ids[1], "w") == []
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.CANCELLED
    assert set(job.units.values_list("status", flat=True)) == {"done", "cancelled"}
    assert Dialogue.objects.filter(origin="generated").count() == 1


def test_crisis_disclosures_are_flagged_for_leads(fake):
    job = selfchat_job(fake, per_scenario=1)
    (unit_id,) = runner.start(job.pk)
    unit = GenerationUnit.claim(unit_id, "w")
    parsed = ParsedDialogue(
        scene="Depression and Low Mood",
        description="I lost my job and my partner in the same month.",
        turns=[
            ParsedTurn(role="seeker", text="Honestly everyone would be better off without me."),
            ParsedTurn(
                role="supporter",
                text="I'm really glad you told me. Are you safe right now?",
                strategy="Clarification",
            ),
        ],
        taxonomy="extes",
    )
    safety_fields = runner._safety_fields(parsed)  # before the write, outside its lock
    dialogue = runner._store_dialogue(parsed, "{}", unit.scenario, job, unit, {}, safety_fields)
    assert dialogue.crisis_flagged
    assert dialogue.safety_notes["source"] == "generation gate"
    assert dialogue.safety_notes["categories"]
    assert dialogue.safety_notes["screened"]["layers"]  # the whole gate ran, not the rules alone
    flagged = dialogue.events.filter(action=Event.Action.CRISIS_FLAGGED)
    assert flagged.get().after["source"] == "generation gate"


def test_dri_job_writes_candidates_for_masked_turns(fake, settings):
    settings.TEACHER_RESPONSE_FORMAT = "none"  # one reply sampled n times (structured: below)
    accepted = list(Dialogue.objects.filter(origin="seed").order_by("id")[:2])
    Dialogue.objects.filter(pk__in=[d.pk for d in accepted]).update(status="accepted")
    job = run_dri_job(fake.url, concurrency=2)
    assert job.status == GenerationJob.Status.COMPLETED
    candidates = Candidate.objects.select_related("turn")
    assert candidates.count() == 6
    assert {c.turn.dialogue_id for c in candidates} == {d.pk for d in accepted}
    for candidate in candidates:
        assert candidate.turn.role == Turn.Role.SUPPORTER
        assert candidate.strategy_id == candidate.turn.strategy_id
        assert candidate.text != candidate.turn.text
        assert candidate.provenance["job"] == job.pk
        assert candidate.provenance["prompt_version"].startswith("dri-")
        assert candidate.provenance["right_context"] is True
    dri_requests = [r for r in fake.requests if "[MASKED]" in r["messages"][-1]["content"]]
    assert len(dri_requests) == 2 and all(r["n"] == 3 for r in dri_requests)


def test_dri_with_embedding_filter_and_no_right_context(fake, settings):
    settings.TEACHER_RESPONSE_FORMAT = "none"  # one reply sampled n times (structured: below)
    seed = Dialogue.objects.filter(origin="seed").order_by("id").first()
    Dialogue.objects.filter(pk=seed.pk).update(status="accepted")
    job = new_job(
        GenerationJob.Kind.DRI,
        teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
        sampling=Sampling().as_dict(),
        dri_candidates=2,
        dri_mask="all",
        dri_right_context=False,
        duplicate_threshold=0.92,
    )
    job = runner.run_inline(job.pk)
    supporter_turns = seed.turns.filter(role="supporter").count()
    assert job.units.count() == supporter_turns
    assert Candidate.objects.count() == 2 * supporter_turns
    masked = fake.requests[0]["messages"][-1]["content"]
    assert masked.rstrip().endswith("Write only the reply.")
    conversation = masked.split("\n\n")[1]
    assert conversation.splitlines()[-1] == "Supporter: [MASKED]"  # nothing after the gap shown


def test_generate_command_inline_prints_the_summary(fake, monkeypatch):
    monkeypatch.setenv("EXTES_TEACHER_BASE_URL", fake.url)
    monkeypatch.setenv("EXTES_TEACHER_MODEL", "fake-teacher")
    fake.script = ["refusal"]
    out = StringIO()
    call_command(
        "generate",
        scenario=["anxiety and panic"],
        count=2,
        inline=True,
        duplicate_threshold=0,
        stdout=out,
    )
    text = out.getvalue()
    assert "teacher http fake-teacher at " + fake.url in text
    assert "created: 2 dialogues" in text
    assert "refusal: 1" in text
    assert "sk-" not in text


def test_inpaint_command_needs_dialogues_of_the_status(fake, monkeypatch):
    from django.core.management import CommandError

    monkeypatch.setenv("EXTES_TEACHER_BASE_URL", fake.url)
    with pytest.raises(CommandError, match="no accepted dialogues"):
        call_command("inpaint", count=1, inline=True)


def test_failure_rows_name_their_unit_and_attempt(fake):
    fake.script = ["invalid_json", "refusal"]
    job = runner.run_inline(selfchat_job(fake, per_scenario=1).pk)
    assert list(
        GenerationFailure.objects.filter(job=job)
        .order_by("attempt")
        .values_list("attempt", "failure_class")
    ) == [(1, "invalid_json"), (2, "refusal")]


def test_starting_a_missing_job_does_nothing():
    assert runner.start(999_999) == []


def test_a_crashing_unit_is_recorded_and_the_job_still_ends(fake, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("bug in the prompt builder")

    monkeypatch.setattr(runner.selfchat, "write_dialogue", explode)
    job = runner.run_inline(selfchat_job(fake, per_scenario=2).pk)
    assert job.status == GenerationJob.Status.FAILED
    assert "every unit failed" in job.error
    errors = set(job.units.values_list("error", flat=True))
    assert errors == {"RuntimeError: bug in the prompt builder"}


class Watching:
    """The job's real teacher; before each request it notes what the job page would read."""

    def __init__(self, teacher, unit_id: int) -> None:
        self.teacher, self.unit_id = teacher, unit_id
        self.backend, self.model = teacher.backend, teacher.model
        self.seen: list[dict] = []

    def structured_format(self):
        return self.teacher.structured_format()

    def chat(self, messages, sampling, n=1, schema=None, progress=None):
        unit = GenerationUnit.objects.get(pk=self.unit_id)
        self.seen.append(
            {
                "calls": unit.calls,
                "tokens": unit.tokens,
                "turns": unit.turns,
                "last_call_at": unit.last_call_at,
                "job_calls": unit.job.progress()["calls"],
            }
        )
        return self.teacher.chat(messages, sampling, n, schema, progress)


def test_a_running_unit_counts_calls_tokens_and_turns_as_it_goes(fake, monkeypatch):
    job = selfchat_job(fake, per_scenario=1, mode=GenerationJob.Mode.TURNS, exchanges=2)
    (unit_id,) = runner.start(job.pk)
    real = runner.get_teacher
    watching: list[Watching] = []

    def get_teacher(config):
        watching.append(Watching(real(config), unit_id))
        return watching[-1]

    monkeypatch.setattr(runner, "get_teacher", get_teacher)
    runner.process_unit(unit_id, "w")
    seen = watching[0].seen
    # The situation, then two exchanges of a seeker and a supporter turn: one request each.
    assert [s["calls"] for s in seen] == [0, 1, 2, 3, 4]
    assert [s["job_calls"] for s in seen] == [0, 1, 2, 3, 4]
    assert [s["turns"] for s in seen] == [0, 0, 1, 2, 3]
    tokens = [s["tokens"] for s in seen]
    assert tokens[0] == 0 and tokens == sorted(set(tokens))
    answers = [s["last_call_at"] for s in seen]
    assert answers[0] is None and None not in answers[1:] and answers[1:] == sorted(answers[1:])
    unit = GenerationUnit.objects.get(pk=unit_id)
    assert (unit.status, unit.calls, unit.turns) == ("done", 5, 4)
    assert unit.tokens > tokens[-1] and unit.last_call_at > answers[-1]


def test_a_new_claim_starts_its_live_counts_afresh(fake):
    job = selfchat_job(fake, per_scenario=1)
    (unit_id,) = runner.start(job.pk)
    GenerationUnit.objects.filter(pk=unit_id).update(
        status="running", calls=3, turns=5, last_call_at=timezone.now(), activity="busy"
    )
    GenerationUnit.objects.filter(pk=unit_id).update(
        heartbeat_at=timezone.now() - timedelta(days=1)
    )
    unit = GenerationUnit.claim(unit_id, "worker-b")
    assert (unit.calls, unit.turns, unit.last_call_at, unit.activity) == (0, 0, None, "")


def test_a_crashed_unit_keeps_what_it_spent(fake, monkeypatch):
    def crash_after_one_call(teacher, *args, on_call, **kwargs):
        on_call(teacher.chat([{"role": "user", "content": "hello"}], Sampling()).usage, None)
        raise RuntimeError("bug after the first call")

    monkeypatch.setattr(runner.selfchat, "write_dialogue", crash_after_one_call)
    job = runner.run_inline(selfchat_job(fake, per_scenario=1).pk)
    unit = job.units.get()
    assert (unit.status, unit.calls) == ("failed", 1) and unit.tokens > 0
    assert job.progress()["calls"] == 1


def test_the_unit_says_while_the_local_model_is_prepared(fake, monkeypatch):
    from generation import teacher as teachers

    job = new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher=TeacherConfig("local", teachers.LOCAL_MODEL_NAME).as_dict(),
        sampling=Sampling().as_dict(),
        scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
        mode=GenerationJob.Mode.TURNS,
        exchanges=2,
        duplicate_threshold=None,
        per_scenario=2,
    )
    ids = runner.start(job.pk)
    monkeypatch.setattr(teachers, "_cache", {})  # no local model loaded in this process yet
    during: list[str] = []

    def load(config):  # stands in for loading SmolLM2: the fake HTTP teacher answers instead
        during.append(GenerationUnit.objects.get(pk=ids[0]).activity)
        teachers._cache[teachers.cache_key(config)] = teachers.HttpTeacher(fake.url, "fake-teacher")
        return teachers._cache[teachers.cache_key(config)]

    monkeypatch.setattr(runner, "get_teacher", load)
    runner.process_unit(ids[0], "w")
    assert during == [runner.PREPARING_LOCAL_MODEL]
    assert GenerationUnit.objects.get(pk=ids[0]).activity == ""
    monkeypatch.setattr(
        runner, "get_teacher", lambda config: teachers._cache[teachers.cache_key(config)]
    )
    monkeypatch.setattr(runner.GenerationUnit, "set_activity", None)  # loaded: not called again
    runner.process_unit(ids[1], "w")
    assert job.units.filter(status="done").count() == 2


def test_the_crisis_gate_runs_before_the_write_not_inside_it(fake, monkeypatch, settings):
    """SQLite has one writer: the classifier (tens of ms a dialogue) must not hold it."""
    from django.db import connection

    from generation import crisis_gate
    from generation import models as generation_models

    settings.TEACHER_RESPONSE_FORMAT = "none"
    seen: list[tuple[int, bool]] = []
    real = crisis_gate.check

    def check(texts, layers=None):
        seen.append((generation_models._sqlite_writer.locked(), connection.in_atomic_block))
        return real(texts, layers)

    monkeypatch.setattr(crisis_gate, "check", check)
    job = runner.run_inline(selfchat_job(fake, per_scenario=2).pk, concurrency=1)
    assert job.progress()["created"] == 2
    accepted = Dialogue.objects.filter(origin="generated").first()
    Dialogue.objects.filter(pk=accepted.pk).update(status="accepted")
    dri = run_dri_job(fake.url, concurrency=1)
    assert dri.status == GenerationJob.Status.COMPLETED
    assert len(seen) >= 3  # two dialogues, then the DRI candidates
    assert seen == [(False, False)] * len(seen)  # never under writing(), nor in a transaction
    for dialogue in Dialogue.objects.filter(origin="generated"):
        assert dialogue.safety_status == "none"
        assert dialogue.safety_notes["screened"]["layers"] == list(crisis_gate.screen_layers())


def test_a_unit_that_crashes_after_a_request_keeps_its_counts(fake, monkeypatch):
    """The live counts wait for the next request; a crash before it still records them."""
    from generation.teacher import Usage

    def write_then_crash(teacher, spec, vocab, sampling, *, on_call, **kwargs):
        on_call(Usage(calls=1, prompt_tokens=120, completion_tokens=30), None)
        raise RuntimeError("bug after the answer")

    monkeypatch.setattr(runner.selfchat, "write_dialogue", write_then_crash)
    job = selfchat_job(fake, per_scenario=1)
    (unit_id,) = runner.start(job.pk)
    runner.process_unit(unit_id, "w")
    unit = GenerationUnit.objects.get(pk=unit_id)
    assert unit.status == "failed" and unit.error == "RuntimeError: bug after the answer"
    assert (unit.calls, unit.prompt_tokens, unit.completion_tokens) == (1, 120, 30)
    assert unit.last_call_at is not None


def test_a_worker_process_takes_its_torch_threads_from_the_setting(settings):
    import torch

    from generation import tasks

    before = torch.get_num_threads()
    try:
        settings.WORKER_TORCH_THREADS = 1
        tasks._torch_threads()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        settings.WORKER_TORCH_THREADS = 0  # torch's default: left alone
        tasks._torch_threads()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_with_the_screen_in_a_worker_generated_dialogues_wait_and_are_screened_together(
    fake, monkeypatch, settings, redis_url
):
    """EXTES_SAFETY_SCREEN=worker (the default): the generating worker leaves the classifier to
    the screening worker, which takes every dialogue waiting in one batch, outside any
    transaction; until then none is reviewable."""
    from django.db import connection

    from curation.tasks import screen_dialogues_task
    from generation import crisis_gate

    settings.SAFETY_SCREEN = "worker"
    settings.REDIS_URL = redis_url
    settings.TEACHER_RESPONSE_FORMAT = "none"
    sent: list[list[int] | None] = []
    monkeypatch.setattr(
        "curation.tasks.screen_dialogues_task.delay", lambda ids=None: sent.append(ids)
    )
    one_at_a_time: list[list[str]] = []
    batches: list[tuple[int, bool]] = []
    real_many = crisis_gate.check_many

    def check_many(groups, layers=None):
        batches.append((len(groups), connection.in_atomic_block))
        return real_many(groups, layers)

    monkeypatch.setattr(
        crisis_gate, "check", lambda texts, layers=None: one_at_a_time.append(texts)
    )
    monkeypatch.setattr(crisis_gate, "check_many", check_many)
    job = runner.run_inline(selfchat_job(fake, per_scenario=3).pk, concurrency=1)
    assert job.progress()["created"] == 3
    generated = Dialogue.objects.filter(origin="generated")
    assert {d.safety_status for d in generated} == {"screening"}
    assert not generated.unflagged().exists(), "no annotator sees one before the screen"
    assert not one_at_a_time, "the generating worker ran no classifier"
    assert sent == [[d.pk] for d in generated.order_by("id")], "a message per stored dialogue"

    assert screen_dialogues_task(sent[0]) == "screened 3: 0 flagged, 3 passed"
    assert batches == [(3, False)], "one batch, outside any transaction"
    assert {d.safety_status for d in generated.all()} == {"none"}
    assert all(d.safety_notes["screened"]["layers"] for d in generated.all())
    assert screen_dialogues_task(sent[1]) == "screened 0: 0 flagged, 0 passed"
