"""The ESConv family: other role names, other spellings of the 8 strategies, the fields around the
dialogue (survey scores, questionnaires, feedback), and the import command's --roles."""

from __future__ import annotations

import json
from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from curation.importing import load_reference
from curation.management.commands.import_dialogues import parse_roles
from curation.models import Dialogue
from curation.parsing import _ROLE_PAIRS, ParsedDialogue, Rejected, Vocabulary, parse_record

VOCAB = Vocabulary.from_specs()


def esconv(dialog, **extra):
    return {
        "problem_type": "Academic Stress",
        "situation": "My thesis is due and I cannot write a line.",
        "dialog": dialog,
        **extra,
    }


def talk(seeker, supporter, strategy="Question", *, supporter_key="strategy"):
    """Four utterances, seeker first; the supporter's carry `strategy` (None: no annotation)."""

    def said(text):
        return {"speaker": supporter, "text": text} | (
            {supporter_key: strategy} if strategy is not None else {}
        )

    return [
        {"speaker": seeker, "text": "I have not slept properly for a week."},
        said("What keeps you awake?"),
        {"speaker": seeker, "text": "The deadline, mostly."},
        said("Is there one part you could start on tonight?"),
    ]


def roles(dialogue: ParsedDialogue) -> list[str]:
    return [t.role for t in dialogue.turns]


def role_repairs(dialogue: ParsedDialogue) -> list[str]:
    return [r.detail for r in dialogue.repairs if r.kind == "roles_mapped"]


def rejected(record, **options) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse_record(record, "esconv", VOCAB, **options)
    return caught.value


# ---- role names ----------------------------------------------------------------------------


def test_user_and_assistant_are_a_known_pair():
    dialogue = parse_record(esconv(talk("user", "assistant")), "esconv", VOCAB)
    assert roles(dialogue) == ["seeker", "supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["user=seeker, assistant=supporter (known pair)"]


def test_help_seeker_is_read_whatever_its_case_and_separator():
    dialog = talk("Help-Seeker", "Supporter")
    dialog[2]["speaker"] = "help_seeker"  # the same speaker, spelt another way
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert roles(dialogue) == ["seeker", "supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["Help-Seeker=seeker, Supporter=supporter (known pair)"]


@pytest.mark.parametrize(("seeker", "supporter"), _ROLE_PAIRS)
def test_every_known_pair_is_read_both_ways_round(seeker, supporter):
    # Supporter's name first in the file: the names decide, not the order.
    dialog = talk(supporter.title(), seeker.upper(), None)
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert roles(dialogue) == ["supporter", "seeker", "supporter", "seeker"]


def test_names_from_different_pairs_are_read_together():
    dialogue = parse_record(esconv(talk("Patient", "Therapist", None)), "esconv", VOCAB)
    assert roles(dialogue) == ["seeker", "supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["Patient=seeker, Therapist=supporter (known pair)"]


@pytest.mark.parametrize(("seeker", "supporter"), [("usr", "sys"), ("seeker", "supporter")])
def test_esconvs_own_names_need_no_repair(seeker, supporter):
    dialogue = parse_record(esconv(talk(seeker, supporter)), "esconv", VOCAB)
    assert roles(dialogue) == ["seeker", "supporter", "seeker", "supporter"]
    assert [t.strategy for t in dialogue.turns] == [None, "Question", None, "Question"]
    assert dialogue.repairs == []


def test_nested_layout_with_its_own_names_still_reads():
    dialog = [
        {"speaker": "seeker", "annotation": {}, "content": "I failed the driving test again."},
        {
            "speaker": "supporter",
            "annotation": {"strategy": "Affirmation and Reassurance"},
            "content": "Taking it again shows real persistence.",
        },
    ]
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert [(t.role, t.strategy) for t in dialogue.turns] == [
        ("seeker", None),
        ("supporter", "Affirmation and Reassurance"),
    ]
    assert dialogue.repairs == []


def test_unknown_names_are_told_apart_by_the_strategy_annotations():
    # The annotated speaker opens: the annotations decide, not the opening.
    dialog = talk("Alex", "Sam", supporter_key="strategy")
    dialog = [dialog[1], *dialog]
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert roles(dialogue) == ["supporter", "seeker", "supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["Alex=seeker, Sam=supporter (from strategy annotations)"]


def test_annotations_in_the_nested_layout_are_evidence_too():
    dialog = [
        {"speaker": "A", "annotation": {"strategy": "Question"}, "content": "How are you?"},
        {"speaker": "B", "annotation": {"feedback": "3"}, "content": "Tired of it all."},
        {"speaker": "A", "annotation": {"strategy": "Others"}, "content": "I'm here."},
    ]
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert roles(dialogue) == ["supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["B=seeker, A=supporter (from strategy annotations)"]


def test_one_known_name_settles_the_other_when_nothing_is_annotated():
    dialog = talk("Sam", "usr", None)  # "usr" speaks second here: the seeker
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert roles(dialogue) == ["supporter", "seeker", "supporter", "seeker"]
    assert role_repairs(dialogue) == ["usr=seeker, Sam=supporter (from the known name 'usr')"]


def test_annotations_contradicting_a_known_name_are_ambiguous():
    # "usr" is the seeker's name in ESConv, yet here "usr" carries the strategies.
    error = rejected(esconv(talk("Sam", "usr")))
    assert error.kind == "roles_unknown"
    assert error.detail == "the name 'usr' says seeker, the strategy annotations say supporter"


def test_who_opens_is_no_evidence():
    # More than half of ESConv's dialogues open with the supporter: the opener proves nothing.
    error = rejected(esconv(talk("Alex", "Sam", None)))
    assert error.kind == "roles_unknown"
    assert "neither carries" in error.detail and "--roles" in error.detail


def test_annotations_on_both_speakers_are_ambiguous():
    dialog = talk("Alex", "Sam")
    dialog[0]["strategy"] = "Others"
    error = rejected(esconv(dialog))
    assert error.kind == "roles_unknown"
    assert "both carry" in error.detail


def test_three_speakers_are_rejected():
    dialog = [*talk("usr", "sys"), {"speaker": "moderator", "text": "Five minutes left."}]
    error = rejected(esconv(dialog))
    assert error.kind == "roles_unknown"
    assert error.detail.startswith("3 speakers")


def test_one_unknown_speaker_is_rejected():
    dialog = [{"speaker": "Alex", "text": "Hello?"}, {"speaker": "Alex", "text": "Anyone?"}]
    error = rejected(esconv(dialog))
    assert error.kind == "roles_unknown"
    assert "one speaker only" in error.detail


def test_one_known_speaker_is_a_dialogue_too_short():
    dialog = [{"speaker": "usr", "text": "Hello?"}, {"speaker": "usr", "text": "Anyone?"}]
    assert rejected(esconv(dialog)).kind == "too_short"


def test_a_forced_mapping_decides_and_is_reported():
    record = esconv(talk("Alex", "Sam", None))
    dialogue = parse_record(record, "esconv", VOCAB, roles={"alex": "seeker", "SAM": "supporter"})
    assert roles(dialogue) == ["seeker", "supporter", "seeker", "supporter"]
    assert role_repairs(dialogue) == ["Alex=seeker, Sam=supporter (forced)"]


def test_a_forced_mapping_overrides_known_names():
    dialogue = parse_record(
        esconv(talk("usr", "sys", None)),
        "esconv",
        VOCAB,
        roles={"usr": "supporter", "sys": "seeker"},
    )
    assert roles(dialogue) == ["supporter", "seeker", "supporter", "seeker"]
    assert role_repairs(dialogue) == ["sys=seeker, usr=supporter (forced)"]


def test_a_forced_mapping_equal_to_esconvs_own_is_not_a_repair():
    dialogue = parse_record(
        esconv(talk("usr", "sys")), "esconv", VOCAB, roles={"usr": "seeker", "sys": "supporter"}
    )
    assert dialogue.repairs == []


def test_a_speaker_outside_the_forced_mapping_is_rejected():
    error = rejected(esconv(talk("Alex", "Listener")), roles={"Alex": "seeker", "Sam": "supporter"})
    assert error.kind == "unknown_speaker"
    assert "'Listener'" in error.detail


# ---- strategy names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("Questions", "Question"),  # plural
        ("Restatements or Paraphrasing", "Restatement or Paraphrasing"),  # plural
        ("Restatement/Paraphrasing", "Restatement or Paraphrasing"),
        ("Self-Disclosures", "Self-disclosure"),
        ("Affirmations and Reassurances", "Affirmation and Reassurance"),
        ("Providing Suggestion", "Providing Suggestions"),  # singular
        ("Reflection", "Reflection of feelings"),  # shortened
        ("Suggestions", "Providing Suggestions"),
        ("Info", "Information"),
        ("Affirmation", "Affirmation and Reassurance"),
        ("Providing Information", "Information"),  # other wordings
        ("Restatement", "Restatement or Paraphrasing"),
        ("Other", "Others"),
    ],
)
def test_other_forms_of_a_strategy_map_with_a_repair(label, name):
    dialogue = parse_record(esconv(talk("usr", "sys", label)), "esconv", VOCAB)
    assert [t.strategy for t in dialogue.turns if t.role == "supporter"] == [name, name]
    assert dialogue.repairs[0].kind == "strategy_alias"
    assert [r.detail for r in dialogue.repairs] == [f"{label} → {name}"] * 2


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("Reflection of Feelings", "Reflection of feelings"),
        ("SELF-DISCLOSURE", "Self-disclosure"),
        ("[Providing Suggestions]", "Providing Suggestions"),  # as ESConv's model code writes it
    ],
)
def test_case_and_punctuation_variants_map_as_case_repairs(label, name):
    dialogue = parse_record(esconv(talk("usr", "sys", label)), "esconv", VOCAB)
    assert dialogue.turns[1].strategy == name
    assert dialogue.repairs[0] == dialogue.repairs[1]
    assert (dialogue.repairs[0].kind, dialogue.repairs[0].detail) == (
        "strategy_case",
        f"{label} → {name}",
    )


def test_form_matching_serves_extes_names_too():
    assert VOCAB.match_strategy("Suggest Option", "extes") == ("Suggest Options", "strategy_alias")
    assert VOCAB.match_strategy("Hugging", "extes") == (None, "strategy_unknown")


def test_unknown_strategy_names_are_reported_by_name():
    dialog = talk("usr", "sys", "Gentle teasing")
    dialog.append({"speaker": "usr", "text": "Ha, fair."})
    dialog.append({"speaker": "sys", "text": "Tell me more.", "strategy": "Mirroring"})
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert all(t.strategy is None for t in dialogue.turns)
    unknown = Counter(r.detail for r in dialogue.repairs if r.kind == "strategy_unknown")
    assert unknown == {"Gentle teasing": 2, "Mirroring": 1}


def test_a_vocabulary_built_from_rows_without_aliases_knows_the_forms():
    vocab = Vocabulary.build([("esconv", "Information", ()), ("esconv", "Others", ())], [])
    assert vocab.match_strategy("Info", "esconv") == ("Information", "strategy_alias")
    assert vocab.match_strategy("Other", "esconv") == ("Others", "strategy_alias")
    # Forms of a strategy the rows lack are not invented.
    assert vocab.match_strategy("Questions", "esconv") == (None, "strategy_unknown")


def test_the_database_vocabulary_knows_the_forms(db):
    vocab = load_reference().vocab
    assert vocab.match_strategy("Reflection", "esconv") == (
        "Reflection of feelings",
        "strategy_alias",
    )
    assert vocab.match_strategy("Self-Disclosures", "esconv") == (
        "Self-disclosure",
        "strategy_alias",
    )


# ---- the fields around the dialogue --------------------------------------------------------

SURVEY = {
    "seeker": {"initial_emotion_intensity": "5", "empathy": "4", "final_emotion_intensity": "2"},
    "supporter": {"relevance": "3"},
}


def test_survey_and_questionnaire_fields_stay_in_source_fields():
    record = esconv(
        talk("usr", "sys"),
        experience_type="Current Experience",
        emotion_type="anxiety",
        survey_score=SURVEY,
        seeker_question1="It helped a little.",
        seeker_question2="",
        supporter_question1="They opened up late.",
        supporter_question2="No.",
    )
    dialogue = parse_record(record, "esconv", VOCAB)
    assert dialogue.source_fields == {
        "experience_type": "Current Experience",
        "emotion_type": "anxiety",
        "survey_score": SURVEY,
        "seeker_question1": "It helped a little.",
        "seeker_question2": "",
        "supporter_question1": "They opened up late.",
        "supporter_question2": "No.",
    }
    record["survey_score"]["seeker"]["empathy"] = "1"
    assert dialogue.source_fields["survey_score"]["seeker"]["empathy"] == "4"  # a copy


def test_feedback_on_utterances_stays_in_source_fields():
    dialog = [
        {"speaker": "seeker", "annotation": {}, "content": "My sister stopped calling."},
        {"speaker": "supporter", "annotation": {"strategy": "Question"}, "content": "Since when?"},
        {"speaker": "seeker", "annotation": {"feedback": "4"}, "content": "Since the wedding."},
        {"speaker": "supporter", "text": "That sounds lonely.", "feedback": "5"},
    ]
    dialogue = parse_record(esconv(dialog), "esconv", VOCAB)
    assert dialogue.source_fields == {
        "utterance_fields": [
            {"utterance": 3, "fields": {"annotation": {"feedback": "4"}}},
            {"utterance": 4, "fields": {"feedback": "5"}},
        ]
    }


def test_extes_records_carry_no_source_fields():
    record = {
        "scene": "Academic Stress",
        "description": "An exam tomorrow.",
        "content": [{"User": "I can't focus."}, {"AI Strategy": "Clarification", "AI": "Why?"}],
    }
    assert parse_record(record, "extes", VOCAB).source_fields == {}


def test_a_real_esconv_record_keeps_its_fields_and_needs_no_role_repair(esconv_dir):
    with (esconv_dir / "valid.txt").open(encoding="utf-8") as lines:
        raw = json.loads(next(lines))
    dialogue = parse_record(raw, "esconv", VOCAB)
    assert set(dialogue.source_fields) == {
        "experience_type",
        "emotion_type",
        "survey_score",
        "seeker_question1",
        "seeker_question2",
        "supporter_question1",
        "supporter_question2",
    }
    assert dialogue.source_fields["survey_score"] == raw["survey_score"]
    assert role_repairs(dialogue) == []


# ---- --roles on the command ----------------------------------------------------------------


def test_roles_option_is_parsed():
    assert parse_roles("Alex=seeker, Sam=Supporter") == {
        "Alex": "seeker",
        "Sam": "supporter",
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Alex=seeker", "exactly two"),
        ("Alex=seeker,Sam=seeker", "exactly two"),
        ("A=seeker,B=supporter,C=supporter", "exactly two"),
        ("Alex=seeker,Volunteer", "is not NAME=seeker"),
        ("Alex=seeker,=supporter", "is not NAME=seeker"),
        ("Alex=seeker,Sam=helper", "is not NAME=seeker"),
        ("Help-Seeker=seeker,help_seeker=supporter", "named twice"),
    ],
)
def test_bad_roles_options_are_refused(value, message):
    with pytest.raises(CommandError, match=message):
        parse_roles(value)


@pytest.mark.parametrize(
    ("name", "fmt", "roles", "message"),
    [
        ("any.json", "extes", "User=seeker,AI=supporter", "ESConv files only"),
        ("any.jsonl", "esconv", "Alex=seeker", "exactly two"),
    ],
)
def test_a_roles_option_that_cannot_apply_stops_the_command(tmp_path, name, fmt, roles, message):
    with pytest.raises(CommandError, match=message):
        call_command(
            "import_dialogues", str(tmp_path / name), format=fmt, roles=roles, stdout=StringIO()
        )


def test_the_command_imports_with_forced_roles(db, tmp_path):
    path = tmp_path / "calls.jsonl"
    path.write_text(json.dumps(esconv(talk("Alex", "Sam", None))) + "\n")
    out = StringIO()
    call_command(
        "import_dialogues",
        str(path),
        format="esconv",
        roles="Alex=seeker,Sam=supporter",
        stdout=out,
    )
    assert "imported: 1" in out.getvalue()
    dialogue = Dialogue.objects.get(source_file=str(path))
    assert list(dialogue.turns.order_by("index").values_list("role", flat=True)) == [
        "seeker",
        "supporter",
        "seeker",
        "supporter",
    ]
    assert {
        "kind": "roles_mapped",
        "detail": "Alex=seeker, Sam=supporter (forced)",
    } in dialogue.repairs
