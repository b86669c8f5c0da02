"""Self-chat expansion: the teacher writes a whole dialogue for a scenario.

Two ways, both ending in the importer's parser so a generated dialogue passes exactly the checks an
imported one does, plus stricter ones (it must alternate, open with the seeker, use known labels):
- `write_dialogue` (the paper's method): one prompt with strategy definitions and example dialogues;
  the reply is read tolerantly (code fences, prose around the JSON, key case) and on failure the
  teacher is asked again with the reason, up to `max_attempts` times.
- `write_dialogue_by_turns`: robust with small models; the teacher plays the seeker and the
  supporter in turn, one short message per call, each supporter turn with a chosen strategy.

Nothing here touches the database; `generation.runner` stores what comes back.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from curation.parsing import ParsedDialogue, Rejected, Vocabulary, parse_record
from generation import prompts, schemas
from generation.teacher import Message, Reply, Sampling, Teacher, TeacherError, Usage


class Failure(Exception):
    """One failed attempt, classified (see generation.models.FAILURE_CLASSES)."""

    def __init__(self, failure_class: str, detail: str, raw: str = "") -> None:
        super().__init__(f"{failure_class}: {detail}")
        self.failure_class = failure_class
        self.detail = detail
        self.raw = raw


@dataclass
class Produced:
    """What one unit of work gave: the dialogue (or None) and every failed attempt on the way."""

    dialogue: ParsedDialogue | None = None
    raw: str = ""  # the teacher's output that became the dialogue
    failures: list[Failure] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    response_format: str = ""  # the form of the last answer read ("json_schema", …, "none")


# A gate runs on a parsed dialogue and raises Failure (e.g. "duplicate") to refuse it.
Gate = Callable[[ParsedDialogue], None]

# Called after every teacher request with its usage (empty when it failed) and, turn by turn,
# the number of utterances the current attempt has so far; the runner keeps live counts with it.
OnCall = Callable[[Usage, int | None], None]


def no_report(usage: Usage, turns: int | None = None) -> None:
    pass


@dataclass(frozen=True)
class DialogueSpec:
    scenario: str
    strategies: Sequence[tuple[str, str]]  # (name, definition) of the ExTES strategies
    examples: Sequence[dict[str, Any]]  # ExTES records shown to the teacher
    min_utterances: int = 8
    max_utterances: int = 30


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|i apologi[sz]e|sorry, but|i can(?:no|')t (?:help|assist|"
    r"comply|write|do)|i'?m not able to|i am unable|as an ai\b)",
    re.IGNORECASE,
)
_ROLE_LABEL = re.compile(r"^\s*(seeker|user|supporter|ai|assistant|listener)\s*:\s*", re.IGNORECASE)


def extract_json(text: str) -> Any:
    """The dialogue object in a reply: inside a code fence or surrounded by prose.

    Prefers an object with a "content" key (any case): inside a broken dialogue object the
    utterance objects still parse, and they are not the answer.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    first_whole: dict[str, Any] | None = None
    last_error = "no JSON object in the reply"
    for candidate in candidates:
        start = candidate.find("{")
        outermost = True
        while start != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(candidate[start:])
            except RecursionError:
                # Deeper than Python's json reads: no dialogue is, so no need to look inside.
                raise Failure("invalid_json", "JSON nested too deeply", text) from None
            except json.JSONDecodeError as exc:
                if outermost:
                    last_error = f"not valid JSON ({exc.msg} at character {start + exc.pos})"
                outermost = False
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                if any(str(k).strip().casefold() == "content" for k in value):
                    return value
                if outermost and first_whole is None:
                    first_whole = value
            outermost = False
            start = candidate.find("{", start + 1)
    if first_whole is not None:
        return first_whole
    raise Failure("invalid_json", last_error, text)


def read_structured(
    text: str, model: type[BaseModel], truncated: bool = False
) -> dict[str, Any] | None:
    """An answer asked for under structured output, validated by the model its schema came from.

    None when the answer does not follow the schema: the server took the form and did not enforce
    it (some ignore it), so the answer is read as free text instead, by the tolerant reader and
    the importer's rules. A cut-off answer is "truncated" either way.
    """
    try:
        value = model.model_validate_json(text.strip())
    except ValidationError as exc:
        errors = exc.errors()
        if truncated and errors and errors[0]["type"] == "json_invalid":
            raise Failure(
                "truncated", "the answer was cut off (max tokens reached)", text
            ) from None
        return None
    return value.model_dump(by_alias=True)


def is_refusal(text: str) -> bool:
    return "{" not in text and bool(_REFUSAL.search(text.strip()[:200]))


def validate(
    record: Any, spec: DialogueSpec, vocab: Vocabulary, raw: str, gates: Sequence[Gate] = ()
) -> ParsedDialogue:
    """Parse like the importer, then hold a generated dialogue to the stricter rules."""
    if isinstance(record, dict):
        # The scenario is ours to choose; whatever the teacher wrote there is ignored.
        record = {k: v for k, v in record.items() if str(k).strip().casefold() != "scene"}
        record = {"scene": spec.scenario, **record}
    try:
        dialogue = parse_record(record, "extes", vocab)
    except Rejected as exc:
        failure_class = {"too_short": "too_short", "not_alternating": "not_alternating"}.get(
            exc.kind, "schema"
        )
        raise Failure(failure_class, exc.detail, raw) from None
    kinds = {r.kind: r.detail for r in dialogue.repairs}
    if "strategy_unknown" in kinds:
        raise Failure("unknown_strategy", f"unknown strategy {kinds['strategy_unknown']!r}", raw)
    if "merged_consecutive" in kinds or "supporter_first" in kinds:
        raise Failure(
            "not_alternating", "the seeker must speak first and the two must alternate", raw
        )
    if "description_missing" in kinds or not dialogue.description.strip():
        raise Failure("schema", "the description of the situation is missing", raw)
    count = len(dialogue.turns)
    if count < spec.min_utterances:
        raise Failure(
            "too_short", f"{count} utterances, at least {spec.min_utterances} wanted", raw
        )
    if count > spec.max_utterances:
        raise Failure("schema", f"{count} utterances, at most {spec.max_utterances} wanted", raw)
    for gate in gates:
        try:
            gate(dialogue)
        except Failure as failure:
            failure.raw = failure.raw or raw  # the sample on the job page shows what was refused
            raise
    return dialogue


def write_dialogue(
    teacher: Teacher,
    spec: DialogueSpec,
    vocab: Vocabulary,
    sampling: Sampling,
    *,
    gates: Sequence[Gate] = (),
    max_attempts: int = 3,
    on_call: OnCall = no_report,
    on_tokens: Callable[[int], None] | None = None,
) -> Produced:
    """`on_tokens` is told the tokens of the answer written so far, where the teacher can say."""
    produced = Produced()
    messages = prompts.dialogue_messages(
        spec.scenario,
        spec.strategies,
        list(spec.examples),
        spec.min_utterances,
        spec.max_utterances,
        structured=teacher.structured_format() != "none",
    )
    schema = schemas.dialogue_schema(
        [name for name, _ in spec.strategies], spec.min_utterances, spec.max_utterances
    )
    while produced.attempts < max_attempts:
        produced.attempts += 1
        try:
            reply = teacher.chat(messages, sampling, schema=schema, progress=on_tokens)
        except TeacherError as exc:
            produced.failures.append(Failure("http_error", str(exc)))
            on_call(Usage(), None)
            continue
        produced.usage.add(reply.usage)
        produced.response_format = reply.response_format
        on_call(reply.usage, None)
        text = reply.text
        truncated = bool(reply.completions and reply.completions[0].truncated)
        try:
            if is_refusal(text):
                raise Failure("refusal", "the teacher declined to write the conversation", text)
            record = None
            if reply.response_format != "none":
                record = read_structured(text, schema.model, truncated)
                if record is None:
                    produced.response_format = "none"  # not enforced by the server: free text
            if record is None:
                if truncated:
                    raise Failure("truncated", "the answer was cut off (max tokens reached)", text)
                record = extract_json(text)
            produced.dialogue = validate(record, spec, vocab, text, gates)
            produced.raw = text
            return produced
        except Failure as failure:
            produced.failures.append(failure)
            # Ask again in the same conversation, saying what was wrong.
            messages = [
                *messages[:2],
                {"role": "assistant", "content": text[:4000]},
                {"role": "user", "content": prompts.dialogue_retry(spec.scenario, failure.detail)},
            ]
    return produced


# ---- turn by turn ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnsSpec:
    scenario: str
    strategies: Sequence[tuple[str, str]]
    exchanges: int = 6  # seeker/supporter pairs
    policy: str = "target"  # "target": sample from shares; "teacher": the teacher picks
    shares: dict[str, float] = field(default_factory=dict)


def write_dialogue_by_turns(
    teacher: Teacher,
    spec: TurnsSpec,
    vocab: Vocabulary,
    sampling: Sampling,
    rng: random.Random,
    *,
    gates: Sequence[Gate] = (),
    max_attempts: int = 3,
    on_call: OnCall = no_report,
) -> Produced:
    produced = Produced()
    # Short messages: a turn never needs the dialogue-sized token budget.
    turn_sampling = Sampling(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=min(sampling.max_tokens, 160),
        seed=sampling.seed,
    )
    definitions = dict(spec.strategies)
    while produced.attempts < max_attempts:
        produced.attempts += 1
        try:
            record = _play_turns(
                teacher,
                spec,
                definitions,
                attempt_sampling(turn_sampling, produced.attempts),
                rng,
                produced,
                on_call,
            )
            text = json.dumps(record, ensure_ascii=False)
            produced.dialogue = validate(
                record,
                DialogueSpec(spec.scenario, spec.strategies, (), 2, 2 * spec.exchanges + 1),
                vocab,
                text,
                gates,
            )
            produced.raw = text
            return produced
        except Failure as failure:
            produced.failures.append(failure)
    return produced


# A seeded attempt that failed would fail the same way again with the same seed and prompts (turns
# mode asks again with the same messages), so attempt k samples from seed + ATTEMPT_SEED_STEP·(k-1).
ATTEMPT_SEED_STEP = 1000


def attempt_sampling(sampling: Sampling, attempt: int) -> Sampling:
    """The sampling of attempt `attempt` (1-based): the first keeps the job's seed."""
    if sampling.seed is None or attempt <= 1:
        return sampling
    return replace(sampling, seed=sampling.seed + ATTEMPT_SEED_STEP * (attempt - 1))


def _play_turns(
    teacher: Teacher,
    spec: TurnsSpec,
    definitions: dict[str, str],
    sampling: Sampling,
    rng: random.Random,
    produced: Produced,
    on_call: OnCall,
) -> dict[str, Any]:
    def ask(messages: list[Message], turns: int) -> str:
        """One message; `turns`: the utterances written once it is (0 for the situation)."""
        try:
            reply = teacher.chat(messages, sampling)
        except TeacherError as exc:
            on_call(Usage(), None)
            raise Failure("http_error", str(exc)) from None
        produced.usage.add(reply.usage)
        on_call(reply.usage, turns)
        return _clean_turn(reply)

    description = ask(
        [
            {"role": "system", "content": prompts.SITUATION_SYSTEM},
            {"role": "user", "content": prompts.SITUATION_USER.format(scenario=spec.scenario)},
        ],
        0,
    )
    content: list[dict[str, str]] = []
    seeker_view: list[Message] = []  # the seeker speaks as "assistant"
    supporter_view: list[Message] = []  # the supporter speaks as "assistant"
    names = list(definitions)
    for _ in range(spec.exchanges):
        opening = [] if seeker_view else [{"role": "user", "content": prompts.SEEKER_OPENING}]
        said = ask(
            [
                {
                    "role": "system",
                    "content": prompts.SEEKER_SYSTEM.format(description=description),
                },
                *opening,
                *seeker_view,
            ],
            len(content) + 1,
        )
        content.append({"User": said})
        seeker_view.append({"role": "assistant", "content": said})
        supporter_view.append({"role": "user", "content": said})

        if spec.policy == "teacher":
            guide = prompts.SUPPORTER_CHOOSE.format(names=", ".join(names), example=names[0])
        else:
            strategy = _sample_strategy(spec.shares, names, rng)
            guide = prompts.SUPPORTER_STRATEGY.format(
                name=strategy, definition=definitions[strategy]
            )
        answer = ask(
            [
                {"role": "system", "content": f"{prompts.SUPPORTER_SYSTEM}\n{guide}"},
                *supporter_view,
            ],
            len(content) + 1,
        )
        if spec.policy == "teacher":
            strategy, answer = _split_strategy(answer, names)
        content.append({"AI Strategy": strategy, "AI": answer})
        supporter_view.append({"role": "assistant", "content": answer})
        seeker_view.append({"role": "user", "content": answer})
    return {"scene": spec.scenario, "description": description, "content": content}


def _sample_strategy(shares: dict[str, float], names: list[str], rng: random.Random) -> str:
    weights = [max(0.0, shares.get(name, 0.0)) for name in names]
    if not any(weights):
        weights = [1.0] * len(names)
    return rng.choices(names, weights=weights)[0]


def _split_strategy(answer: str, names: list[str]) -> tuple[str, str]:
    match = re.match(r"\s*\[([^\]]+)\]\s*(.*)", answer, re.DOTALL)
    if not match:
        raise Failure("unknown_strategy", "the reply did not start with [strategy]", answer)
    label, text = match.group(1).strip(), match.group(2).strip()
    by_key = {name.casefold(): name for name in names}
    if label.casefold() not in by_key:
        raise Failure("unknown_strategy", f"unknown strategy {label!r}", answer)
    if not text:
        raise Failure("schema", "the reply is empty after the strategy", answer)
    return by_key[label.casefold()], text


def _clean_turn(reply: Reply) -> str:
    """One chat message: no role label or wrapping quotes; a cut-off message is trimmed to its
    last full sentence."""
    raw = reply.text
    if is_refusal(raw):
        raise Failure("refusal", "the teacher declined to play the part", raw)
    text = _ROLE_LABEL.sub("", raw.strip()).strip().strip('"“”').strip()
    text = " ".join(text.split())
    if reply.completions and reply.completions[0].truncated:
        end = max(text.rfind(". "), text.rfind("? "), text.rfind("! "))
        if end == -1:
            raise Failure("truncated", "a message was cut off before its first sentence ended", raw)
        text = text[: end + 1]
    if not text:
        raise Failure("schema", "the teacher wrote an empty message", raw)
    return text
