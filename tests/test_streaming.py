"""Streamed teacher answers: a running unit's tokens reach the job page while the teacher writes.

The HTTP teacher streams when it has somewhere to report progress (a dialogue being written),
reading the server-sent events of OpenAI's chunk format; a server that refuses streaming, or
answers a streamed request with a whole JSON body, is asked again at once without it and never
streamed to again. The local HTTP server (tests/fake_teacher.py) streams the way real servers
do: chunked transfer, one event per word, then a usage chunk and [DONE]."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curation.models import Dialogue, Scenario
from generation import runner, schemas
from generation.models import GenerationJob, GenerationUnit, new_job
from generation.teacher import STREAM_AFTER_SECONDS, HttpTeacher, Sampling, TeacherConfig
from tests.fake_teacher import FakeTeacher

PROMPT = [
    {"role": "system", "content": "You write practice conversations."},
    {"role": "user", "content": 'Answer as JSON: {"description": "…", "content": […]}'},
]
SCHEMA = schemas.dialogue_schema(["Reflective Statements", "Emotional Validation", "Others"], 8, 30)


def teacher_for(fake: FakeTeacher, **options) -> HttpTeacher:
    return HttpTeacher(fake.url, "fake-teacher", "sk-test", max_retries=0, **options)


def test_a_streamed_answer_is_the_same_answer_and_progress_hears_it_grow():
    heard: list[int] = []
    with FakeTeacher() as fake:
        teacher = teacher_for(fake)
        streamed = teacher.chat(PROMPT, Sampling(seed=3), progress=heard.append)
        plain = teacher.chat(PROMPT, Sampling(seed=3))
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert "stream" not in fake.requests[1]  # no progress to report: asked plainly
    text = streamed.completions[0].text
    assert text.startswith("{") and len(text.split()) > 50
    words = len(text.split())
    assert heard == sorted(heard) and heard[-1] >= words and len(set(heard)) > 20
    assert not streamed.completions[0].truncated
    # The usage chunk's counts, as the server reported them.
    assert streamed.usage.completion_tokens > 0 and streamed.usage.prompt_tokens > 0
    assert streamed.usage.calls == 1 and plain.usage.calls == 1
    assert plain.completions[0].text != ""


def test_streamed_choices_come_apart_and_a_cut_answer_is_still_seen_as_cut():
    with FakeTeacher() as fake:
        teacher = teacher_for(fake)
        reply = teacher.chat(PROMPT, Sampling(), n=3, progress=lambda tokens: None)
        fake.script = ["truncated"]
        cut = teacher.chat(PROMPT, Sampling(), progress=lambda tokens: None)
    assert len(reply.completions) == 3 and len({c.text for c in reply.completions}) == 3
    assert cut.completions[0].truncated


def test_structured_output_is_streamed_too_and_falls_back_like_a_plain_request():
    with FakeTeacher(kind="llamacpp") as fake:
        teacher = teacher_for(fake)
        reply = teacher.chat(PROMPT, Sampling(), schema=SCHEMA, progress=lambda tokens: None)
    forms = [r.get("response_format", {}).get("type") for r in fake.requests]
    assert forms == ["json_schema", "json_schema", "json_object"]
    assert all(r["stream"] for r in fake.requests)
    assert reply.response_format == "json_object"
    SCHEMA.model.model_validate_json(reply.completions[0].text)


@pytest.mark.parametrize("streaming", ["refuse", "ignore"])
def test_a_server_that_does_not_stream_is_asked_plainly_at_once_and_remembered(streaming):
    heard: list[int] = []
    with FakeTeacher(streaming=streaming) as fake:
        teacher = teacher_for(fake)
        first = teacher.chat(PROMPT, Sampling(), progress=heard.append)
        HttpTeacher._last_seconds[(fake.url, "fake-teacher")] = 60.0  # slow: worth streaming
        second = teacher.chat(PROMPT, Sampling(), progress=heard.append)
    # Streamed once, asked again at once without it (no retry, no failed attempt), then never
    # streamed to again.
    assert [r.get("stream", False) for r in fake.requests] == [True, False, False]
    assert first.completions[0].text and second.completions[0].text
    assert first.usage.calls == 1
    assert heard == []  # nothing streamed, so nothing heard


def test_a_stream_that_breaks_off_is_a_teacher_error_after_the_retries():
    from generation.teacher import TeacherError

    with FakeTeacher(chunk_delay=0.05) as fake:
        teacher = teacher_for(fake, timeout=5)
        heard: list[int] = []

        def hang_up(tokens: int) -> None:
            heard.append(tokens)
            if tokens >= 3:
                fake.stop()  # the server goes away in the middle of the answer

        with pytest.raises(TeacherError) as caught:
            teacher.chat(PROMPT, Sampling(), progress=hang_up)
    assert heard and heard[-1] >= 3
    assert "broke off" in str(caught.value), caught.value


def test_only_an_endpoint_that_answers_slowly_is_streamed_to():
    # The job page reads tokens once a second: a quicker answer is not worth a stream's CPU.
    with FakeTeacher() as quick:
        teacher = teacher_for(quick)
        for _ in range(3):
            teacher.chat(PROMPT, Sampling(), progress=lambda tokens: None)
    assert [r.get("stream", False) for r in quick.requests] == [True, False, False]
    with FakeTeacher(latency=STREAM_AFTER_SECONDS + 0.1) as slow:
        teacher = teacher_for(slow)
        for _ in range(2):
            teacher.chat(PROMPT, Sampling(), progress=lambda tokens: None)
    assert [r.get("stream", False) for r in slow.requests] == [True, True]


def test_streaming_can_be_turned_off():
    with FakeTeacher() as fake:
        teacher = teacher_for(fake, stream=False)
        teacher.chat(PROMPT, Sampling(), progress=lambda tokens: None)
    assert "stream" not in fake.requests[0]


@pytest.mark.usefixtures("vocabulary_db", "seeds")
def test_the_job_page_shows_the_tokens_of_a_dialogue_being_written(client, admin_user, settings):
    settings.TEACHER_MAX_RETRIES = 0
    client.force_login(admin_user)
    pages: list[str] = []
    with FakeTeacher(kind="openai", chunk_delay=0.004) as fake:
        job = new_job(
            GenerationJob.Kind.SELFCHAT,
            teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
            sampling=Sampling(max_tokens=2000).as_dict(),
            scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
            per_scenario=1,
            duplicate_threshold=None,
        )
        (unit_id,) = runner.start(job.pk)
        real = GenerationUnit.record_tokens

        def record_tokens(unit, count):
            real(unit, count)
            # What a lead refreshing the page sees while the answer is being written.
            page = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
            pages.append(page)

        GenerationUnit.record_tokens = record_tokens  # type: ignore[method-assign]
        try:
            runner.process_unit(unit_id, "w")
        finally:
            GenerationUnit.record_tokens = real  # type: ignore[method-assign]
    assert fake.requests[0]["stream"] is True
    live = [p for p in pages if "writing an answer:" in p]
    assert len(live) >= 2  # more than once a second is not written, but the answer takes longer
    assert "tokens so far" in live[-1]
    unit = GenerationUnit.objects.get(pk=unit_id)
    assert unit.status == "done" and unit.live_tokens == 0  # cleared once the answer is in
    assert unit.completion_tokens > 0
    assert Dialogue.objects.filter(origin="generated").count() == 1
