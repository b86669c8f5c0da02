"""The one typed parser at the boundary: ExTES and ESConv records in, `ParsedDialogue` out.

Every drift kind named in DOMAIN.md is repaired here and recorded as a `Repair`; what cannot be
repaired raises `Rejected` with a kind and a reason. Nothing here touches the database: names are
matched against a `Vocabulary`, which `curation.importing.load_reference` builds from its rows.

Hostile input is refused here too, per record: nesting deeper than `MAX_DEPTH`, numbers no strict
JSON holds (see `read_json`), text no database column takes (NUL, unpaired surrogates), and more
turns than `settings.MAX_UTTERANCES`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.vocabulary import SCENARIOS, STRATEGIES, normalize

Role = Literal["seeker", "supporter"]
Format = Literal["extes", "esconv"]

# Keys under which drifted records store an utterance's text inside an object.
_TEXT_KEYS = ("text", "response", "content", "utterance", "message")
_EXTES_TOP_KEYS = {"scene", "description", "content"}

# Containers nested deeper than this are rejected. A record needs four levels (record, content,
# utterance, text object); thousands would run Python's recursion out in json, pydantic or the ORM.
MAX_DEPTH = 100
# PostgreSQL refuses NUL in text and JSON; no UTF-8 encoder (SQLite's included) takes a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Rejected(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class NumberText(str):
    """A number in the input that strict JSON cannot hold: NaN, Infinity, -Infinity, one beyond
    float range (1e999999), or an integer with more digits than Python converts (4,300 unless
    sys.set_int_max_str_digits says otherwise). `read_json` keeps it as the text it was written in:
    its record is rejected, and the rejects file shows it as that text, a JSON string."""


def read_json(text: str) -> Any:
    """`json.loads`, except that the numbers `NumberText` describes come back as `NumberText`.

    Raises json.JSONDecodeError for what is not JSON, RecursionError for nesting deeper than
    Python's json module reads (about a thousand levels).
    """
    return json.loads(text, parse_constant=NumberText, parse_float=_float, parse_int=_int)


def _float(text: str) -> float | NumberText:
    value = float(text)
    return value if math.isfinite(value) else NumberText(text)


def _int(text: str) -> int | NumberText:
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        return NumberText(text)
    return int(text)


@dataclass(frozen=True)
class Repair:
    kind: str
    detail: str = ""


@dataclass
class Vocabulary:
    """Names the parser can resolve: every key is `normalize(name or alias)`."""

    strategies: dict[str, dict[str, str]]  # taxonomy -> key -> canonical name
    scenarios: dict[str, str]  # key -> canonical name
    official_scenarios: set[str] = field(default_factory=set)  # canonical names of the 36

    @classmethod
    def build(
        cls,
        strategies: Iterable[tuple[str, str, Iterable[str]]],
        scenarios: Iterable[tuple[str, Iterable[str], bool]],
    ) -> Vocabulary:
        """From (taxonomy, name, aliases) and (name, aliases, is_official) rows."""
        vocab = cls(strategies={"extes": {}, "esconv": {}}, scenarios={})
        for taxonomy, name, aliases in strategies:
            for alias in (name, *aliases):
                vocab.strategies[taxonomy].setdefault(normalize(alias), name)
        for name, aliases, is_official in scenarios:
            for alias in (name, *aliases):
                vocab.scenarios.setdefault(normalize(alias), name)
            if is_official:
                vocab.official_scenarios.add(name)
        return vocab

    @classmethod
    def from_specs(cls) -> Vocabulary:
        return cls.build(
            ((s.taxonomy, s.name, s.aliases) for s in STRATEGIES),
            ((s.name, s.aliases, True) for s in SCENARIOS),
        )

    def match_strategy(self, label: str, taxonomy: str) -> tuple[str | None, str | None]:
        """(canonical name or None, repair kind or None) for a label of `taxonomy`."""
        key = normalize(label)
        name = self.strategies[taxonomy].get(key)
        if name is None:
            return None, "strategy_unknown"
        if name == label:
            return name, None
        return name, "strategy_case" if normalize(name) == key else "strategy_alias"

    def match_scenario(self, scene: str) -> tuple[str, str | None]:
        """(scenario name, repair kind or None); an unmatched scene comes back as a new name."""
        if scene in self.official_scenarios:
            return scene, None
        key = normalize(scene)
        name = self.scenarios.get(key)
        if name is None:
            close = difflib.get_close_matches(key, list(self.scenarios), n=1, cutoff=0.9)
            if close:
                name = self.scenarios[close[0]]
        if name is None:
            return " ".join(scene.split()), "scene_unknown"
        if name not in self.official_scenarios:
            # A scene seen before that is not one of the 36: still flagged on every dialogue.
            return name, "scene_unknown"
        return name, "scene_alias"

    def add_scenario(self, name: str) -> None:
        self.scenarios.setdefault(normalize(name), name)


class ParsedTurn(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    text: str
    strategy: str | None = None  # canonical name, resolved against the vocabulary

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("turn text is empty")
        return text


class ParsedDialogue(BaseModel):
    scene: str = Field(min_length=1)
    description: str
    turns: list[ParsedTurn]
    taxonomy: Literal["extes", "esconv"]
    repairs: list[Repair] = Field(default_factory=list)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _is_a_dialogue(self) -> ParsedDialogue:
        roles = {turn.role for turn in self.turns}
        if roles != {"seeker", "supporter"}:
            raise ValueError(
                "too_short: a dialogue needs at least one seeker and one supporter turn"
            )
        for before, after in zip(self.turns, self.turns[1:], strict=False):
            if before.role == after.role:
                raise ValueError("not_alternating: consecutive turns of one speaker")
        return self

    def content_hash(self) -> str:
        """Identity for idempotent import: description and turn texts, not labels or scene."""
        payload = [self.description.strip(), [[t.role, t.text.strip()] for t in self.turns]]
        encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass
class _Utterance:
    role: Role
    text: str
    label: str | None


# ---- ESConv input, typed -------------------------------------------------------------------


class _EsconvAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")
    strategy: str | None = None


class _EsconvUtterance(BaseModel):
    """One utterance of either ESConv layout: JSON Lines (`text`, `usr`/`sys`, `strategy`) or the
    original nested file (`content`, `seeker`/`supporter`, `annotation.strategy`)."""

    model_config = ConfigDict(extra="allow")
    speaker: str
    text: str | None = None
    content: str | None = None
    strategy: str | None = None
    annotation: _EsconvAnnotation | None = None

    @property
    def role(self) -> Role:
        speaker = self.speaker.strip().lower()
        if speaker in {"usr", "seeker", "user"}:
            return "seeker"
        if speaker in {"sys", "supporter", "system"}:
            return "supporter"
        raise Rejected(
            "unknown_speaker", f"speaker {self.speaker!r} is neither seeker nor supporter"
        )

    @property
    def label(self) -> str | None:
        if self.strategy is not None:
            return self.strategy
        return self.annotation.strategy if self.annotation else None


class _EsconvRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    problem_type: str = Field(min_length=1)
    situation: str | None = None
    dialog: list[_EsconvUtterance] = Field(min_length=1)


# ---- the parser ----------------------------------------------------------------------------


def parse_record(raw: Any, fmt: Format, vocab: Vocabulary) -> ParsedDialogue:
    """Repair and validate one record; raises `Rejected` with a kind and a reason."""
    repairs: list[Repair] = []
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    _check_storable(raw)
    if fmt == "extes":
        scene, description, utterances = _read_extes(raw, repairs)
    else:
        scene, description, utterances = _read_esconv(raw, repairs)

    scene_name, scene_repair = vocab.match_scenario(scene)
    if scene_repair:
        repairs.append(Repair(scene_repair, scene))

    turns = _normalise_turns(utterances, fmt, vocab, repairs)
    if len(turns) > settings.MAX_UTTERANCES:
        raise Rejected(
            "too_long",
            f"{len(turns)} utterances, more than the {settings.MAX_UTTERANCES} allowed "
            "(EXTES_MAX_UTTERANCES)",
        )
    try:
        return ParsedDialogue(
            scene=scene_name,
            description=description,
            turns=turns,
            taxonomy=fmt,
            repairs=repairs,
        )
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        kind, _, detail = message.partition(": ")
        raise Rejected(kind if detail else "schema", detail or message) from None


def _check_storable(raw: dict[str, Any]) -> None:
    """Reject a record that cannot be stored as read. Walked without recursion, so that depth
    itself cannot break the walk; plain ASCII text without NUL, nearly all of it, costs one test."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Rejected("too_deep", f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(container, dict):
            for key in container:
                _check_text(str(key))
            container = container.values()
        for item in container:
            if isinstance(item, str):
                _check_text(item)
            elif isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, float) and not math.isfinite(item):
                raise Rejected("bad_number", f"{item} is not a number JSON can hold")


def _check_text(text: str) -> None:
    if "\x00" not in text and text.isascii() and not isinstance(text, NumberText):
        return
    if isinstance(text, NumberText):
        shown = text if len(text) <= 40 else f"{text[:12]}… ({len(text)} characters)"
        raise Rejected("bad_number", f"{shown} is not a number JSON can hold")
    if found := _UNSTORABLE.search(text):
        raise Rejected("bad_text", f"text holds {found.group()!r}, which no database can store")


def _read_extes(raw: dict[str, Any], repairs: list[Repair]) -> tuple[str, str, list[_Utterance]]:
    by_key: dict[str, Any] = {}
    for key, value in raw.items():
        folded = str(key).strip().casefold()
        if folded in _EXTES_TOP_KEYS and folded not in by_key:
            by_key[folded] = value
            if key != folded:
                repairs.append(Repair("key_case", str(key)))
        else:
            repairs.append(Repair("extra_keys", str(key)))

    scene = by_key.get("scene")
    if not isinstance(scene, str) or not scene.strip():
        raise Rejected("missing_scene", "the record has no scene")
    content = by_key.get("content")
    if not isinstance(content, list) or not content:
        raise Rejected("missing_content", "the record has no list of utterances under 'content'")
    description = by_key.get("description")
    if description is None:
        repairs.append(Repair("description_missing"))
        description = ""
    elif not isinstance(description, str):
        raise Rejected("schema", f"description is a {type(description).__name__}, not text")

    utterances: list[_Utterance] = []
    for position, item in enumerate(content, start=1):
        utterances.extend(_read_extes_utterance(item, position, repairs))
    return scene, description, utterances


def _read_extes_utterance(item: Any, position: int, repairs: list[Repair]) -> list[_Utterance]:
    if not isinstance(item, dict):
        raise Rejected(
            "unreadable_utterance", f"utterance {position} is not an object: {item!r:.80}"
        )
    seeker: Any = None
    supporter: Any = None
    label: Any = None
    has_seeker = has_supporter = False
    for key, value in item.items():
        folded = " ".join(str(key).casefold().split())
        if folded == "user":
            seeker, has_seeker = value, True
        elif folded == "ai":
            supporter, has_supporter = value, True
        elif folded == "ai strategy":
            label = value
            if key != "AI Strategy":
                repairs.append(Repair("strategy_key_spelling", str(key)))
        else:
            repairs.append(Repair("utterance_extra_keys", f"utterance {position}: {key}"))
    if not has_seeker and not has_supporter:
        raise Rejected("unreadable_utterance", f"utterance {position} has neither 'User' nor 'AI'")
    if label is not None and not isinstance(label, str):
        raise Rejected("schema", f"utterance {position}: strategy is not text")

    found: list[_Utterance] = []
    if has_seeker:
        found.append(_Utterance("seeker", _utterance_text(seeker, position, repairs), None))
    if has_supporter:
        found.append(_Utterance("supporter", _utterance_text(supporter, position, repairs), label))
    if has_seeker and has_supporter:
        repairs.append(Repair("merged_object", f"utterance {position}"))
    return found


def _utterance_text(value: Any, position: int, repairs: list[Repair]) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, dict):
        folded = {str(k).casefold(): v for k, v in value.items()}
        for key in _TEXT_KEYS:
            if isinstance(folded.get(key), str):
                repairs.append(Repair("object_utterance", f"utterance {position}: {key}"))
                return str(folded[key])
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1:
            repairs.append(Repair("object_utterance", f"utterance {position}"))
            return strings[0]
    raise Rejected(
        "unreadable_utterance", f"utterance {position} has no readable text: {value!r:.80}"
    )


def _read_esconv(raw: dict[str, Any], repairs: list[Repair]) -> tuple[str, str, list[_Utterance]]:
    try:
        record = _EsconvRecord.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        kind = "missing_scene" if where == "problem_type" else "schema"
        if where == "dialog":
            kind = "missing_content"
        raise Rejected(kind, f"{where}: {error['msg']}") from None
    if record.situation is None:
        repairs.append(Repair("description_missing"))
    utterances = [
        _Utterance(u.role, u.text if u.text is not None else (u.content or ""), u.label)
        for u in record.dialog
    ]
    return record.problem_type, record.situation or "", utterances


def _normalise_turns(
    utterances: Iterable[_Utterance], taxonomy: str, vocab: Vocabulary, repairs: list[Repair]
) -> list[ParsedTurn]:
    kept: list[_Utterance] = []
    for position, utterance in enumerate(utterances, start=1):
        if not utterance.text.strip():
            repairs.append(Repair("empty_text", f"utterance {position} ({utterance.role})"))
            continue
        label = (utterance.label or "").strip() or None if utterance.role == "supporter" else None
        if kept and kept[-1].role == utterance.role:
            # One speaker twice in a row: one turn, texts joined; the first label wins.
            previous = kept[-1]
            previous.text = f"{previous.text} {utterance.text}"
            if previous.label is None:
                previous.label = label
            elif label is not None and normalize(label) != normalize(previous.label):
                repairs.append(Repair("merged_label_dropped", f"utterance {position}: {label}"))
            repairs.append(Repair("merged_consecutive", f"utterance {position} ({utterance.role})"))
            continue
        kept.append(_Utterance(utterance.role, utterance.text, label))

    if kept and kept[0].role == "supporter":
        repairs.append(Repair("supporter_first", "the opening supporter turn is kept as turn 0"))

    turns: list[ParsedTurn] = []
    for utterance in kept:
        strategy = None
        if utterance.label is not None:
            strategy, repair = vocab.match_strategy(utterance.label, taxonomy)
            if repair:
                repairs.append(Repair(repair, utterance.label))
        turns.append(ParsedTurn(role=utterance.role, text=utterance.text, strategy=strategy))
    return turns
