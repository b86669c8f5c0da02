"""The one typed parser at the boundary: ExTES and ESConv records in, `ParsedDialogue` out.

Every drift kind named in DOMAIN.md is repaired here and recorded as a `Repair`; what cannot be
repaired raises `Rejected` with a kind and a reason. Nothing here touches the database: names are
matched against a `Vocabulary`, which `curation.importing.load_reference` builds from its rows.

ESConv files come in more than one spelling of the two roles; `_assign_roles` works out which
speaker is which, per dialogue, and says how in a `roles_mapped` repair.

Hostile input is refused here too, per record: nesting deeper than `MAX_DEPTH`, numbers no strict
JSON holds (see `read_json`), text no database column takes (NUL, unpaired surrogates), and more
turns than `settings.MAX_UTTERANCES`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.vocabulary import ESCONV_FORM_ALIASES, SCENARIOS, STRATEGIES, normalize

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

# Pairs of role names (seeker side, supporter side) used by ESConv's releases, its derivatives and
# chat formats, matched after `speaker_key`. A dialogue whose two names are on opposite sides
# needs no other evidence; the pairs need not match ("user" with "therapist" is read too).
_ROLE_PAIRS = (
    ("seeker", "supporter"),
    ("usr", "sys"),
    ("help seeker", "supporter"),
    ("user", "system"),
    ("user", "assistant"),
    ("human", "ai"),
    ("human", "bot"),
    ("client", "therapist"),
    ("client", "counselor"),
    ("client", "counsellor"),
    ("patient", "doctor"),
    ("speaker", "listener"),
    ("caller", "helper"),
)
# The names ESConv itself writes: mapped without a repair.
_CANONICAL_ROLES: dict[str, Role] = {
    "seeker": "seeker",
    "usr": "seeker",
    "supporter": "supporter",
    "sys": "supporter",
}


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
    # taxonomy -> `_form` of every key -> canonical name, or None where two names share a form.
    _forms: dict[str, dict[str, str | None]] = field(default_factory=dict, repr=False)

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
        esconv = vocab.strategies["esconv"]
        present = set(esconv.values())
        for name, aliases in ESCONV_FORM_ALIASES.items():
            if name in present:
                for alias in aliases:
                    esconv.setdefault(normalize(alias), name)
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
            name = self._forms_of(taxonomy).get(_form(key))
            return (name, "strategy_alias") if name else (None, "strategy_unknown")
        if name == label:
            return name, None
        return name, "strategy_case" if normalize(name) == key else "strategy_alias"

    def _forms_of(self, taxonomy: str) -> dict[str, str | None]:
        if taxonomy not in self._forms:
            forms: dict[str, str | None] = {}
            for key, name in self.strategies[taxonomy].items():
                form = _form(key)
                forms[form] = name if forms.get(form, name) == name else None
            self._forms[taxonomy] = forms
        return self._forms[taxonomy]

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


def _form(key: str) -> str:
    """A `normalize`d name with less still: no "and"/"or", no plural "s", no spaces, so that
    "Restatements/Paraphrasing" and "Self disclosures" meet "Restatement or Paraphrasing" and
    "Self-disclosure"."""
    words = [w for w in key.split() if w not in ("and", "or")]
    return "".join(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words
    )


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
    # ESConv: the record's fields besides problem_type, situation and dialog (survey_score,
    # emotion_type, the questionnaire answers…), plus "utterance_fields" for what single
    # utterances carry besides speaker, text and strategy (feedback). Empty for ExTES.
    source_fields: dict[str, Any] = Field(default_factory=dict)

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


def parse_record(
    raw: Any, fmt: Format, vocab: Vocabulary, roles: Mapping[str, str] | None = None
) -> ParsedDialogue:
    """Repair and validate one record; raises `Rejected` with a kind and a reason.

    ``roles`` (ESConv only) forces who is who: speaker name, as written or in any case and
    separators, to "seeker" or "supporter". A speaker it does not name is rejected.
    """
    repairs: list[Repair] = []
    source_fields: dict[str, Any] = {}
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    _check_storable(raw)
    if fmt == "extes":
        scene, description, utterances = _read_extes(raw, repairs)
    else:
        scene, description, utterances = _read_esconv(raw, repairs, roles, source_fields)

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
            source_fields=source_fields,
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
                # _check_text's first test inline: most strings need no call (with speaker_key's
                # cache, a record's parse took 0.230 -> 0.202 ms here).
                if "\x00" in item or not item.isascii() or isinstance(item, NumberText):
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


def _read_esconv(
    raw: dict[str, Any],
    repairs: list[Repair],
    roles: Mapping[str, str] | None,
    source_fields: dict[str, Any],
) -> tuple[str, str, list[_Utterance]]:
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

    role_of = _assign_roles(record.dialog, roles, repairs)
    utterances = [
        _Utterance(
            role_of[speaker_key(u.speaker)],
            u.text if u.text is not None else (u.content or ""),
            u.label,
        )
        for u in record.dialog
    ]

    source_fields.update(copy.deepcopy(record.model_extra or {}))
    carried = []
    for position, u in enumerate(record.dialog, start=1):
        fields = dict(u.model_extra or {})
        if u.annotation is not None and u.annotation.model_extra:
            fields["annotation"] = dict(u.annotation.model_extra)
        if fields:
            carried.append({"utterance": position, "fields": copy.deepcopy(fields)})
    if carried:
        source_fields["utterance_fields"] = carried
    return record.problem_type, record.situation or "", utterances


_SEPARATORS = re.compile(r"[\W_]+")


@functools.lru_cache(maxsize=4096)  # a file has a few speaker names, each said thousands of times
def speaker_key(name: str) -> str:
    """A speaker name without case and separators: "Help-Seeker", "help_seeker" → "helpseeker"."""
    return _SEPARATORS.sub("", name.casefold()) or name.strip()


_SIDES: tuple[Role, Role] = ("seeker", "supporter")
_KNOWN_ROLES: dict[str, Role] = {
    speaker_key(name): role for pair in _ROLE_PAIRS for name, role in zip(pair, _SIDES, strict=True)
}


def _assign_roles(
    dialog: list[_EsconvUtterance], forced: Mapping[str, str] | None, repairs: list[Repair]
) -> dict[str, Role]:
    """Speaker key -> role for one dialogue, or `Rejected`. The evidence, strongest first:

    1. ``forced`` (the importer's --roles) decides alone;
    2. two names known from `_ROLE_PAIRS`, one on each side;
    3. the strategy annotations: the one speaker who carries them is the supporter (refused if
       it contradicts the one known name, when there is one);
    4. one known name: the other speaker takes the other role.

    Which speaker opens is no evidence: more than half of ESConv's dialogues open with the
    supporter's greeting. So two unknown names with annotations on both or neither, more than
    two speakers, or a single unknown one are `roles_unknown`, and --roles settles them.
    A mapping other than ESConv's own names is reported as a `roles_mapped` repair.
    """
    written: dict[str, str] = {}
    labelled: Counter[str] = Counter()
    for utterance in dialog:
        key = speaker_key(utterance.speaker)
        written.setdefault(key, utterance.speaker.strip())
        if (utterance.label or "").strip():
            labelled[key] += 1
    listed = ", ".join(repr(name) for name in written.values())

    if forced is not None:
        role_of = _forced_roles(forced)
        for key, name in written.items():
            if key not in role_of:
                raise Rejected(
                    "unknown_speaker",
                    f"speaker {name!r} is not one of the roles given ({', '.join(forced)})",
                )
        found = {key: role_of[key] for key in written}
        _report_roles(written, found, "forced", repairs)
        return found

    if len(written) > 2:
        raise Rejected("roles_unknown", f"{len(written)} speakers ({listed}); a dialogue has two")
    known = {key: _KNOWN_ROLES[key] for key in written if key in _KNOWN_ROLES}
    if len(written) == 1:
        # One speaker only: too short either way; a known name at least says who it was.
        if known:
            return known
        raise Rejected(
            "roles_unknown", f"one speaker only ({listed}): nothing tells seeker from supporter"
        )

    first, second = written
    if len(known) == 2 and known[first] != known[second]:
        _report_roles(written, known, "known pair", repairs)
        return known
    if len(known) == 2:
        known = {}  # two seekers or two supporters by name: the names say nothing
    other = {first: second, second: first}
    annotated = [key for key in written if labelled[key]]
    if len(annotated) == 1:
        supporter = annotated[0]
        found = {supporter: "supporter", other[supporter]: "seeker"}
        for key, role in known.items():
            if found[key] != role:
                raise Rejected(
                    "roles_unknown",
                    f"the name {written[key]!r} says {role}, "
                    f"the strategy annotations say {found[key]}",
                )
        _report_roles(written, found, "from strategy annotations", repairs)
        return found
    if len(known) == 1:
        ((key, role),) = known.items()
        found = {key: role, other[key]: "supporter" if role == "seeker" else "seeker"}
        _report_roles(written, found, f"from the known name {written[key]!r}", repairs)
        return found
    why = "both carry" if annotated else "neither carries"
    raise Rejected(
        "roles_unknown",
        f"speakers {listed}: {why} strategy annotations and the names do not tell; "
        "say which is which with --roles",
    )


def _forced_roles(forced: Mapping[str, str]) -> dict[str, Role]:
    role_of: dict[str, Role] = {}
    for name, role in forced.items():
        if role not in ("seeker", "supporter"):
            raise ValueError(f"role of {name!r} must be 'seeker' or 'supporter', not {role!r}")
        role_of[speaker_key(name)] = "seeker" if role == "seeker" else "supporter"
    return role_of


def _report_roles(
    written: dict[str, str], found: dict[str, Role], how: str, repairs: list[Repair]
) -> None:
    if all(_CANONICAL_ROLES.get(key) == role for key, role in found.items()):
        return
    # Seeker first, then supporter.
    pairs = sorted(found.items(), key=lambda item: item[1] != "seeker")
    mapping = ", ".join(f"{written[key]}={role}" for key, role in pairs)
    repairs.append(Repair("roles_mapped", f"{mapping} ({how})"))


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
            if repair == "strategy_unknown":
                repairs.append(Repair(repair, utterance.label))
            elif repair:
                repairs.append(Repair(repair, f"{utterance.label} → {strategy}"))
        turns.append(ParsedTurn(role=utterance.role, text=utterance.text, strategy=strategy))
    return turns
