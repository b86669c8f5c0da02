"""The crisis / self-harm check (generation.safety).

DEV_* lists are the examples the patterns were developed against. The held-out file
tests/data/crisis_snippets.jsonl was written before any pattern and is only measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generation.safety import CATEGORIES, CrisisCheck, check_texts, normalise

HELD_OUT = Path(__file__).resolve().parent / "data" / "crisis_snippets.jsonl"

# Figures of speech and sad-but-safe statements: must not fire.
DEV_SAFE = [
    "this exam is killing me",
    "I could die of embarrassment, honestly",
    "My boss will murder me if the report is late",
    "I'm dead tired",
    "We need to cut costs this quarter",
    "Shoot me an email when you can",
    "My back is killing me after moving house",
    "I'm dying to see my friends again",
    "My dad is gonna kill me when he sees the car",
    "I'd kill for a holiday right now",
    "I could have throttled him, he was so rude, but we made up",
    "I could kill my brother for reading my diary",
    "The news really hit me hard",
    "It hit me that I'm alone now that she's gone",
    "I cut my fringe myself and regret it",
    "I'm cutting back on caffeine",
    "I'm taking my life back after the divorce",
    "I want to take my life in a different direction",
    "I'd rather die than call him first",
    "I'm scared I won't wake up in time for my shift",
    "I'm tired of living with roommates",
    "Mum pushes me to do better at school",
    "He pushed me away when I tried to talk",
    "My manager forces me to work weekends",
    "I ended things with my girlfriend last month",
    "I'm done with this job for good",
    "When I'm gone on holiday my neighbour feeds the cat",
    "I hurt myself playing football on Saturday",
    "I feel like a burden when I ask my flatmate for lifts",
    "What's the point of revising if the teacher hates me?",
    "My parents shout a lot but nobody ever gets hurt",
    "My grandad died by the sea where he grew up",
    "I gave away my old books to the charity shop",
    "The breakup killed my confidence",
    "I'm scared I'll hurt someone's feelings if I say no",
    "My brother used to hit me when we were kids, we're close now",
    "I get so lonely at night since the divorce.",
    "Sometimes I cry in the shower so my kids don't hear.",
    "He just wanted to end it, he said he was tired of arguing",
    "She decided to end things after six years",
    "How can I take the pressure off myself?",
    "I don't want them gossiping when I am not around",
    "I feel like I could sleep forever, the baby is up every night",
    "I don't want to live in fear of failing",
    "They keep pushing me over the edge with their comments",
    "He hasn't hurt me physically, but he's cold",
    "My dad used to beat me until I was fifteen",
    "I don't want my grandmother to die",
    "I'm volunteering at a crisis line next month",
]

# (text, expected category) - direct and indirect signals.
DEV_CRISIS = [
    ("i\u2019m going to kill myself tonight", "suicide"),
    ("I have been thinking about suicide a lot", "suicide"),
    ("I just want to end it all", "suicide"),
    ("I'd be better off dead", "suicide"),
    ("I wish I had never been born", "suicide"),
    ("My family would be happier without me", "suicide"),
    ("no one would care if i was dead", "suicide"),
    ("I hope I don't wake up tomorrow", "suicide"),
    ("im tired of life", "suicide"),
    ("I won't be your problem much longer", "suicide"),
    ("I've been handing out my belongings to my cousins", "suicide"),
    ("I said goodbye to everyone at work today, for the last time", "suicide"),
    ("What is the point of living anymore", "suicide"),
    ("I've been saving up my tablets", "suicide"),
    ("I'm just a burden to everyone", "suicide"),
    ("I want to go to sleep and never wake up", "suicide"),
    ("My wife can have the house after I'm gone", "suicide"),
    ("I can't see myself being alive next year", "suicide"),
    ("i dont want to live anymore", "suicide"),
    ("I want to disappear forever", "suicide"),
    ("I've started self harming", "self_harm"),
    ("I've been cutting again", "self_harm"),
    ("I hurt myself on purpose when I'm overwhelmed", "self_harm"),
    ("I hide the cuts on my thighs", "self_harm"),
    ("I deserve the pain", "self_harm"),
    ("the only thing that helps is hurting myself", "self_harm"),
    ("I hit my head against the wall until it bled", "self_harm"),
    ("I want to hurt him so badly he can't walk", "harm_to_others"),
    ("Sometimes I have urges to harm my kids", "harm_to_others"),
    ("I'm gonna make them pay for what they did", "harm_to_others"),
    ("I'm thinking of bringing a knife to school", "harm_to_others"),
    ("My dad beats my mum and me", "abuse"),
    ("He slapped me again this morning", "abuse"),
    ("She threatened to kill me if I tell anyone", "abuse"),
    ("My stepfather forced me to do things I didn't want to", "abuse"),
    ("I'm afraid of what he'll do to me when he gets home", "abuse"),
    ("I'm in an abusive relationship", "abuse"),
    ("I have to hide the bruises with long sleeves", "abuse"),
    ("Honestly it would be easier to just be dead", "suicide"),
    ("Just want to end it.", "suicide"),
    ("pain is the only thing reminding me I'm real", "self_harm"),
    ("I want to beat the hell out of the guy who did this", "harm_to_others"),
    ("A part of me wants him dead", "harm_to_others"),
    ("My wife has been abusing me physically for years", "abuse"),
    ("I share a flat with my violent, abusive boyfriend", "abuse"),
    ("I'm a victim of domestic abuse", "abuse"),
]


def test_categories_are_the_four() -> None:
    assert CATEGORIES == ("suicide", "self_harm", "harm_to_others", "abuse")


def test_normalise_handles_contractions_and_curly_apostrophes() -> None:
    assert normalise("I Don\u2019t WANT to") == "i do not want to"
    assert normalise("im tired, I can't, i'll, won't") == "i am tired, i can not, i will, will not"
    assert normalise("I\u2018ve  been\nthere") == "i have been there"


@pytest.mark.parametrize("text", DEV_SAFE)
def test_idioms_and_sad_but_safe_do_not_fire(text: str) -> None:
    result = check_texts([text])
    assert not result.flagged, result


@pytest.mark.parametrize(("text", "category"), DEV_CRISIS)
def test_crisis_signals_fire_with_category(text: str, category: str) -> None:
    result = check_texts([text])
    assert result.flagged, text
    assert category in result.categories, result


def test_result_shape_and_several_texts() -> None:
    result = check_texts(
        ["A student worried about exams.", "This exam is killing me.", "He hits me when he drinks."]
    )
    assert isinstance(result, CrisisCheck)
    assert result.flagged
    assert result.categories == ("abuse",)
    assert result.matches == ("He hits me when he drinks.",)
    empty = check_texts([])
    assert empty == CrisisCheck(flagged=False, categories=(), matches=())
    assert not check_texts(["", "   "]).flagged


def test_categories_follow_fixed_order_and_matches_are_deduplicated() -> None:
    result = check_texts(["My husband beats me. I want to die.", "I want to die."])
    assert result.categories == ("suicide", "abuse")
    assert result.matches == ("My husband beats me.", "I want to die.")


def _held_out() -> list[dict]:
    with HELD_OUT.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_held_out_file_is_well_formed() -> None:
    rows = _held_out()
    crisis = [r for r in rows if r["crisis"]]
    safe = [r for r in rows if not r["crisis"]]
    assert len(crisis) >= 80 and len(safe) >= 80
    assert sum(r["note"] == "indirect" for r in crisis) >= 40
    assert sum(r["note"] in ("idiom", "neutral") for r in safe) >= 40
    for r in rows:
        assert r["category"] in (*CATEGORIES, "none")
        assert (r["category"] == "none") == (not r["crisis"])
        assert r["note"] in ("direct", "indirect", "idiom", "neutral")


def test_held_out_recall_and_precision() -> None:
    rows = _held_out()
    tp = fp = fn = 0
    right_category = 0
    missed: list[str] = []
    false_alarms: list[str] = []
    for r in rows:
        result = check_texts([r["text"]])
        if r["crisis"] and result.flagged:
            tp += 1
            right_category += r["category"] in result.categories
        elif r["crisis"]:
            fn += 1
            missed.append(r["text"])
        elif result.flagged:
            fp += 1
            false_alarms.append(f"{r['text']}  -> {result.categories}")
    recall = tp / (tp + fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    print(
        f"\nheld-out crisis check: recall {recall:.3f} ({tp}/{tp + fn}), "
        f"precision {precision:.3f} ({tp}/{tp + fp}), "
        f"right category among hits {right_category}/{tp}"
    )
    for text in missed:
        print("  missed:", text)
    for text in false_alarms:
        print("  false alarm:", text)
    assert recall >= 0.95
    assert precision >= 0.85
