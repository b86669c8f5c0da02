"""Self-chat and DRI logic with a scripted teacher (no HTTP, no database)."""

from __future__ import annotations

import json
import random

import pytest

from curation.parsing import Vocabulary
from curation.vocabulary import EXTES_STRATEGIES
from generation import inpainting, selfchat
from generation.selfchat import DialogueSpec, Failure, TurnsSpec
from generation.teacher import Completion, Reply, Sampling, TeacherError, Usage

VOCAB = Vocabulary.from_specs()
STRATEGIES = [(s.name, s.definition) for s in EXTES_STRATEGIES]
SPEC = DialogueSpec(
    "Anxiety and Panic", STRATEGIES, [{"scene": "Anxiety and Panic", "content": []}], 4, 12
)


def dialogue_json(turns: int = 6, **changes) -> str:
    content = []
    for i in range(turns):
        if i % 2 == 0:
            content.append({"User": f"Seeker line {i} about the panic on the train."})
        else:
            content.append(
                {
                    "AI Strategy": "Emotional Validation",
                    "AI": f"Supporter line {i}, that sounds frightening.",
                }
            )
    record = {
        "scene": "whatever",
        "description": "Panic attacks on my commute.",
        "content": content,
    }
    record.update(changes)
    return json.dumps(record)


class ScriptedTeacher:
    backend = "test"
    model = "scripted"

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[list[dict]] = []
        self.seeds: list[int | None] = []

    def structured_format(self):
        return "none"  # its answers are free text, read tolerantly

    def chat(self, messages, sampling, n=1, schema=None, progress=None):
        self.calls.append(messages)
        self.seeds.append(sampling.seed)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Reply):
            return answer
        return Reply([Completion(answer, "stop")], Usage(10, 20, 1))


def test_extract_json_from_fences_and_prose():
    text = "Sure! Here it is:\n```json\n" + dialogue_json() + "\n```\nHope it helps."
    assert selfchat.extract_json(text)["description"] == "Panic attacks on my commute."
    assert selfchat.extract_json("Intro {not json} then " + dialogue_json())["content"]
    assert selfchat.extract_json("[" + dialogue_json() + "]")["content"]


def test_extract_json_failure_is_invalid_json():
    with pytest.raises(Failure) as caught:
        selfchat.extract_json('Here: {"scene": "x", "content": [')
    assert caught.value.failure_class == "invalid_json"


def test_json_nested_deeper_than_python_reads_is_invalid_json_not_a_crash():
    deep = '{"content": ' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(Failure) as caught:
        selfchat.extract_json("Here it is: " + deep)
    assert caught.value.failure_class == "invalid_json"
    assert "nested too deeply" in caught.value.detail


def test_refusal_detection():
    assert selfchat.is_refusal("I'm sorry, but I can't help with that request.")
    assert selfchat.is_refusal("As an AI, I cannot write that.")
    assert not selfchat.is_refusal("I'm sorry to hear that. " + dialogue_json())


def test_valid_dialogue_on_first_attempt_uses_our_scenario():
    teacher = ScriptedTeacher(dialogue_json())
    produced = selfchat.write_dialogue(teacher, SPEC, VOCAB, Sampling())
    assert produced.dialogue is not None
    assert produced.dialogue.scene == "Anxiety and Panic"
    assert (produced.attempts, produced.failures, produced.usage.calls) == (1, [], 1)
    prompt = teacher.calls[0][1]["content"]
    assert "Emotional Validation:" in prompt and '"content"' in prompt


@pytest.mark.parametrize(
    ("bad", "failure_class"),
    [
        ("I'm sorry, but I can't help with that.", "refusal"),
        ('{"description": "x", "content": [', "invalid_json"),
        (dialogue_json(turns=2), "too_short"),
        (dialogue_json(turns=14), "schema"),
        (
            dialogue_json(
                content=[
                    {"User": "a"},
                    {"User": "b"},
                    {"AI Strategy": "Affirmation", "AI": "c"},
                    {"User": "d"},
                    {"AI Strategy": "Affirmation", "AI": "e"},
                ]
            ),
            "not_alternating",
        ),
        (
            dialogue_json(
                content=[
                    {"AI Strategy": "Others", "AI": "Hi"},
                    {"User": "a"},
                    {"AI Strategy": "Affirmation", "AI": "c"},
                    {"User": "d"},
                    {"AI Strategy": "Affirmation", "AI": "e"},
                ]
            ),
            "not_alternating",
        ),
        (
            dialogue_json(
                content=[
                    {"User": "a"},
                    {"AI Strategy": "Hugging", "AI": "b"},
                    {"User": "c"},
                    {"AI Strategy": "Affirmation", "AI": "d"},
                ]
            ),
            "unknown_strategy",
        ),
        (dialogue_json(description=""), "schema"),
        (TeacherError("HTTP 500 from the teacher; gave up after 5 attempts", 500), "http_error"),
        (Reply([Completion(dialogue_json()[:80], "length")]), "truncated"),
    ],
)
def test_each_failure_is_classified_then_retried_with_the_reason(bad, failure_class):
    teacher = ScriptedTeacher(bad, dialogue_json())
    produced = selfchat.write_dialogue(teacher, SPEC, VOCAB, Sampling())
    assert [f.failure_class for f in produced.failures] == [failure_class]
    assert produced.dialogue is not None and produced.attempts == 2
    if failure_class != "http_error":
        retry = teacher.calls[1]
        assert retry[2]["role"] == "assistant"
        assert produced.failures[0].detail in retry[3]["content"]


def test_gives_up_after_max_attempts():
    teacher = ScriptedTeacher("nope", "nope", "nope")
    produced = selfchat.write_dialogue(teacher, SPEC, VOCAB, Sampling(), max_attempts=3)
    assert produced.dialogue is None
    assert [f.failure_class for f in produced.failures] == ["invalid_json"] * 3
    assert produced.failures[0].raw == "nope"


def test_gates_can_refuse_a_dialogue():
    def no_panic(dialogue):
        raise Failure("duplicate", "seen before")

    produced = selfchat.write_dialogue(
        ScriptedTeacher(dialogue_json(), dialogue_json()),
        SPEC,
        VOCAB,
        Sampling(),
        gates=[no_panic],
        max_attempts=2,
    )
    assert produced.dialogue is None
    assert [f.failure_class for f in produced.failures] == ["duplicate", "duplicate"]


def test_turns_mode_plays_both_parts_with_sampled_strategies():
    answers = ["I'm a nurse and I panic before night shifts."]
    for i in range(3):
        answers += [
            f'Seeker: "I feel awful before shift {i}."',
            f"I hear how heavy that is, number {i}.",
        ]
    teacher = ScriptedTeacher(*answers)
    spec = TurnsSpec("Anxiety and Panic", STRATEGIES, exchanges=3, shares={"Affirmation": 1.0})
    produced = selfchat.write_dialogue_by_turns(teacher, spec, VOCAB, Sampling(), random.Random(1))
    dialogue = produced.dialogue
    assert dialogue is not None, produced.failures
    assert dialogue.description.startswith("I'm a nurse")
    assert [t.role for t in dialogue.turns] == ["seeker", "supporter"] * 3
    assert dialogue.turns[0].text == "I feel awful before shift 0."  # label and quotes removed
    assert {t.strategy for t in dialogue.turns if t.role == "supporter"} == {"Affirmation"}
    supporter_prompt = teacher.calls[2][0]["content"]
    assert "Affirmation:" in supporter_prompt
    assert len(teacher.calls) == 7 and produced.usage.calls == 7


def test_turns_mode_when_the_teacher_chooses_the_strategy():
    answers = ["My exams start Monday."]
    answers += ["I can't sleep.", "[Normalize Experiences] Many students feel this before exams."]
    answers += ["Really?", "[Made Up Strategy] Sure."]
    answers += [
        "My exams start Monday.",
        "I can't sleep.",
        "[Offer Hope] It will pass.",
        "Ok.",
        "[affirmation] You're doing well.",
    ]
    teacher = ScriptedTeacher(*answers)
    spec = TurnsSpec("Academic Stress", STRATEGIES, exchanges=2, policy="teacher")
    produced = selfchat.write_dialogue_by_turns(teacher, spec, VOCAB, Sampling(), random.Random(1))
    assert [f.failure_class for f in produced.failures] == ["unknown_strategy"]
    assert [t.strategy for t in produced.dialogue.turns if t.role == "supporter"] == [
        "Offer Hope",
        "Affirmation",
    ]


def test_a_seeded_turns_attempt_is_retried_with_another_seed():
    """Turns mode asks again with the same messages, so a seeded retry must not reuse the seed
    (with it, a local model writes the same cut-off message three times)."""
    cut = Reply(
        [Completion("I keep thinking about how my exams and my", "length")], Usage(10, 48, 1)
    )
    answers = [cut, "My exams start Monday.", "I can't sleep.", "Many students feel this."]
    teacher = ScriptedTeacher(*answers)
    spec = TurnsSpec("Academic Stress", STRATEGIES, exchanges=1, shares={"Affirmation": 1.0})
    produced = selfchat.write_dialogue_by_turns(
        teacher, spec, VOCAB, Sampling(seed=7), random.Random(1)
    )
    assert [f.failure_class for f in produced.failures] == ["truncated"]
    assert produced.dialogue is not None
    assert teacher.seeds == [7, 1007, 1007, 1007]  # attempt 1 keeps the job's seed
    unseeded = ScriptedTeacher(cut, "My exams start Monday.", "I can't sleep.", "Fine.")
    selfchat.write_dialogue_by_turns(unseeded, spec, VOCAB, Sampling(), random.Random(1))
    assert unseeded.seeds == [None] * 4


def test_dri_turn_choice():
    rng = random.Random(3)
    indices, labels = [1, 3, 5, 7], ["Affirmation", None, "Offer Hope", "affirmation"]
    assert inpainting.choose_turns(indices, labels, "all", 1, [], rng) == [1, 3, 5, 7]
    assert inpainting.choose_turns(indices, labels, "strategy", 1, ["Affirmation"], rng) == [1, 7]
    picked = inpainting.choose_turns(indices, labels, "random", 2, [], rng)
    assert len(picked) == 2 and set(picked) <= set(indices)


def test_masked_conversation_with_and_without_right_context():
    turns = [
        inpainting.ContextTurn("seeker", "Hi"),
        inpainting.ContextTurn("supporter", "Hello"),
        inpainting.ContextTurn("seeker", "Bye"),
    ]
    assert (
        inpainting.masked_conversation(turns, 1, True)
        == "Seeker: Hi\nSupporter: [MASKED]\nSeeker: Bye"
    )
    assert inpainting.masked_conversation(turns, 1, False) == "Seeker: Hi\nSupporter: [MASKED]"


def test_write_candidates_drops_duplicates_and_asks_for_the_rest():
    turns = [
        inpainting.ContextTurn("seeker", "I failed my driving test."),
        inpainting.ContextTurn("supporter", "That must be disappointing."),
    ]
    first = Reply(
        [
            Completion("That must be disappointing.", "stop"),
            Completion("What went wrong?", "stop"),
            Completion("what went  wrong?", "stop"),
        ],
        Usage(5, 5, 1),
    )
    second = Reply([Completion("You can book another one.", "stop")], Usage(5, 5, 1))
    third = Reply([Completion("I'm sorry, but I can't help with that.", "stop")], Usage(5, 5, 1))
    teacher = ScriptedTeacher(first, second, third)
    result = inpainting.write_candidates(
        teacher, turns, 1, "Empathetic Statements", 3, Sampling(), inpainting.exact_deduplicate
    )
    assert result.texts == ["What went wrong?", "You can book another one."]
    assert [f.failure_class for f in result.failures] == ["duplicate", "duplicate", "refusal"]
    assert result.attempts == 3
    assert result.usage.calls == 3
    assert "[MASKED]" in teacher.calls[0][1]["content"]
    assert "Empathetic Statements" in teacher.calls[0][1]["content"]
