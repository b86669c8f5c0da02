"""HttpTeacher through the real `openai` client against a real local server (tests/fake_teacher.py).

No database: these tests exercise the wire protocol, retries, timeouts, n handling, the concurrency
limit and key hygiene. Backoff sleeps are recorded instead of slept, except in the timeout test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from generation.teacher import Completion, HttpTeacher, Reply, Sampling, TeacherError
from tests.fake_teacher import REFUSAL, FakeTeacher

API_KEY = "sk-test-secret-123"
SAMPLING = Sampling(temperature=0.7, top_p=0.9, max_tokens=900, seed=11)

DIALOGUE_PROMPT = [
    {"role": "system", "content": "You write emotional-support dialogues for a dataset."},
    {
        "role": "user",
        "content": (
            "Write one dialogue about Anxiety and Panic as JSON shaped like "
            '{"scene": "...", "description": "...", "content": [{"User": "..."}, '
            '{"AI Strategy": "...", "AI": "..."}]}'
        ),
    },
]
DRI_PROMPT = [
    {"role": "system", "content": "You are a warm, careful supporter."},
    {
        "role": "user",
        "content": "User: I can't sleep before exams.\nAI: [MASKED]\nUser: Thanks, that helps.",
    },
]
SEEKER_TURN_PROMPT = [
    {"role": "system", "content": "You play the seeker: a person who is struggling."},
    {"role": "user", "content": "Supporter: How have you been feeling this week?"},
]
SUPPORTER_TURN_PROMPT = [
    {"role": "system", "content": "You are a kind supporter."},
    {"role": "user", "content": "I lost my job and I feel useless."},
]


@pytest.fixture
def fake() -> Iterator[FakeTeacher]:
    with FakeTeacher() as server:
        yield server
    # HttpTeacher keeps one semaphore per base_url for the life of the process: forget this one,
    # so that a later server that happens to get the same port starts with its own limit.
    for key in [k for k in HttpTeacher._limits if k[0] == server.url]:
        HttpTeacher._limits.pop(key, None)


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
def make_teacher(fake: FakeTeacher, delays: list[float]) -> Callable[..., HttpTeacher]:
    def make(**options: object) -> HttpTeacher:
        settings: dict[str, object] = {"timeout": 10.0, "max_retries": 4, "sleep": delays.append}
        settings.update(options)
        return HttpTeacher(
            base_url=fake.url,
            model="fake-teacher",
            api_key=API_KEY,
            **settings,  # type: ignore[arg-type]
        )

    return make


def _dialogue(text: str) -> dict[str, Any]:
    record = json.loads(text)
    assert set(record) == {"scene", "description", "content"}
    return record


# ---- answers --------------------------------------------------------------------------------


def test_a_valid_dialogue_comes_back_as_json_with_usage(fake, make_teacher, delays):
    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    assert isinstance(reply, Reply)
    assert len(reply.completions) == 1
    assert reply.completions[0].finish_reason == "stop"
    assert not reply.completions[0].truncated
    record = _dialogue(reply.text)
    assert 8 <= len(record["content"]) <= 16
    assert "User" in record["content"][0]
    assert "AI" in record["content"][-1] and "AI Strategy" in record["content"][-1]
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.calls == 1
    assert delays == []


def test_the_request_carries_model_sampling_and_key(fake, make_teacher):
    make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    (body,) = fake.requests
    assert body["model"] == "fake-teacher"
    assert body["messages"] == DIALOGUE_PROMPT
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 900
    assert body["n"] == 1
    assert body["seed"] == 11
    assert fake.request_headers[0]["authorization"] == f"Bearer {API_KEY}"


def test_no_seed_is_sent_when_sampling_has_none(fake, make_teacher):
    make_teacher().chat(DIALOGUE_PROMPT, Sampling())

    assert "seed" not in fake.requests[0]


def test_every_dialogue_request_gets_different_text(fake, make_teacher):
    teacher = make_teacher()
    texts = [teacher.chat(DIALOGUE_PROMPT, SAMPLING).text for _ in range(5)]

    assert len(set(texts)) == 5
    assert all(_dialogue(text)["content"] for text in texts)


@pytest.mark.parametrize(
    ("behaviour", "markers"),
    [
        ("fenced_prose", ["```json", "Here is the dialogue", '"content"']),
        ("wrong_key_case", ['"Scene"', '"Description"', '"Content"', '"user"', '"ai strategy"']),
        ("object_utterances", ['"User": {', '"text"', '"AI": {', '"Response"']),
    ],
)
def test_drifted_shapes_come_back_verbatim(fake, make_teacher, behaviour, markers):
    fake.script = [behaviour]

    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    for marker in markers:
        assert marker in reply.text
    assert reply.completions[0].finish_reason == "stop"


def test_a_truncated_answer_is_marked_length(fake, make_teacher):
    fake.script = ["truncated"]

    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    completion = reply.completions[0]
    assert completion.finish_reason == "length"
    assert completion.truncated
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.text)


def test_invalid_json_is_returned_as_it_came(fake, make_teacher):
    fake.script = ["invalid_json"]

    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    assert reply.completions[0].finish_reason == "stop"
    assert '"content"' in reply.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.text[reply.text.index("{") :])


def test_a_refusal_is_returned_as_text(fake, make_teacher):
    fake.script = ["refusal"]

    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    assert reply.text == REFUSAL
    assert reply.completions[0].finish_reason == "stop"


def test_turns_answer_one_short_plain_sentence(fake, make_teacher):
    teacher = make_teacher()
    seeker = teacher.chat(SEEKER_TURN_PROMPT, SAMPLING).text
    supporter = teacher.chat(SUPPORTER_TURN_PROMPT, SAMPLING).text

    for text in (seeker, supporter):
        assert text and not text.lstrip().startswith(("{", "["))
    assert len(seeker.split()) >= 6
    assert len(supporter.split()) >= 8
    assert seeker != supporter


# ---- retries --------------------------------------------------------------------------------


def test_it_retries_after_429_honouring_retry_after(fake, make_teacher, delays):
    fake.script = ["rate_limited", "valid"]

    reply = make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    _dialogue(reply.text)
    assert len(delays) == 1
    assert delays[0] >= 1.0
    assert reply.usage.calls == 1  # only successful calls count
    assert len(fake.requests) == 2


def test_it_retries_server_errors_then_succeeds(fake, make_teacher, delays):
    fake.script = ["server_error", "server_error", "valid"]

    reply = make_teacher(max_retries=4, backoff_base=0.5).chat(DIALOGUE_PROMPT, SAMPLING)

    _dialogue(reply.text)
    assert len(delays) == 2
    assert 0.0 <= delays[0] <= 0.5  # full jitter under an exponential ceiling
    assert 0.0 <= delays[1] <= 1.0
    assert reply.usage.calls == 1
    assert len(fake.requests) == 3


def test_it_gives_up_after_max_retries_on_server_errors(fake, make_teacher, delays):
    fake.default = "server_error"

    with pytest.raises(TeacherError) as caught:
        make_teacher(max_retries=3).chat(DIALOGUE_PROMPT, SAMPLING)

    assert caught.value.status == 500
    assert "4 attempts" in str(caught.value)
    assert len(fake.requests) == 4
    assert len(delays) == 3


def test_a_bad_request_fails_at_once(fake, make_teacher, delays):
    fake.script = ["bad_request", "valid"]

    with pytest.raises(TeacherError) as caught:
        make_teacher().chat(DIALOGUE_PROMPT, SAMPLING)

    assert caught.value.status == 400
    assert "400" in str(caught.value)
    assert len(fake.requests) == 1
    assert delays == []


def test_a_slow_teacher_times_out_after_retries(fake, make_teacher):
    fake.script = ["slow", "slow"]
    teacher = make_teacher(timeout=1.0, max_retries=1, backoff_base=0.05, sleep=time.sleep)

    started = time.monotonic()
    with pytest.raises(TeacherError) as caught:
        teacher.chat(DIALOGUE_PROMPT, SAMPLING)
    elapsed = time.monotonic() - started

    assert "time" in str(caught.value)
    assert caught.value.status is None
    assert len(fake.requests) == 2
    assert 1.9 <= elapsed < 5.0  # two 1 s timeouts, not two 3 s answers


# ---- n choices ------------------------------------------------------------------------------


def test_n_choices_come_back_distinct(fake, make_teacher):
    reply = make_teacher().chat(DRI_PROMPT, SAMPLING, n=3)

    assert len(reply.completions) == 3
    texts = [c.text for c in reply.completions]
    assert len(set(texts)) == 3
    assert all(len(text.split()) >= 8 for text in texts)
    assert len(fake.requests) == 1
    assert fake.requests[0]["n"] == 3
    assert reply.usage.calls == 1


def test_it_asks_again_when_the_server_ignores_n(fake, make_teacher):
    fake.ignore_n = True
    fake.latency = 0.3  # long enough for the missing choices to be in flight together

    reply = make_teacher().chat(DRI_PROMPT, dataclasses.replace(SAMPLING, seed=7), n=4)

    assert len(reply.completions) == 4
    assert len({c.text for c in reply.completions}) == 4
    assert all(isinstance(c, Completion) for c in reply.completions)
    # The missing three, one request each, at once, each with its own seed.
    assert [body["n"] for body in fake.requests] == [4, 1, 1, 1]
    assert sorted(body["seed"] for body in fake.requests[1:]) == [8, 9, 10]
    assert fake.peak_in_flight == 3
    assert reply.usage.calls == 4
    assert reply.usage.completion_tokens > 0


# ---- key hygiene ----------------------------------------------------------------------------


def test_the_api_key_never_appears_in_logs_or_errors(fake, make_teacher, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "generation"):
        caplog.set_level(logging.DEBUG, logger=name)
    fake.script = ["rate_limited", "server_error", "valid", "bad_request"]
    teacher = make_teacher()

    teacher.chat(DIALOGUE_PROMPT, SAMPLING)
    with pytest.raises(TeacherError) as caught:
        teacher.chat(DIALOGUE_PROMPT, SAMPLING)

    assert fake.request_headers[0]["authorization"] == f"Bearer {API_KEY}"  # it was sent
    assert any(r.levelno == logging.WARNING for r in caplog.records)  # the retries were logged
    assert any(r.name.startswith("openai") and r.levelno == logging.DEBUG for r in caplog.records)
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records
    )
    assert API_KEY not in logged
    assert API_KEY not in caplog.text
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value)


# ---- concurrency ----------------------------------------------------------------------------


def test_concurrency_is_limited_per_endpoint(fake, make_teacher):
    fake.latency = 0.3
    teacher = make_teacher(max_concurrency=2)
    replies: list[Reply] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            replies.append(teacher.chat(SUPPORTER_TURN_PROMPT, SAMPLING))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started

    assert errors == []
    assert len(replies) == 6
    assert elapsed >= 0.85  # three waves of two
    assert fake.peak_in_flight == 2
    assert len(fake.requests) == 6


def test_the_server_answers_concurrent_clients_concurrently(fake, make_teacher):
    fake.latency = 0.3
    teacher = make_teacher(max_concurrency=6)
    threads = [
        threading.Thread(target=teacher.chat, args=(SUPPORTER_TURN_PROMPT, SAMPLING))
        for _ in range(6)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert time.monotonic() - started < 0.85
    assert len(fake.requests) == 6
    assert fake.peak_in_flight == 6


# ---- the fake itself ------------------------------------------------------------------------


def test_the_fake_lists_its_model_and_stops_promptly_with_a_request_in_flight(fake):
    import openai

    client = openai.OpenAI(base_url=fake.url, api_key=API_KEY, max_retries=0, timeout=10)
    assert [model.id for model in client.models.list()] == ["fake-teacher"]

    fake.script = ["slow"]
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            _catch(
                lambda: client.chat.completions.create(
                    model="m",
                    messages=DRI_PROMPT,  # type: ignore[arg-type]
                )
            )
        )
    )
    worker.start()
    while not fake.requests:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    worker.join(timeout=5)

    assert time.monotonic() - started < 1.5
    assert not worker.is_alive()
    assert isinstance(outcome[0], openai.APIConnectionError)
    client.close()


def _catch(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


def test_a_200_that_is_not_a_completion_is_retried_then_reported(fake_teacher_for_malformed):
    fake, teacher = fake_teacher_for_malformed
    fake.script = ["error_body_200", "valid"]
    reply = teacher.chat([{"role": "user", "content": "Hello"}], Sampling())
    assert reply.text
    fake.script = ["error_body_200"] * 3
    with pytest.raises(TeacherError, match="malformed response"):
        teacher.chat([{"role": "user", "content": "Hello"}], Sampling())


def test_an_answer_without_choices_is_an_error(fake_teacher_for_malformed):
    fake, teacher = fake_teacher_for_malformed
    fake.script = ["no_choices"]
    with pytest.raises(TeacherError, match="no choices"):
        teacher.chat([{"role": "user", "content": "Hello"}], Sampling())
    assert len(fake.requests) == 1


@pytest.fixture
def fake_teacher_for_malformed():
    with FakeTeacher() as fake:
        teacher = HttpTeacher(
            fake.url, "fake-teacher", "sk-test", max_retries=2, sleep=lambda s: None
        )
        yield fake, teacher
