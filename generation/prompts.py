"""Prompt templates, in our own words. A template's version is a hash of its text, so every
generated item records exactly which wording produced it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

DIALOGUE_SYSTEM = """\
You write realistic practice conversations for people learning to give emotional support. \
A seeker talks about something hard in their life; a supporter listens, understands and helps \
them find their own way forward. The supporter never judges, never diagnoses, never claims to be \
a therapist, and when someone may be in danger gently points them to crisis help."""

DIALOGUE_USER = """\
Scenario: {scenario}

The supporter uses these strategies. Label every supporter turn with exactly one of these names \
(use an empty label only for a plain greeting or goodbye):
{strategies}

{example_intro}
{examples}

Now invent a new and specific situation for the scenario "{scenario}": a different person, with \
their own circumstances and details, and a problem unlike the example. Write the whole \
conversation between the seeker ("User") and the supporter ("AI"): {min_utterances} to \
{max_utterances} utterances, the seeker speaks first, they take turns, and it ends with the \
supporter. Make it sound like two real people talking.

{answer}"""

# How the answer is asked for: with free text the shape is shown; under structured output the
# server (or the local grammar) holds the shape, and placeholders would only be copied (a small
# model wrote "<seeker>" into its turns).
DIALOGUE_SHAPE_FREE = """\
Answer with one JSON object and nothing else, in this shape:
{{"scene": "{scenario}", "description": "<the seeker's situation in one to three sentences>", \
"content": [{{"User": "<seeker>"}}, {{"AI Strategy": "<strategy>", "AI": "<supporter>"}}]}}"""
DIALOGUE_SHAPE_STRUCTURED = """\
Answer with one JSON object: "description" is the seeker's situation in one to three sentences, \
and "content" lists the utterances in order, the seeker's under the key User, the supporter's \
under the key AI with the strategy's name under "AI Strategy"."""

DIALOGUE_RETRY = """\
That answer could not be used: {error}
Write the conversation again, as one JSON object in this shape and nothing else:
{{"scene": "{scenario}", "description": "...", "content": [{{"User": "..."}}, \
{{"AI Strategy": "...", "AI": "..."}}]}}"""

SITUATION_SYSTEM = "You invent short, specific, realistic life situations for role-play practice."
SITUATION_USER = """\
In one or two sentences, written in the first person, describe a specific situation of someone \
dealing with: {scenario}. Give concrete details (who, what happened, since when). Write only the \
situation."""

SEEKER_SYSTEM = """\
You are role-playing the seeker: a person who reaches out to a supportive listener. Your \
situation: {description}
Speak as this person, in the first person, in one to three sentences, like a real chat message. \
Share feelings and details gradually. Write only your next message, without names or labels."""
SEEKER_OPENING = "Start the conversation: say what is on your mind."

SUPPORTER_SYSTEM = """\
You are a warm, careful emotional-support listener talking with someone about a hard time in \
their life. You never judge or diagnose and you do not claim to be a therapist. Answer in one to \
three sentences, like a real chat message, without names or labels."""
SUPPORTER_STRATEGY = "In your next reply use this support strategy: {name}: {definition}"
SUPPORTER_CHOOSE = """\
Choose the support strategy that fits best from: {names}.
Start your reply with the strategy name in square brackets, e.g. "[{example}] ...\""""

INPAINT_SYSTEM = """\
You help build training data for emotional-support conversations. You are shown a conversation \
with one supporter reply removed and write replies that could fill the gap."""
INPAINT_USER = """\
Here is a conversation between a seeker and a supporter. One supporter reply has been removed \
and marked [MASKED].

{conversation}

Write the supporter reply that belongs where [MASKED] is. It must fit what comes before{after} \
and use this strategy: {strategy}. Say it in your own way, in one to three sentences. Write only \
the reply."""

INPAINT_MANY_USER = """\
Here is a conversation between a seeker and a supporter. One supporter reply has been removed \
and marked [MASKED].

{conversation}

Write {n} different supporter replies, each of which could stand where [MASKED] is. Each must fit \
what comes before{after} and use this strategy: {strategy}. Make them differ from one another in \
wording and in approach, one to three sentences each. Answer with one JSON object and nothing \
else, in this shape: {{"replies": ["<first reply>", "<second reply>"]}}"""

TEMPLATES = {
    "dialogue": (
        DIALOGUE_SYSTEM,
        DIALOGUE_USER,
        DIALOGUE_SHAPE_FREE,
        DIALOGUE_SHAPE_STRUCTURED,
        DIALOGUE_RETRY,
    ),
    "turns": (
        SITUATION_SYSTEM,
        SITUATION_USER,
        SEEKER_SYSTEM,
        SEEKER_OPENING,
        SUPPORTER_SYSTEM,
        SUPPORTER_STRATEGY,
        SUPPORTER_CHOOSE,
    ),
    "dri": (INPAINT_SYSTEM, INPAINT_USER, INPAINT_MANY_USER),
}


def version(kind: str) -> str:
    """sha256 of the templates a job kind uses, shortened: it changes whenever the wording does."""
    text = "\n\0".join(TEMPLATES[kind])
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def strategy_lines(strategies: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"- {name}: {definition}" for name, definition in strategies)


def dialogue_messages(
    scenario: str,
    strategies: Iterable[tuple[str, str]],
    examples: list[dict[str, Any]],
    min_utterances: int,
    max_utterances: int,
    structured: bool = False,
) -> list[dict[str, str]]:
    """The whole-dialogue request; `structured`: the answer's shape is enforced, not shown."""
    intro = (
        "Here is an example of the kind of conversation we want:"
        if len(examples) == 1
        else "Here are examples of the kind of conversation we want:"
    )
    shown = "\n\n".join(json.dumps(example, ensure_ascii=False) for example in examples)
    user = DIALOGUE_USER.format(
        scenario=scenario,
        strategies=strategy_lines(strategies),
        example_intro=intro,
        examples=shown,
        min_utterances=min_utterances,
        max_utterances=max_utterances,
        answer=(DIALOGUE_SHAPE_STRUCTURED if structured else DIALOGUE_SHAPE_FREE).format(
            scenario=scenario
        ),
    )
    return [{"role": "system", "content": DIALOGUE_SYSTEM}, {"role": "user", "content": user}]


def dialogue_retry(scenario: str, error: str) -> str:
    return DIALOGUE_RETRY.format(scenario=scenario, error=error)


def inpaint_messages(
    conversation: str, strategy: str, right_context: bool, many: int = 0
) -> list[dict[str, str]]:
    """The DRI request: one reply (sampled n times), or `many` replies in one JSON answer."""
    after = " and what follows" if right_context else ""
    if many:
        user = INPAINT_MANY_USER.format(
            conversation=conversation, strategy=strategy, after=after, n=many
        )
    else:
        user = INPAINT_USER.format(conversation=conversation, strategy=strategy, after=after)
    return [{"role": "system", "content": INPAINT_SYSTEM}, {"role": "user", "content": user}]
