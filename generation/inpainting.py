"""DRI, Diverse Response Inpainting: mask one supporter turn and have the teacher write several
different replies for the gap.

The teacher sees the conversation with the turn replaced by [MASKED] (the turns before it, and
those after it unless `right_context` is off) and the strategy of the original reply; one request
asks for `n` samples. Replies that are empty, cut off, refusals, that leak the prompt (the mask
marker, a role tag, or words of our instructions: `prompt_leakage`), or near-duplicates of the
original or of each other are dropped and asked for again, up to `max_attempts` requests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from generation import prompts
from generation.selfchat import Failure, OnCall, _clean_turn, no_report
from generation.teacher import Reply, Sampling, Teacher, TeacherError, Usage

MASK = "[MASKED]"
# A run of this many words copied from our instructions is the prompt leaking into the reply.
LEAK_WORDS = 5
_ROLE_TAG = re.compile(
    r"(?:^|[\n.!?]\s*)(?:seeker|supporter|user|assistant|system)\s*:|<\|[^|>]{1,30}\|>"
    r"|\[/?(?:inst|mask\w*)\]",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9']+")


def _grams(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + LEAK_WORDS]) for i in range(len(words) - LEAK_WORDS + 1)}


# The words of the instructions alone (the conversation and the strategy left out).
_INSTRUCTIONS = _grams(
    prompts.INPAINT_SYSTEM
    + "\n"
    + prompts.INPAINT_USER.format(conversation="\n", strategy="\n", after=" and what follows")
)


def prompt_leakage(text: str) -> str | None:
    """Why a candidate repeats the prompt instead of answering it, or None."""
    if MASK.lower() in text.lower() or "[mask" in text.lower():
        return "it repeats the mask marker"
    tag = _ROLE_TAG.search(text)
    if tag:
        return f"it holds a role tag ({tag.group(0).strip()!r})"
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
    messages = prompts.inpaint_messages(
        masked_conversation(turns, masked, right_context), strategy, right_context
    )
    turn_sampling = Sampling(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=min(sampling.max_tokens, 200),
        seed=sampling.seed,
    )
    while len(result.texts) < n and result.attempts < max_attempts:
        result.attempts += 1
        try:
            reply = teacher.chat(messages, turn_sampling, n=n - len(result.texts))
        except TeacherError as exc:
            result.failures.append(Failure("http_error", str(exc)))
            on_call(Usage(), None)
            continue
        result.usage.add(reply.usage)
        on_call(reply.usage, None)
        fresh: list[str] = []
        for completion in reply.completions:
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
