"""What the teacher must answer, as pydantic models: they validate the answer and, through
`model_json_schema()`, are the JSON schema a server is asked to follow (structured output) or that
the local teacher's grammar enforces. One source for both, so the two can never disagree.

- `dialogue_model(strategies, min_items, max_items)`: an ExTES record without its scene (the
  scenario is ours to set): a description and the utterances, each either ``{"User": …}`` or
  ``{"AI Strategy": <one of the strategies>, "AI": …}``.
- `replies_model(n)`: DRI's answer when structured output is in effect, ``{"replies": [n texts]}``,
  so a server that ignores `n` still gives n candidates in one request.

Schemas for servers follow the strict subset OpenAI accepts (every object closed, every property
required, no string length bounds); `local_schema` adds length bounds for the small local model,
which would otherwise write one endless string.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model

# The kinds of structured output, strongest first; "grammar" is the local teacher's own.
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
LOCAL_FORMAT = "grammar"


@dataclass(frozen=True)
class Schema:
    """A named JSON schema and the model that validates answers to it."""

    name: str
    model: type[BaseModel]

    @property
    def json_schema(self) -> dict[str, Any]:
        return _json_schema(self.model)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeekerUtterance(_Closed):
    User: str


@lru_cache(maxsize=64)
def dialogue_model(strategies: tuple[str, ...], min_items: int, max_items: int) -> type[BaseModel]:
    names = cast(Any, Literal[strategies])  # the strategies as an enum
    supporter = create_model(
        "SupporterUtterance",
        __base__=_Closed,
        strategy=(names, Field(alias="AI Strategy")),
        text=(str, Field(alias="AI")),
    )
    item = SeekerUtterance | supporter
    return create_model(
        "GeneratedDialogue",
        __base__=_Closed,
        description=(str, ...),
        content=(list[item], Field(min_length=min_items, max_length=max_items)),  # type: ignore[valid-type]
    )


@lru_cache(maxsize=64)
def replies_model(n: int) -> type[BaseModel]:
    return create_model(
        "Replies",
        __base__=_Closed,
        replies=(list[str], Field(min_length=n, max_length=n)),
    )


def dialogue_schema(strategies: Sequence[str], min_items: int, max_items: int) -> Schema:
    return Schema("extes_dialogue", dialogue_model(tuple(strategies), min_items, max_items))


def replies_schema(n: int) -> Schema:
    return Schema("dri_replies", replies_model(n))


@lru_cache(maxsize=64)
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return cast(dict[str, Any], _strip_titles(schema))


def _strip_titles(node: Any) -> Any:
    """Titles are noise to a server and cost tokens; properties named "title" are kept."""
    if isinstance(node, dict):
        return {
            key: (
                {name: _strip_titles(value) for name, value in node[key].items()}
                if key in ("properties", "$defs")
                else _strip_titles(value)
            )
            for key, value in node.items()
            if key != "title" or not isinstance(value, str)
        }
    if isinstance(node, list):
        return [_strip_titles(value) for value in node]
    return node


def local_schema(
    schema: Schema, max_chars: int, max_items: int | None = None, *, closed: bool = True
) -> dict[str, Any]:
    """The schema as the local model's grammar enforces it: every free string bounded to
    `max_chars` (at least 2 characters) and, for a dialogue, the utterances alternating, the
    seeker first (servers are asked for the plain list of either kind, which strict mode takes;
    a grammar takes the stricter form), at most `max_items` of them. `closed=False` leaves out
    ``"items": false`` after the alternating ones (maxItems bounds them anyway), which
    llama.cpp's server refuses ("schema must be an object")."""
    bounded = copy.deepcopy(schema.json_schema)
    content = bounded.get("properties", {}).get("content")
    if isinstance(content, dict) and "anyOf" in content.get("items", {}):
        seeker, supporter = content["items"]["anyOf"]
        low = int(content.get("minItems", 0))
        high = int(content.get("maxItems", low))
        if max_items is not None:
            high = max(low, min(high, max_items))
        bounded["properties"]["content"] = {
            "type": "array",
            "prefixItems": [seeker if i % 2 == 0 else supporter for i in range(high)],
            "minItems": low,
            "maxItems": high,
        }
        if closed:
            bounded["properties"]["content"]["items"] = False

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and "enum" not in node:
                node.setdefault("minLength", 2)
                node.setdefault("maxLength", max_chars)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(bounded)
    return bounded
