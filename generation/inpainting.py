"""DRI, Diverse Response Inpainting: mask one supporter turn and have the teacher write several
different replies for the gap.

The teacher sees the conversation with the turn replaced by [MASKED] (the turns before it, and
those after it unless `right_context` is off) and the strategy of the original reply; one request
asks for `n` samples. Replies that are empty, cut off, refusals, that leak the prompt (the mask
marker, a role tag, a template placeholder or words of our instructions: `prompt_leakage`), or near-duplicates of the
original or of each other are dropped and asked for again, up to `max_attempts` requests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from generation import prompts, schemas
from generation.selfchat import (
    Failure,
    OnCall,
    _clean_turn,
    extract_json,
    is_refusal,
    no_report,
    read_structured,
)
from generation.teacher import Completion, Reply, Sampling, Teacher, TeacherError, Usage

MASK = "[MASKED]"
# A run of this many words copied from our instructions is the prompt leaking into the reply.
LEAK_WORDS = 5
_ROLE_TAG = re.compile(
    r"(?:^|[\n.!?]\s*)(?:seeker|supporter|user|assistant|system)\s*:|<\|[^|>]{1,30}\|>"
    r"|\[/?(?:inst|mask\w*)\]",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9']+")
# A template's slot left in the text: "[insert message here]", "{Your Name}". Neither ESConv,
# the ExTES sample nor our seeds hold a bracketed word (bench/degenerate_gates.py).
_PLACEHOLDER = re.compile(
    r"\[[^\[\]\n]{0,40}[A-Za-z][^\[\]\n]{0,40}\]|\{[^{}\n]{0,40}[A-Za-z][^{}\n]{0,40}\}"
)


def placeholder(text: str) -> str | None:
    """The first template placeholder in the text ("[insert …]", "{name}"), or None."""
    found = _PLACEHOLDER.search(text or "")
    return found.group(0) if found else None


def _grams(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + LEAK_WORDS]) for i in range(len(words) - LEAK_WORDS + 1)}


# The words of the instructions alone (the conversation and the strategy left out).
_INSTRUCTIONS = _grams(
    prompts.INPAINT_SYSTEM
    + "\n"
    + prompts.INPAINT_USER.format(conversation="\n", strategy="\n", after=" and what follows")
    + "\n"
    + prompts.INPAINT_MANY_USER.format(
        conversation="\n", strategy="\n", after=" and what follows", n="\n"
    )
)


def shared_instructions(text: str, instructions: set[tuple[str, ...]]) -> str | None:
    """A run of LEAK_WORDS words of `text` found in our instructions, or None."""
    shared = _grams(text) & instructions
    return " ".join(sorted(shared)[0]) if shared else None


# The whole-dialogue instructions' words (what the teacher is told, not the examples it is shown).
DIALOGUE_INSTRUCTIONS = _grams(
    "\n".join(
        [
            prompts.DIALOGUE_SYSTEM,
            prompts.DIALOGUE_USER.format(
                scenario="\n",
                strategies="\n",
                example_intro="\n",
                examples="\n",
                min_utterances="\n",
                max_utterances="\n",
                answer="\n",
            ),
            prompts.DIALOGUE_SHAPE_STRUCTURED,
            prompts.DIALOGUE_SHAPE_FREE.format(scenario="\n"),
            prompts.DIALOGUE_RETRY.format(scenario="\n", error="\n"),
        ]
    )
)


def prompt_leakage(text: str) -> str | None:
    """Why a candidate repeats the prompt instead of answering it, or None."""
    if MASK.lower() in text.lower() or "[mask" in text.lower():
        return "it repeats the mask marker"
    tag = _ROLE_TAG.search(text)
    if tag:
        return f"it holds a role tag ({tag.group(0).strip()!r})"
    slot = placeholder(text)
    if slot:
        return f"it holds a template placeholder ({slot!r})"
    shared = _grams(text) & _INSTRUCTIONS
    if shared:
        return f"it repeats the instructions (“{' '.join(sorted(shared)[0])}”)"
    return None


# Given the original and the candidates so far, returns the indices of the new texts to keep.
Deduplicate = Callable[[str, list[str], list[str]], list[int]]


@dataclass(frozen=True)
class ContextTurn:
    role: str  # "seeker" | "supporter"
    text: str


@dataclass
class Candidates:
    texts: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    response_format: str = ""  # the form of the last answer read


def choose_turns(
    supporter_indices: Sequence[int],
    strategies: Sequence[str | None],
    mask: str,
    k: int,
    wanted: Sequence[str],
    rng: random.Random,
) -> list[int]:
    """Which supporter turns to mask: "all", k "random" ones, or those whose strategy is wanted."""
    if mask == "all":
        return list(supporter_indices)
    if mask == "strategy":
        keep = {w.casefold() for w in wanted}
        return [
            i
            for i, s in zip(supporter_indices, strategies, strict=True)
            if s and s.casefold() in keep
        ]
    return sorted(rng.sample(list(supporter_indices), min(k, len(supporter_indices))))


def masked_conversation(turns: Sequence[ContextTurn], masked: int, right_context: bool) -> str:
    shown = turns if right_context else turns[: masked + 1]
    lines = []
    for index, turn in enumerate(shown):
        speaker = "Seeker" if turn.role == "seeker" else "Supporter"
        lines.append(f"{speaker}: {MASK if index == masked else turn.text}")
    return "\n".join(lines)


def write_candidates(
    teacher: Teacher,
    turns: Sequence[ContextTurn],
    masked: int,
    strategy: str,
    n: int,
    sampling: Sampling,
    deduplicate: Deduplicate,
    *,
    right_context: bool = True,
    max_attempts: int = 3,
    on_call: OnCall = no_report,
) -> Candidates:
    result = Candidates()
    original = turns[masked].text
    conversation = masked_conversation(turns, masked, right_context)
    while len(result.texts) < n and result.attempts < max_attempts:
        result.attempts += 1
        wanted = n - len(result.texts)
        # Under structured output one request asks for every reply still wanted, as an array
        # (servers that ignore n give them all); without it, one reply sampled `wanted` times.
        many = wanted if teacher.structured_format() != "none" else 0
        turn_sampling = replace(sampling, max_tokens=min(sampling.max_tokens, 200 * max(1, many)))
        messages = prompts.inpaint_messages(conversation, strategy, right_context, many)
        try:
            if many:
                reply = teacher.chat(messages, turn_sampling, schema=schemas.replies_schema(many))
            else:
                reply = teacher.chat(messages, turn_sampling, n=wanted)
        except TeacherError as exc:
            result.failures.append(Failure("http_error", str(exc)))
            on_call(Usage(), None)
            continue
        result.usage.add(reply.usage)
        on_call(reply.usage, None)
        try:
            completions, result.response_format = _completions(reply, many)
        except Failure as failure:
            result.failures.append(failure)
            continue
        fresh: list[str] = []
        for completion in completions:
            try:
                text = _clean_turn(Reply([completion]))
            except Failure as failure:
                result.failures.append(failure)
                continue
            leak = prompt_leakage(text)
            if leak:
                result.failures.append(Failure("prompt_leakage", leak, text))
            else:
                fresh.append(text)
        keep = set(deduplicate(original, result.texts, fresh))
        for index, text in enumerate(fresh):
            if index in keep:
                result.texts.append(text)
            else:
                result.failures.append(
                    Failure("duplicate", "too close to the original or another candidate", text)
                )
    return result


def _completions(reply: Reply, many: int) -> tuple[list[Completion], str]:
    """The replies in an answer and the form they came in: each choice, or the array of a
    structured answer."""
    if not many:
        return reply.completions, reply.response_format
    text = reply.text
    truncated = bool(reply.completions and reply.completions[0].truncated)
    if is_refusal(text):
        return reply.completions[:1], reply.response_format  # a refusal, as the checks read it
    form = reply.response_format
    record = (
        read_structured(text, schemas.replies_model(many), truncated) if form != "none" else None
    )
    if record is None:
        form = "none"  # the server did not enforce the form: free text
        if "{" not in text:
            return reply.completions[:1], form  # one reply, in prose
        record = extract_json(text)
    replies = record.get("replies") if isinstance(record, dict) else None
    if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
        raise Failure("schema", "the answer is not a list of replies", text)
    return [Completion(r, "stop") for r in replies[:many]], form


def exact_deduplicate(original: str, kept: list[str], fresh: list[str]) -> list[int]:
    """Without embeddings: drop texts equal (ignoring case and spacing) to one already seen."""
    seen = {" ".join(t.casefold().split()) for t in [original, *kept]}
    keep = []
    for index, text in enumerate(fresh):
        key = " ".join(text.casefold().split())
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return keep
