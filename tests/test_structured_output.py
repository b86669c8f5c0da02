"""Structured output, detected per endpoint (generation.teacher.HttpTeacher), against local HTTP
servers that behave like each kind (tests/fake_teacher.py): one like llama.cpp (one choice
whatever n; json_schema answered with 500; json_object with a schema honoured), one like OpenAI
(strict json_schema honoured, schemas checked as OpenAI does), one that refuses response_format
with 400, and an old one that ignores it."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from curation.models import Candidate, Dialogue, Scenario
from generation import runner, schemas
from generation.models import GenerationFailure, GenerationJob, new_job
from generation.teacher import (
    SERVER_MAX_CHARS,
    SERVER_SAMPLER,
    HttpTeacher,
    Sampling,
    TeacherConfig,
)
from tests.fake_teacher import FakeTeacher, run_dri_job, strict_problem

STRATEGIES = ["Reflective Statements", "Emotional Validation", "Suggest Options", "Others"]
SCHEMA = schemas.dialogue_schema(STRATEGIES, 8, 30)
PROMPT = [
    {"role": "system", "content": "You write practice conversations."},
    {"role": "user", "content": 'Answer as JSON: {"description": "…", "content": […]}'},
]


def form_of(request: dict) -> str:
    value = request.get("response_format")
    return value["type"] if isinstance(value, dict) else "none"


def teacher_for(fake: FakeTeacher, **options) -> HttpTeacher:
    return HttpTeacher(fake.url, "fake-teacher", "sk-test", max_retries=0, **options)


def test_the_schema_comes_from_the_model_that_validates_answers_and_openai_would_take_it():
    schema = SCHEMA.json_schema
    assert strict_problem(schema) is None
    supporter = schema["$defs"]["SupporterUtterance"]["properties"]["AI Strategy"]
    assert supporter["enum"] == STRATEGIES
    assert (
        schema["properties"]["content"]["minItems"],
        schema["properties"]["content"]["maxItems"],
    ) == (8, 30)
    answer = {
        "description": "d",
        "content": [{"User": "u"}, {"AI Strategy": "Others", "AI": "a"}] * 4,
    }
    assert SCHEMA.model.model_validate(answer)
    with pytest.raises(ValueError):
        SCHEMA.model.model_validate({**answer, "content": answer["content"][:4]})  # too short
    replies = schemas.replies_schema(3).json_schema["properties"]["replies"]
    assert (replies["minItems"], replies["maxItems"]) == (3, 3)
    assert strict_problem(schemas.replies_schema(3).json_schema) is None
    # The local teacher's variant bounds every free string.
    local = schemas.local_schema(SCHEMA, 400)
    assert local["properties"]["description"]["maxLength"] == 400
    assert "maxLength" not in local["$defs"]["SupporterUtterance"]["properties"]["AI Strategy"]


def test_like_llamacpp_json_schema_500_falls_back_to_json_object_and_remembers_it():
    with FakeTeacher(kind="llamacpp") as fake:
        teacher = teacher_for(fake)
        assert teacher.structured_format() == "json_schema"
        reply = teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert reply.response_format == "json_object"
        # 500 twice (a passing fault would not repeat), then json_object with the schema beside it.
        assert [form_of(r) for r in fake.requests] == ["json_schema", "json_schema", "json_object"]
        # It says it is llama.cpp (/models): its grammar gets the tight schema, the utterances
        # alternating from the seeker and every string bounded, as the local teacher's.
        sent = fake.requests[-1]["response_format"]["schema"]
        assert sent == schemas.local_schema(SCHEMA, SERVER_MAX_CHARS, closed=False)
        assert "items" not in sent["properties"]["content"]  # llama.cpp refuses items: false
        content = sent["properties"]["content"]
        assert [item["$ref"].rsplit("/", 1)[1] for item in content["prefixItems"][:3]] == [
            "SeekerUtterance",
            "SupporterUtterance",
            "SeekerUtterance",
        ]
        assert sent["properties"]["description"]["maxLength"] == SERVER_MAX_CHARS
        # And llama.cpp's own sampler against repetition, on every request to it.
        assert all(r["dry_multiplier"] == SERVER_SAMPLER["dry_multiplier"] for r in fake.requests)
        assert all(r["repeat_penalty"] == SERVER_SAMPLER["repeat_penalty"] for r in fake.requests)
        assert SCHEMA.model.model_validate_json(reply.text)
        # Remembered for this endpoint and model: the next request goes straight to json_object.
        assert teacher.structured_format() == "json_object"
        teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert form_of(fake.requests[-1]) == "json_object" and len(fake.requests) == 4
        # Another model at the same address is probed on its own.
        assert HttpTeacher(fake.url, "other-model", "sk-test").structured_format() == "json_schema"


def test_like_openai_strict_json_schema_is_used_and_its_refusal_is_read():
    with FakeTeacher(kind="openai") as fake:
        teacher = teacher_for(fake)
        reply = teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert reply.response_format == "json_schema" and len(fake.requests) == 1
        sent = fake.requests[0]["response_format"]["json_schema"]
        assert sent["strict"] is True and sent["name"] == "extes_dialogue"
        assert sent["schema"] == SCHEMA.json_schema  # the portable one: strict takes no bounds
        assert "dry_multiplier" not in fake.requests[0]  # nor llama.cpp's sampler settings
        assert SCHEMA.model.model_validate_json(reply.text)
        fake.script = ["refusal"]  # OpenAI puts a strict refusal in its own field, content null
        refused = teacher.chat(PROMPT, Sampling(), schema=SCHEMA)
        assert refused.text.startswith("I'm sorry")


def test_a_server_that_refuses_response_format_gets_plain_requests():
    with FakeTeacher(kind="rejects_format") as fake:
        teacher = teacher_for(fake)
        reply = teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert reply.response_format == "none"
        assert [form_of(r) for r in fake.requests] == ["json_schema", "json_object", "none"]
        teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert form_of(fake.requests[-1]) == "none" and len(fake.requests) == 4


def test_a_server_that_ignores_the_form_is_read_as_free_text_and_remembered():
    with FakeTeacher(kind="plain") as fake:
        teacher = teacher_for(fake)
        reply = teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA)
        assert reply.response_format == "none"  # taken, not followed (the answer has a "scene")
        assert teacher.structured_format() == "none"


def test_a_fixed_form_is_the_only_one_sent():
    with FakeTeacher(kind="llamacpp") as fake:
        teacher = teacher_for(fake, response_format="json_object")
        assert (
            teacher.chat(PROMPT, Sampling(max_tokens=2000), schema=SCHEMA).response_format
            == "json_object"
        )
        assert [form_of(r) for r in fake.requests] == ["json_object"]
    with pytest.raises(ValueError, match="unknown response format"):
        HttpTeacher("http://127.0.0.1:9/v1", "m", response_format="grammar")


def test_a_setting_that_is_not_a_form_stops_the_studio_with_the_choices(monkeypatch):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); django.setup()",
        ],
        env={**__import__("os").environ, "EXTES_TEACHER_RESPONSE_FORMAT": "xml"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "auto, json_schema, json_object or none" in result.stderr


@pytest.mark.django_db(transaction=True)  # the job's threads write through their own connections
@pytest.mark.usefixtures("vocabulary_db")
def test_whole_dialogues_against_a_llamacpp_like_server_count_no_failed_attempt(
    settings, client, lead
):
    settings.TEACHER_MAX_RETRIES = 0
    with FakeTeacher(kind="llamacpp") as fake:
        job = new_job(
            GenerationJob.Kind.SELFCHAT,
            teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
            sampling=Sampling(max_tokens=2000).as_dict(),
            scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
            per_scenario=3,
            duplicate_threshold=None,
        )
        job = runner.run_inline(job.pk, concurrency=1)
    assert job.status == GenerationJob.Status.COMPLETED
    assert job.progress()["created"] == 3
    assert not GenerationFailure.objects.filter(job=job).exists()  # the 500s were the probe's
    made = Dialogue.objects.filter(origin="generated")
    assert {d.provenance["response_format"] for d in made} == {"json_object"}
    assert job.progress()["response_formats"] == {"json_object": 3}
    client.force_login(lead)
    page = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
    assert "Structured output: <code>json_object</code> (3 units)" in page


@pytest.mark.django_db(transaction=True)  # the job's threads write through their own connections
def test_dri_against_a_server_that_ignores_n_gets_every_candidate_in_one_request(
    settings, vocabulary_db, seeds
):
    settings.TEACHER_MAX_RETRIES = 0
    seed = Dialogue.objects.filter(origin="seed", safety_status="none").order_by("id").first()
    assert seed is not None
    Dialogue.objects.filter(pk=seed.pk).update(status="accepted")
    with FakeTeacher(kind="llamacpp") as fake:
        job = run_dri_job(fake.url, candidates=3)
        dri = [r for r in fake.requests if "[MASKED]" in r["messages"][-1]["content"]]
    assert job.status == GenerationJob.Status.COMPLETED
    assert Candidate.objects.count() == 3
    # The probe (500, 500), then one json_object request asking for three replies.
    assert [form_of(r) for r in dri] == ["json_schema", "json_schema", "json_object"]
    assert "Write 3 different supporter replies" in dri[-1]["messages"][-1]["content"]
    assert {c.provenance["response_format"] for c in Candidate.objects.all()} == {"json_object"}


def test_a_cut_off_structured_answer_is_truncated_not_invalid():
    from generation.selfchat import Failure, read_structured

    whole = json.dumps({"description": "d", "content": [{"User": "u"}] * 8})
    with pytest.raises(Failure) as caught:
        read_structured(whole[:30], SCHEMA.model, truncated=True)
    assert caught.value.failure_class == "truncated"
    assert (
        read_structured("Sure, here it is: …", SCHEMA.model) is None
    )  # free text: read tolerantly


# ---- the local teacher: constrained decoding ---------------------------------------------------

from tests import test_training_sft  # noqa: E402

tokenizer = test_training_sft.tokenizer
smollm2_folder = test_training_sft.smollm2_folder
tiny_base = test_training_sft.tiny_base


def test_the_local_teacher_writes_schema_valid_json_under_its_grammar(tiny_base, monkeypatch):
    """A random 2-layer model writes garbage, but garbage in the schema's shape: the grammar
    (generation.constrained) allows nothing else."""
    from generation import localmodel, teacher

    monkeypatch.setattr(teacher, "LOCAL_MAX_CHARS", 12)  # short strings: the test stays quick
    local = teacher.LocalTeacher.__new__(teacher.LocalTeacher)
    local._runner = localmodel.LocalRunner(tiny_base)
    assert local.structured_format() == "grammar"
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=400, seed=3)
    reply = local.chat(PROMPT, sampling, schema=schemas.replies_schema(2))
    assert reply.response_format == "grammar"
    assert reply.completions[0].finish_reason == "stop"
    replies = schemas.replies_model(2).model_validate_json(reply.text).model_dump()["replies"]
    assert len(replies) == 2 and all(2 <= len(r) <= 12 for r in replies)
    reply = local.chat(PROMPT, sampling, schema=SCHEMA)
    assert SCHEMA.model.model_validate_json(reply.text)
    # Without a schema the same teacher writes free text.
    assert local.chat(PROMPT, Sampling(max_tokens=5, seed=1)).response_format == "none"


def test_llamacpp_is_told_by_its_models_list_once_and_gets_its_sampler_on_plain_requests_too():
    turn = [{"role": "user", "content": "Say something kind."}]
    with FakeTeacher(kind="llamacpp") as fake:
        teacher = teacher_for(fake)
        teacher.chat(turn, Sampling())
        teacher.chat(turn, Sampling())
    # A turn (no schema) still gets llama.cpp's sampler settings against repetition.
    assert all(r["dry_multiplier"] == SERVER_SAMPLER["dry_multiplier"] for r in fake.requests)
    assert HttpTeacher._llamacpp_servers == {fake.url: True}
    with FakeTeacher() as plain:
        teacher_for(plain).chat(turn, Sampling())
    assert "dry_multiplier" not in plain.requests[0] and "repeat_penalty" not in plain.requests[0]
    assert HttpTeacher._llamacpp_servers[plain.url] is False


def test_an_endpoint_that_cannot_be_reached_is_asked_who_it_is_again_later():
    with FakeTeacher(kind="llamacpp") as fake:
        url = fake.url
    teacher = HttpTeacher(url, "fake-teacher", "sk-test", max_retries=0)
    assert teacher._llamacpp() is False  # down: the portable request
    assert url not in HttpTeacher._llamacpp_servers  # and not remembered as "not llama.cpp"
