"""The boundary parser, one drift kind at a time (no database)."""

from __future__ import annotations

import pytest

from curation.parsing import ParsedDialogue, Rejected, Vocabulary, parse_record

VOCAB = Vocabulary.from_specs()


def extes(content, scene="Academic Stress", description="An exam tomorrow.", **extra):
    return {"scene": scene, "description": description, "content": content, **extra}


def kinds(dialogue: ParsedDialogue) -> list[str]:
    return [r.kind for r in dialogue.repairs]


CLEAN = [{"User": "I can't focus."}, {"AI Strategy": "Clarification", "AI": "Since when?"}]


def test_a_clean_record_needs_no_repair():
    dialogue = parse_record(extes(CLEAN), "extes", VOCAB)
    assert kinds(dialogue) == []
    assert [(t.role, t.strategy) for t in dialogue.turns] == [
        ("seeker", None),
        ("supporter", "Clarification"),
    ]


def test_object_valued_utterances_become_text():
    content = [
        {"User": {"text": "I can't focus."}},
        {"AI Strategy": "Clarification", "AI": {"Response": "Since when?"}},
    ]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert [t.text for t in dialogue.turns] == ["I can't focus.", "Since when?"]
    assert kinds(dialogue) == ["object_utterance", "object_utterance"]


def test_lowercase_strategy_key_is_read():
    content = [{"User": "Hi"}, {"AI strategy": "Clarification", "AI": "What happened?"}]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert dialogue.turns[1].strategy == "Clarification"
    assert "strategy_key_spelling" in kinds(dialogue)


def test_merged_seeker_and_supporter_object_is_split():
    content = [
        {"User": "Hi", "AI Strategy": "Others", "AI": "Hello"},
        {"User": "Bye"},
        {"AI": "Bye", "AI Strategy": ""},
    ]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert [t.role for t in dialogue.turns] == ["seeker", "supporter", "seeker", "supporter"]
    assert dialogue.turns[3].strategy is None
    assert kinds(dialogue) == ["merged_object"]


def test_empty_and_null_texts_are_dropped_and_neighbours_merged():
    content = [
        {"User": "One"},
        {"AI Strategy": "Others", "AI": None},
        {"User": "Two"},
        {"AI Strategy": "Others", "AI": "Hello"},
    ]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert [t.text for t in dialogue.turns] == ["One Two", "Hello"]
    assert kinds(dialogue) == ["empty_text", "merged_consecutive"]


def test_strategy_case_variant_and_free_text():
    content = [
        {"User": "Hi"},
        {"AI Strategy": "OFFER HOPE", "AI": "It can get better."},
        {"User": "Maybe"},
        {"AI Strategy": "a warm hug", "AI": "I'm here."},
    ]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert [t.strategy for t in dialogue.turns if t.role == "supporter"] == ["Offer Hope", None]
    assert kinds(dialogue) == ["strategy_case", "strategy_unknown"]


def test_supporter_opening_is_kept_and_reported():
    content = [{"AI Strategy": "Others", "AI": "Hi there"}, {"User": "Hi"}]
    dialogue = parse_record(extes(content), "extes", VOCAB)
    assert dialogue.turns[0].role == "supporter"
    assert kinds(dialogue) == ["supporter_first"]


def test_extra_keys_are_reported():
    dialogue = parse_record(extes(CLEAN, id=3, source="web"), "extes", VOCAB)
    assert [r.detail for r in dialogue.repairs] == ["id", "source"]


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ("a string", "not_an_object"),
        ({"description": "x", "content": CLEAN}, "missing_scene"),
        ({"scene": "Academic Stress", "content": []}, "missing_content"),
        (extes([{"User": "Hi"}, {"Speaker": "x"}]), "unreadable_utterance"),
        (extes([{"User": "Hi"}, {"AI": ["a", "b"]}]), "unreadable_utterance"),
        (extes([{"User": "Hi"}, {"User": "Anyone?"}]), "too_short"),
        (extes([{"User": "Hi"}, {"AI Strategy": 3, "AI": "Hello"}]), "schema"),
    ],
)
def test_what_cannot_be_repaired_is_rejected_with_its_kind(record, kind):
    with pytest.raises(Rejected) as caught:
        parse_record(record, "extes", VOCAB)
    assert caught.value.kind == kind
    assert caught.value.detail


def test_esconv_json_lines_record():
    record = {
        "problem_type": "Academic Pressure",
        "situation": "Exams.",
        "emotion_type": "anxiety",
        "dialog": [
            {"text": "Hi, how can I help?", "speaker": "sys", "strategy": "Question"},
            {"text": "Exams", "speaker": "usr"},
            {"text": "so many", "speaker": "usr"},
            {"text": "That is a lot.", "speaker": "sys", "strategy": "Reflection of feelings"},
            {
                "text": "Try one subject at a time.",
                "speaker": "sys",
                "strategy": "Providing Suggestions",
            },
        ],
    }
    dialogue = parse_record(record, "esconv", VOCAB)
    assert dialogue.scene == "Academic Stress"
    assert [(t.role, t.strategy) for t in dialogue.turns] == [
        ("supporter", "Question"),
        ("seeker", None),
        ("supporter", "Reflection of feelings"),
    ]
    assert dialogue.turns[2].text == "That is a lot. Try one subject at a time."
    assert sorted(kinds(dialogue)) == sorted(
        [
            "scene_alias",
            "merged_consecutive",
            "merged_consecutive",
            "merged_label_dropped",
            "supporter_first",
        ]
    )


def test_esconv_lone_unknown_speaker_is_rejected():
    record = {"problem_type": "x", "dialog": [{"text": "Hi", "speaker": "narrator"}]}
    with pytest.raises(Rejected) as caught:
        parse_record(record, "esconv", VOCAB)
    assert caught.value.kind == "roles_unknown"


def test_content_hash_ignores_labels_and_scene():
    a = parse_record(extes(CLEAN), "extes", VOCAB)
    relabelled = [CLEAN[0], {"AI Strategy": "Others", "AI": "Since when?"}]
    b = parse_record(extes(relabelled, scene="Anxiety and Panic"), "extes", VOCAB)
    c = parse_record(extes(CLEAN, description="Another one."), "extes", VOCAB)
    assert a.content_hash() == b.content_hash() != c.content_hash()
