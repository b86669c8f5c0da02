"""The degenerate-dialogue gates (generation.degenerate): repetition, role confusion, off
scenario. Hand-made dialogues here are the project's own; the seed dialogues (and ESConv, where
present) are read in place for the rejection-rate checks."""

from __future__ import annotations

import json
import os
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from generation import degenerate
from generation.degenerate import Thresholds, Turn

ROOT = Path(__file__).resolve().parent.parent
SEED_FILE = ROOT / "curation" / "seeds" / "seed_dialogues.json"
T = Thresholds()

HEALTHY: list[Turn] = [
    ("seeker", "Hi. I had a rough week and I think I just need to talk it through."),
    ("supporter", "I'm glad you came to talk. What made the week so rough?"),
    (
        "seeker",
        "My landlord told me on Monday that he's selling the building, so I have to be out by "
        "the end of next month. I've lived there six years.",
    ),
    (
        "supporter",
        "Six years is a long time to call a place home, and a month is very little notice. "
        "How are you holding up with it?",
    ),
    ("seeker", "Badly. I keep refreshing listings at 2 a.m. and everything is twice my rent."),
    (
        "supporter",
        "Lying awake scrolling prices would wear anyone down. It makes sense that you're "
        "anxious when the numbers look like that.",
    ),
    ("seeker", "I just don't know where to start."),
    (
        "supporter",
        "Could we pick one small step for tomorrow? For instance, writing down the three things "
        "you need most in a new place, so the search feels less endless.",
    ),
    ("seeker", "That actually sounds doable. A short list. Okay."),
    ("supporter", "It's a good start. You've handled a lot this week; be gentle with yourself."),
]

LOOPING: list[Turn] = [
    ("seeker", "I graduated in the spring and I still can't decide what job to go for."),
    ("supporter", "That's a confusing place to be. We can find your perfect path together."),
    ("seeker", "My friends all seem to know what they want."),
    ("supporter", "It can feel that way, but you will find your perfect path at your own pace."),
    ("seeker", "I've sent out ten applications and heard nothing."),
    ("supporter", "Waiting is hard. Stay patient and you'll find your perfect path."),
    ("seeker", "Sometimes I think I studied the wrong thing."),
    ("supporter", "No degree is wasted. Believe in yourself and find your perfect path."),
]

BUSINESS_COACH: list[Turn] = [
    ("supporter", "Hello, thanks for reaching out. What would you like to talk about?"),
    (
        "seeker",
        "Hi! My name is Marco and I'm a business coach. I'm here to help you reach your goals, "
        "so tell me, how can I support you today?",
    ),
    ("supporter", "Well, I've been worried that my bakery won't survive the winter."),
    ("seeker", "That must be really hard for you. Let's work on a plan together."),
]


def _seeds() -> list[dict[str, object]]:
    records = json.loads(SEED_FILE.read_text(encoding="utf-8"))
    out = []
    for record in records:
        turns: list[Turn] = []
        for item in record["content"]:
            if item.get("User"):
                turns.append(("seeker", item["User"]))
            elif item.get("AI"):
                turns.append(("supporter", item["AI"]))
        out.append({"scene": record["scene"], "description": record["description"], "turns": turns})
    return out


@pytest.fixture(scope="module")
def embedder() -> degenerate.Embeds:
    from generation.embeddings import get_embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return get_embedder()


# ---- thresholds --------------------------------------------------------------------------


def test_thresholds_are_frozen_settings() -> None:
    with pytest.raises(FrozenInstanceError):
        T.loop_fraction = 0.1  # type: ignore[misc]
    strict = Thresholds(loop_min_turns=2, loop_fraction=0.25)
    assert strict.loop_min_turns == 2 and T.loop_min_turns == Thresholds().loop_min_turns


# ---- repetition --------------------------------------------------------------------------


def test_healthy_dialogue_passes_every_pattern_gate() -> None:
    assert degenerate.repetition(HEALTHY, T) is None
    assert degenerate.role_confusion(HEALTHY, T) is None


def test_supporter_looping_on_a_phrase_is_rejected() -> None:
    reason = degenerate.repetition(LOOPING, T)
    assert reason is not None
    assert "find your perfect path" in reason
    assert "4 of 4 supporter turns" in reason


def test_a_turn_that_repeats_itself_is_named_with_its_statistic() -> None:
    loop = "I hear you and I want you to know that every step counts toward healing. " * 4
    turns = [*HEALTHY[:4], ("supporter", loop.strip()), *HEALTHY[5:]]
    reason = degenerate.repetition(turns, T)
    assert reason is not None
    assert reason.startswith("turn 4 repeats itself:")
    assert re.search(r"\d+% of its characters are in", reason)
    assert "limit" in reason


def test_duplicate_turn_is_rejected_but_short_repeats_are_not() -> None:
    duplicated = [*HEALTHY, ("seeker", HEALTHY[4][1].upper() + "!!")]
    reason = degenerate.repetition(duplicated, T)
    assert reason is not None and "repeats turn 4 word for word" in reason
    thanks = [
        *HEALTHY,
        ("seeker", "Thank you."),
        ("supporter", "Any time."),
        ("seeker", "thank you"),
    ]
    assert degenerate.repetition(thanks, T) is None


def test_gopher_statistics_on_known_texts() -> None:
    stats = degenerate.ngram_stats("a b c d e a b c d e")
    assert stats.dup[5] == pytest.approx(1.0)
    assert stats.top[2] == pytest.approx(0.4)  # "a b" twice: 4 of 10 characters
    fresh = degenerate.ngram_stats("one two three four five six seven eight nine ten")
    assert fresh.top[2] == 0.0 and fresh.dup[5] == 0.0
    dialogue = degenerate.repetition_statistics(LOOPING)
    assert dialogue.loop_phrase == "find your perfect path"
    assert dialogue.loop_turns == [1, 3, 5, 7]
    assert dialogue.supporter_turns == 4


# ---- role confusion ----------------------------------------------------------------------


def test_seeker_introducing_themselves_as_a_business_coach_is_rejected() -> None:
    reason = degenerate.role_confusion(BUSINESS_COACH, T)
    assert reason is not None
    assert reason.startswith("turn 1 (seeker) speaks as the supporter")


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (("seeker", "I get it. It sounds like you're feeling stuck, which is normal."), "reflects"),
        (("seeker", "As your therapist, I'd suggest a break."), "introduces itself"),
        (("seeker", "Your feelings are totally valid, you know."), "validates"),
        (("supporter", "Thank you so much for listening to me, I feel better now."), "thanks"),
        (("supporter", "Honestly I'm lost too. Could you help me figure it out?"), "asks for help"),
    ],
)
def test_each_side_speaking_as_the_other_is_named(turn: Turn, expected: str) -> None:
    reason = degenerate.role_confusion([*HEALTHY[:6], turn], T)
    assert reason is not None and "turn 6" in reason and expected in reason


def test_role_label_inside_a_turn_is_rejected() -> None:
    leaked = [
        ("seeker", "My brother and I haven't spoken since the funeral."),
        ("supporter", "That sounds very lonely. Supporter: What happened between you?"),
    ]
    reason = degenerate.role_confusion(leaked, T)
    assert reason is not None and "turn 1 (supporter) holds a role label" in reason
    both_sides = [("supporter", "How are you?\nUser: not great\nAI: I'm sorry to hear it.")]
    assert degenerate.role_confusion(both_sides, T) is not None
    own_label_in_front = [("supporter", "AI: I'm sorry, that sounds hard.")]
    assert degenerate.role_confusion(own_label_in_front, T) is None


def test_seeker_asking_for_help_is_not_role_confusion() -> None:
    turns = [
        *HEALTHY[:4],
        ("seeker", "Is there anything I can do to sleep better? Can you help me with that?"),
        ("supporter", "Let's look at your evenings. What usually happens before bed?"),
    ]
    assert degenerate.role_confusion(turns, T) is None


def test_embedding_part_flags_a_seeker_in_the_supporter_voice(embedder: degenerate.Embeds) -> None:
    # No pattern matches this turn: only its closeness to the written supporter-style examples
    # does. (The embedding part catches lines near those examples; far paraphrases it misses.)
    swapped = [
        *HEALTHY[:2],
        (
            "seeker",
            "I can tell how much pain you're carrying, and it takes real courage to share what "
            "you're going through.",
        ),
    ]
    assert degenerate.role_confusion(swapped, T) is None  # patterns alone miss it
    reason = degenerate.role_confusion(swapped, T, embedder)
    assert reason is not None and reason.startswith("turn 2 (seeker) sounds like the supporter")
    assert degenerate.role_confusion(HEALTHY, T, embedder) is None


# ---- off scenario ------------------------------------------------------------------------

REFERENCE: dict[str, list[tuple[str, list[str]]]] = {
    "Anxiety and Panic": [
        (
            "I get panic attacks on the train to work and I'm scared of the next one.",
            [
                "My heart races and I feel like I can't breathe whenever the doors close.",
                "That sounds frightening. What do you notice right before it starts?",
                "My hands go numb and I'm sure I'm about to faint.",
            ],
        ),
        (
            "Constant worry keeps me up at night; I feel on edge all the time.",
            [
                "I lie awake with my chest tight, imagining everything that could go wrong.",
                "Living on high alert is exhausting. Have you tried slow breathing when it hits?",
                "Sometimes, but the panic comes back the moment I stop.",
            ],
        ),
    ],
    "Job Loss or Career Setbacks": [
        (
            "I was laid off from the factory after eleven years.",
            [
                "They called us in on Friday and said the whole line was closing.",
                "Losing a job you held for eleven years is a huge blow. How are you coping?",
                "I don't know how to tell my kids I'm unemployed.",
            ],
        ),
        (
            "My company cut my position and I have no idea how to find a new job.",
            [
                "I've sent my CV everywhere and nobody calls back.",
                "Job hunting after a layoff can be discouraging. Which roles are you aiming for?",
                "Anything that pays the mortgage at this point.",
            ],
        ),
    ],
    "Dealing with the Loss of a Pet": [
        (
            "My cat Pepper died last week after fifteen years with me.",
            [
                "The flat is so empty without her meowing at breakfast.",
                "Fifteen years is a lifetime of company. What do you miss most about her?",
                "Her sleeping on my feet every night.",
            ],
        ),
        (
            "We had to put our old dog to sleep yesterday.",
            [
                "I keep seeing his lead hanging by the door and I break down.",
                "Saying goodbye to a dog who was family is heartbreaking.",
                "The vet said it was the kind thing to do, but it doesn't feel like it.",
            ],
        ),
    ],
}

JOB_LOSS_DESCRIPTION = "I lost my job at the warehouse when they closed our site."
JOB_LOSS: list[Turn] = [
    ("seeker", "They told all of us on Tuesday that the warehouse is shutting down."),
    ("supporter", "That's a shock. How long had you worked there?"),
    ("seeker", "Nine years. Now I have to apply for jobs and I haven't written a CV in ages."),
    ("supporter", "Being let go after nine years hurts. Would it help to start your CV together?"),
]


@pytest.fixture(scope="module")
def hand_made_centroids(embedder: degenerate.Embeds) -> dict[str, np.ndarray]:
    from generation.embeddings import dialogue_text

    return degenerate.centroids(
        {
            name: [dialogue_text(desc, turns) for desc, turns in examples]
            for name, examples in REFERENCE.items()
        },
        embedder,
    )


def test_job_loss_dialogue_filed_under_anxiety_is_off_scenario(
    embedder: degenerate.Embeds, hand_made_centroids: dict[str, np.ndarray]
) -> None:
    reason = degenerate.off_scenario(
        JOB_LOSS_DESCRIPTION, JOB_LOSS, "Anxiety and Panic", hand_made_centroids, T, embedder
    )
    assert reason is not None
    assert "“Job Loss or Career Setbacks”" in reason and "“Anxiety and Panic”" in reason
    assert (
        degenerate.off_scenario(
            JOB_LOSS_DESCRIPTION,
            JOB_LOSS,
            "Job Loss or Career Setbacks",
            hand_made_centroids,
            T,
            embedder,
        )
        is None
    )


def test_off_scenario_needs_two_centroids_and_its_own(
    embedder: degenerate.Embeds, hand_made_centroids: dict[str, np.ndarray]
) -> None:
    only_one = {"Anxiety and Panic": hand_made_centroids["Anxiety and Panic"]}
    assert (
        degenerate.off_scenario(
            JOB_LOSS_DESCRIPTION, JOB_LOSS, "Anxiety and Panic", only_one, T, embedder
        )
        is None
    )
    assert (
        degenerate.off_scenario(
            JOB_LOSS_DESCRIPTION, JOB_LOSS, "Academic Stress", hand_made_centroids, T, embedder
        )
        is None
    )
    for vector in hand_made_centroids.values():
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


# ---- speed and calibration ---------------------------------------------------------------


def test_seed_dialogues_pass_every_gate(embedder: degenerate.Embeds) -> None:
    from generation.embeddings import dialogue_text

    seeds = _seeds()
    rejected = []
    for seed in seeds:
        turns = seed["turns"]
        assert isinstance(turns, list)
        for gate in (
            degenerate.repetition(turns, T),
            degenerate.role_confusion(turns, T, embedder),
        ):
            if gate:
                rejected.append(gate)
    # Off scenario, leave one out: each seed is left out of its own scenario's centroid.
    texts = [dialogue_text(str(s["description"]), [t for _, t in s["turns"]]) for s in seeds]  # type: ignore[attr-defined]
    vectors = embedder.embed(texts)
    judged = 0
    for k, seed in enumerate(seeds):
        by: dict[str, list[int]] = {}
        for j, other in enumerate(seeds):
            if j != k:
                by.setdefault(str(other["scene"]), []).append(j)
        cents = {name: degenerate.centroid(vectors[js]) for name, js in by.items()}
        stats = degenerate.off_scenario_statistics(vectors[k], str(seed["scene"]), cents)
        if stats is None:
            continue
        judged += 1
        reason = degenerate.off_scenario_reason(stats, str(seed["scene"]), T)
        if reason:
            rejected.append(reason)
    assert judged >= 20
    assert len(rejected) / len(seeds) <= 0.02, rejected


def test_esconv_rejection_rate_of_the_pattern_gates() -> None:
    folder = Path(os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))
    if not (folder / "test.txt").is_file():
        pytest.skip("ESConv is not present")
    dialogues = 0
    rejected = 0
    for split in ("train", "valid", "test"):
        for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            utterances = [
                ("seeker" if u["speaker"] == "usr" else "supporter", u["text"])
                for u in json.loads(line)["dialog"]
            ]
            turns: list[Turn] = []
            last = ""
            for role, text in utterances:
                key = " ".join(degenerate.words(text))
                if turns and turns[-1][0] == role:
                    if key != last:  # a double post is dropped, as the bench does
                        turns[-1] = (role, f"{turns[-1][1]} {text}")
                elif text.strip():
                    turns.append((role, text))
                last = key
            dialogues += 1
            rejected += bool(degenerate.repetition(turns, T) or degenerate.role_confusion(turns, T))
    assert dialogues == 1300
    assert rejected / dialogues <= 0.02


# ---- in a job: each gate its own failure class, before any reviewer sees the dialogue ----------


@pytest.mark.django_db(transaction=True)  # the job's threads write through their own connections
def test_degenerate_dialogues_from_a_teacher_never_reach_a_reviewer(
    settings, vocabulary_db, seeds, client, lead
) -> None:
    from django.urls import reverse

    from curation.models import Dialogue, Scenario
    from generation import runner
    from generation.models import GenerationFailure, GenerationJob, new_job
    from generation.teacher import Sampling, TeacherConfig
    from tests.fake_teacher import DEGENERATE, FakeTeacher

    settings.GENERATION_GATES = ["repetition", "role_confusion", "prompt_leakage", "off_scenario"]
    settings.TEACHER_MAX_RETRIES = 0
    with FakeTeacher() as fake:
        fake.script = ["looping", "role_swapped", "off_topic"]
        job = new_job(
            GenerationJob.Kind.SELFCHAT,
            teacher=TeacherConfig("http", "fake-teacher", fake.url).as_dict(),
            sampling=Sampling(max_tokens=2000).as_dict(),
            scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
            per_scenario=1,
            duplicate_threshold=None,
        )
        job = runner.run_inline(job.pk, concurrency=1)
    assert job.quality_gates["gates"] == [
        "repetition",
        "role_confusion",
        "prompt_leakage",
        "off_scenario",
    ]
    failures = list(
        GenerationFailure.objects.filter(job=job)
        .order_by("attempt")
        .values_list("failure_class", "detail")
    )
    assert [kind for kind, _ in failures] == ["repetition", "role_confusion", "off_scenario"]
    assert "find your perfect path" in failures[0][1]
    assert "(seeker)" in failures[1][1]
    assert "Anxiety and Panic" in failures[2][1]
    texts = {t for d in Dialogue.objects.all() for t in d.turns.values_list("text", flat=True)}
    for record in DEGENERATE.values():
        assert not {u.get("User") or u.get("AI") for u in record["content"]} & texts
    client.force_login(lead)
    page = client.get(reverse("generation-job-detail", args=[job.pk])).content.decode()
    assert "Quality gates" in page and "<code>off_scenario</code>" in page
    for kind in ("repetition", "role_confusion", "off_scenario"):
        assert f'href="?failure={kind}#failures">{kind}</a> 1' in page  # counted by class
    sample = client.get(
        reverse("generation-job-detail", args=[job.pk]), {"failure": "off_scenario"}
    )
    assert "sourdough" in sample.content.decode()  # the sample shows what the teacher wrote


def test_a_dialogue_that_repeats_our_instructions_is_prompt_leakage_and_real_ones_are_not() -> None:
    import json
    import os
    from pathlib import Path

    from curation.parsing import ParsedDialogue, ParsedTurn
    from generation import quality
    from generation.inpainting import DIALOGUE_INSTRUCTIONS, shared_instructions
    from generation.selfchat import Failure

    echo = ParsedDialogue(
        scene="Anxiety and Panic",
        description="The seeker's situation in one to three sentences, about panic at work.",
        turns=[
            ParsedTurn(role="seeker", text="My chest gets tight in meetings."),
            ParsedTurn(role="supporter", text="That sounds frightening.", strategy="Others"),
        ],
        taxonomy="extes",
    )
    gate = quality.gate_for({"gates": ["prompt_leakage"], "thresholds": {}}, "Anxiety and Panic")
    with pytest.raises(Failure) as caught:
        gate(echo)
    assert caught.value.failure_class == "prompt_leakage"
    assert "the description" in caught.value.detail
    # Real dialogues never share five words in a row with the instructions (measured: 0 of the
    # 48 seeds and 0 of ESConv's 1,300).
    seeds = json.loads(Path("curation/seeds/seed_dialogues.json").read_text())
    for record in seeds:
        for text in [record.get("description", "")] + [
            list(u.values())[-1] for u in record["content"]
        ]:
            assert shared_instructions(text, DIALOGUE_INSTRUCTIONS) is None, text
    esconv = Path(os.environ.get("EXTES_ESCONV_DIR", "../shared/data/esconv")) / "train.txt"
    for line in esconv.read_text().splitlines():  # the fake teacher needs ESConv too
        record = json.loads(line)
        for text in [record.get("situation", "")] + [u["text"] for u in record["dialog"]]:
            assert shared_instructions(text, DIALOGUE_INSTRUCTIONS) is None, text


def test_a_template_placeholder_left_in_a_dialogue_is_prompt_leakage_and_rare_in_real_ones():
    import json
    import os
    from pathlib import Path

    from curation.parsing import ParsedDialogue, ParsedTurn
    from generation import quality
    from generation.selfchat import Failure

    slot = ParsedDialogue(
        scene="Anxiety and Panic",
        description="Panic attacks on the way to work.",
        turns=[
            ParsedTurn(role="seeker", text="My chest gets tight in meetings."),
            ParsedTurn(role="supporter", text="{Your Name}, tell me more.", strategy="Others"),
        ],
        taxonomy="extes",
    )
    gate = quality.gate_for({"gates": ["prompt_leakage"], "thresholds": {}}, "Anxiety and Panic")
    with pytest.raises(Failure) as caught:
        gate(slot)
    assert caught.value.failure_class == "prompt_leakage"
    assert "turn 1 holds a template placeholder" in caught.value.detail
    seeds = json.loads(Path("curation/seeds/seed_dialogues.json").read_text())
    for record in seeds:
        texts = [list(u.values())[-1] for u in record["content"]]
        assert quality.leakage(record.get("description", ""), texts) is None
    esconv = Path(os.environ.get("EXTES_ESCONV_DIR", "../shared/data/esconv")) / "train.txt"
    records = [json.loads(line) for line in esconv.read_text().splitlines()]
    rejected = [
        r
        for r in records
        if quality.leakage(r.get("situation", ""), [u["text"] for u in r["dialog"]])
    ]
    # Within the 2% the gates may reject of real dialogues (measured: 1 of 910 here, a
    # counsellor's own "[list some of the details you have documented]").
    assert len(rejected) <= 0.02 * len(records)
