"""A fake teacher: a real local HTTP server that speaks OpenAI's chat-completions protocol.

openai 3.x sends its requests through `httpx2`, which `respx` does not intercept, so tests and
benchmarks talk to this server over a real socket instead, exactly as they would to vLLM, llama.cpp or
OpenAI itself::

    with FakeTeacher(latency=0.05) as fake:
        teacher = HttpTeacher(base_url=fake.url, model="fake-teacher", api_key="sk-test")
        fake.script = ["rate_limited", "valid"]      # what the next requests get, in order
        reply = teacher.chat(messages, Sampling())
        assert len(fake.requests) == 2               # every JSON body received

What it answers depends on the kind of request, read from the last user message:

- "dri" (it contains ``[MASKED]``): n different plain supporter replies (one if `ignore_n`, as
  llama.cpp does);
- "dialogue" (it contains ``"content"``, as the whole-dialogue prompt shows the ExTES JSON shape): one
  ExTES record per choice, different real text for every request;
- anything else, a "turn": one short sentence, a seeker's if the system message mentions "seeker",
  else a supporter's.

The text is real: it comes from ESConv (``test.txt`` of ``$EXTES_ESCONV_DIR``, by default
``../shared/data/esconv``, or the file given as `esconv_file`), read when the server starts and never
copied into the project. Dialogues are cut to 8-16 utterances that start with the seeker and end on a
supporter turn, with ESConv's strategies mapped to ExTES names; later windows of the same dialogues
follow the first ones, so a benchmark sees thousands of distinct dialogues before any repeats.

What it does with structured output (`response_format`) is its `kind`, after real servers:

- "plain" (the default): ignores `response_format`, as an old server would;
- "llamacpp": like llama.cpp's server: one choice whatever `n`, `json_schema` answered with HTTP
  500, `json_object` with a `schema` beside it honoured (the answer follows the schema);
- "openai": `json_schema` with `strict` honoured, after checking the schema the way OpenAI does
  (every object closed, every property required: 400 otherwise); `json_object` gives bare JSON;
  a strict refusal comes in the message's `refusal` field with no content;
- "rejects_format": any `response_format` answered with HTTP 400.

Streaming (`"stream": true`) is its `streaming`: "sse" (the default) sends the answer as real servers
do, server-sent events of OpenAI's chunk format with one word per chunk (`chunk_delay` seconds
apart), then a usage chunk when `stream_options.include_usage` asks for it, then ``[DONE]``;
"refuse" answers a streamed request with HTTP 400; "ignore" sends the whole JSON completion anyway.
Error behaviours answer as without streaming.

An honoured schema overrides the shape behaviours (prose, fences, broken JSON); "truncated" still
cuts the answer.

How it answers is the behaviour: `script` entries are consumed one per request, `default` when the
script is empty. Behaviours: "valid", "fenced_prose", "wrong_key_case", "object_utterances",
"truncated", "refusal", "invalid_json" (shapes of the text, the dialogue-specific ones answer "valid"
for the other kinds), "looping", "role_swapped", "off_topic" (well-formed degenerate dialogues of our
own, for the quality gates), "rate_limited" (429 with Retry-After: 1), "server_error" (500), "bad_request"
(400), "slow" (answers validly after 3 seconds), and two malformed answers with status 200:
"error_body_200" (an error object instead of a completion) and "no_choices" (an empty list). `latency` delays every answer and can be changed
while the server runs. Besides `requests`, the server keeps `request_headers` (names lower-cased) and
`peak_in_flight`, the most chat requests it was answering at once. The server is a ThreadingHTTPServer, so concurrent clients are answered
concurrently; `stop()` (or leaving the `with` block) wakes sleeping handlers and closes every
connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "fake-teacher"
SCENE = "Anxiety and Panic"
SLOW_SECONDS = 3.0
RETRY_AFTER = "1"
REFUSAL = "I'm sorry, but I can't help with that request."

BEHAVIOURS = frozenset(
    {
        "error_body_200",
        "no_choices",
        "valid",
        "fenced_prose",
        "wrong_key_case",
        "object_utterances",
        "truncated",
        "refusal",
        "invalid_json",
        "rate_limited",
        "server_error",
        "bad_request",
        "slow",
        "looping",
        "role_swapped",
        "off_topic",
    }
)

KINDS = ("plain", "llamacpp", "openai", "rejects_format")

STRATEGY_MAP = {
    "Question": "Clarification",
    "Restatement or Paraphrasing": "Reflective Statements",
    "Reflection of feelings": "Emotional Validation",
    "Self-disclosure": "Empathetic Statements",
    "Affirmation and Reassurance": "Affirmation",
    "Providing Suggestions": "Suggest Options",
    "Information": "Share Information",
    "Others": "Others",
}

MIN_UTTERANCES, MAX_UTTERANCES = 8, 16
WINDOW_STEP = 6  # even, so that every window starts on a seeker turn
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def default_esconv_file() -> Path:
    folder = os.environ.get("EXTES_ESCONV_DIR") or str(ROOT.parent / "shared" / "data" / "esconv")
    return Path(folder) / "test.txt"


# ---- the text pool --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    dialogues: tuple[dict[str, Any], ...]  # ExTES records
    supporter: tuple[str, ...]  # supporter utterances of 8 words or more
    seeker: tuple[str, ...]  # first sentences of seeker utterances, 6 words or more


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _merged_turns(dialog: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(speaker, text, strategy) with leading supporter turns dropped and same-speaker runs merged."""
    turns: list[tuple[str, str, str]] = []
    for utterance in dialog:
        speaker, text = utterance.get("speaker"), _clean(utterance.get("text") or "")
        if speaker not in ("usr", "sys") or not text:
            continue
        if not turns and speaker == "sys":
            continue
        strategy = STRATEGY_MAP.get(utterance.get("strategy") or "", "Others")
        if turns and turns[-1][0] == speaker:
            last_speaker, last_text, last_strategy = turns[-1]
            turns[-1] = (last_speaker, f"{last_text} {text}", last_strategy)
        else:
            turns.append((speaker, text, strategy if speaker == "sys" else ""))
    return turns


def _record(situation: str, turns: list[tuple[str, str, str]]) -> dict[str, Any]:
    content: list[dict[str, str]] = []
    for speaker, text, strategy in turns:
        if speaker == "usr":
            content.append({"User": text})
        else:
            content.append({"AI Strategy": strategy, "AI": text})
    return {"scene": SCENE, "description": situation, "content": content}


def _windows(turns: list[tuple[str, str, str]]) -> list[list[tuple[str, str, str]]]:
    """8-16 utterance windows, WINDOW_STEP apart, from a seeker turn to a supporter turn."""
    windows = []
    for start in range(0, len(turns), WINDOW_STEP):  # turns alternate, the seeker's first
        window = turns[start : start + MAX_UTTERANCES]
        if window and window[-1][0] == "usr":
            window = window[:-1]
        if len(window) < MIN_UTTERANCES:
            break
        windows.append(window)
    return windows


@lru_cache(maxsize=8)
def load_pool(path: Path) -> Pool:
    if not path.is_file():
        raise FileNotFoundError(
            f"ESConv file not found at {path}: set EXTES_ESCONV_DIR to the folder holding test.txt"
        )
    per_dialogue: list[list[dict[str, Any]]] = []
    supporter: list[str] = []
    seeker: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            data = json.loads(line)
            dialog = data.get("dialog") or []
            for utterance in dialog:
                text = _clean(utterance.get("text") or "")
                if utterance.get("speaker") == "sys" and len(text.split()) >= 8:
                    supporter.append(text)
                elif utterance.get("speaker") == "usr":
                    first = _SENTENCE_END.split(text, maxsplit=1)[0]
                    if len(first.split()) >= 6:
                        seeker.append(first)
            situation = _clean(data.get("situation") or "")
            per_dialogue.append([_record(situation, w) for w in _windows(_merged_turns(dialog))])
    # The first window of every dialogue, then the second of every dialogue, and so on.
    dialogues: list[dict[str, Any]] = []
    for depth in range(max((len(d) for d in per_dialogue), default=0)):
        dialogues.extend(records[depth] for records in per_dialogue if depth < len(records))
    if not dialogues or not supporter or not seeker:
        raise ValueError(f"no usable dialogues in {path}")
    return Pool(tuple(dialogues), tuple(dict.fromkeys(supporter)), tuple(dict.fromkeys(seeker)))


# ---- shaping the text -----------------------------------------------------------------------


def _wrong_key_case(record: dict[str, Any]) -> dict[str, Any]:
    content = []
    for item in record["content"]:
        if "User" in item:
            content.append({"user": item["User"]})
        else:
            content.append({"ai strategy": item["AI Strategy"], "ai": item["AI"]})
    return {"Scene": record["scene"], "Description": record["description"], "Content": content}


def _object_utterances(record: dict[str, Any]) -> dict[str, Any]:
    content = []
    for item in record["content"]:
        if "User" in item:
            content.append({"User": {"text": item["User"]}})
        else:
            content.append({"AI Strategy": item["AI Strategy"], "AI": {"Response": item["AI"]}})
    return {**record, "content": content}


def _pairs(description: str, pairs: list[tuple[str, str, str]]) -> dict[str, Any]:
    content: list[dict[str, str]] = []
    for seeker, strategy, supporter in pairs:
        content += [{"User": seeker}, {"AI Strategy": strategy, "AI": supporter}]
    return {"scene": SCENE, "description": description, "content": content}


# Degenerate dialogues, as small teachers write them (our own words), well-formed otherwise.
DEGENERATE: dict[str, dict[str, Any]] = {
    # The supporter loops on one phrase.
    "looping": _pairs(
        "I keep getting panic attacks before my morning lectures.",
        [
            ("My heart races every morning before class.", "Offer Hope",
             "You can find your perfect path and your perfect path will find you."),
            ("I tried breathing slowly but it did not help.", "Offer Hope",
             "Keep going and find your perfect path, the perfect path is out there."),
            ("Yesterday I had to leave the room halfway through.", "Offer Hope",
             "That is hard, but find your perfect path and you will be fine."),
            ("I am scared it will happen again tomorrow.", "Offer Hope",
             "Trust yourself to find your perfect path one day at a time."),
        ],
    ),
    # The seeker speaks as a helper from the first line.
    "role_swapped": _pairs(
        "A coach who talks about his clients.",
        [
            ("Hi, I'm a non-profit business coach. How can I support you today?", "Clarification",
             "I have been feeling anxious about work lately."),
            ("I'm here to help you find your way. What is on your mind?", "Emotional Validation",
             "Mostly the deadlines, they keep me awake."),
            ("That sounds really stressful. Let's work on it together.", "Suggest Options",
             "Maybe I should plan my week better."),
            ("Great idea. I can help you build a plan.", "Affirmation",
             "Thank you, that would be helpful."),
        ],
    ),
    # Nothing to do with anxiety: sourdough baking.
    "off_topic": _pairs(
        "I want my sourdough loaves to rise higher in the oven.",
        [
            ("My sourdough comes out flat every time I bake it.", "Clarification",
             "How long do you let the dough proof before it goes in the oven?"),
            ("About four hours on the counter, then straight into a hot pot.", "Share Information",
             "A longer cold proof in the fridge overnight often gives a taller loaf."),
            ("Should I use more flour or less water?", "Suggest Options",
             "Try a slightly lower hydration and a stronger bread flour for structure."),
            ("I will try rye in the starter too.", "Affirmation",
             "Rye feeds a starter well, and scoring the top deeply helps the rise."),
        ],
    ),
}  # fmt: skip


def dialogue_text(record: dict[str, Any], behaviour: str) -> tuple[str, str]:
    """(text, finish_reason) of a dialogue answer shaped by `behaviour`."""
    if behaviour in DEGENERATE:
        return json.dumps(DEGENERATE[behaviour], ensure_ascii=False, indent=2), "stop"
    if behaviour == "refusal":
        return REFUSAL, "stop"
    if behaviour == "wrong_key_case":
        return json.dumps(_wrong_key_case(record), ensure_ascii=False, indent=2), "stop"
    if behaviour == "object_utterances":
        return json.dumps(_object_utterances(record), ensure_ascii=False, indent=2), "stop"
    text = json.dumps(record, ensure_ascii=False, indent=2)
    if behaviour == "fenced_prose":
        return (
            f"Here is the dialogue you asked for.\n\n```json\n{text}\n```\n\n"
            "I hope this conversation is useful for your dataset.",
            "stop",
        )
    if behaviour == "truncated":
        return text[: int(len(text) * 0.6)], "length"
    if behaviour == "invalid_json":
        broken = text.rstrip().removesuffix("}").rstrip().removesuffix("]").rstrip()
        broken = broken.removesuffix("}")  # the last utterance, the list and the record stay open
        return (
            f"Sure! Here is the conversation:\n{broken}\nLet me know if you need changes.",
            "stop",
        )
    return text, "stop"


def plain_text(text: str, behaviour: str) -> tuple[str, str]:
    """(text, finish_reason) of a plain reply (a turn or a DRI fill) shaped by `behaviour`."""
    if behaviour == "refusal":
        return REFUSAL, "stop"
    if behaviour == "truncated":
        return text[: max(1, int(len(text) * 0.6))], "length"
    return text, "stop"


def tokens(text: str) -> int:
    return len(text) // 4 + 1


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def request_kind(body: dict[str, Any]) -> str:
    """ "dri", "dialogue", "seeker_turn" or "supporter_turn", from the messages of a request.

    "[MASKED]" is checked first: an inpainting prompt may also show dialogue JSON.
    """
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    last_user = users[-1] if users else ""
    if "[MASKED]" in last_user:
        return "dri"
    system_text = " ".join(
        _text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    ).lower()
    if "crisis" in system_text and "evidence" in system_text:
        return "crisis_check"
    if '"content"' in last_user:
        return "dialogue"
    system = " ".join(
        _text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    return "seeker_turn" if "seeker" in system.lower() else "supporter_turn"


def _conform(record: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The record cut to the dialogue schema: its properties, its item count, its strategies."""
    properties = schema.get("properties") or {}
    content = list(record["content"])
    bounds = properties.get("content") or {}
    if bounds.get("maxItems"):
        content = content[: int(bounds["maxItems"])]
    defs = schema.get("$defs") or {}
    allowed: list[str] = []
    for definition in defs.values():
        enum = ((definition.get("properties") or {}).get("AI Strategy") or {}).get("enum")
        allowed += enum or []
    if allowed:
        content = [
            item
            if "User" in item or item.get("AI Strategy") in allowed
            else {**item, "AI Strategy": allowed[0]}
            for item in content
        ]
    value = {key: record[key] for key in properties if key in record and key != "content"}
    return {**value, "content": content} if "content" in properties else value


def strict_problem(schema: dict[str, Any], where: str = "root") -> str | None:
    """Why OpenAI's strict mode would refuse the schema, or None."""
    if not isinstance(schema, dict):
        return f"{where} is not a schema"
    for name, definition in (schema.get("$defs") or {}).items():
        problem = strict_problem(definition, f"$defs/{name}")
        if problem:
            return problem
    if schema.get("type") == "object":
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return f"'additionalProperties' is required to be supplied and to be false at {where}"
        if sorted(schema.get("required") or []) != sorted(properties):
            return f"'required' is required to include every key in 'properties' at {where}"
        for name, value in properties.items():
            problem = strict_problem(value, f"{where}/{name}")
            if problem:
                return problem
    for key in ("anyOf",):
        for number, value in enumerate(schema.get(key) or []):
            problem = strict_problem(value, f"{where}/{key}/{number}")
            if problem:
                return problem
    if "items" in schema:
        return strict_problem(schema["items"], f"{where}/items")
    return None


# ---- the server -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops connections when many clients start at once

    def __init__(self, fake: FakeTeacher) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (timeout tests) is not an error here


class _Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK hold the body back for ~40 ms on every answer.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (a timeout test): nothing to do

    def _error(
        self, status: int, message: str, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, _error_body(status, message, kind), headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- routes --

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": MODEL_ID,
                            "object": "model",
                            "created": 0,
                            # llama.cpp's server says who it is here.
                            "owned_by": (
                                "llamacpp"
                                if self.server.fake.kind == "llamacpp"
                                else "fake-teacher"
                            ),
                        }
                    ],
                },
            )
        else:
            self._error(404, f"no route for GET {self.path}", "invalid_request_error")

    def do_POST(self) -> None:
        raw = self._read_body()
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route for POST {self.path}", "invalid_request_error")
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._error(400, f"invalid JSON body: {exc}", "invalid_request_error")
            return
        fake = self.server.fake
        behaviour = fake._arrived(body, dict(self.headers.items()))
        try:
            answer = self._answer(fake, body, behaviour)
        finally:
            # Counted out before the answer is written: once the client has it, a request it sends
            # next must not find this one still counted (peak_in_flight stays exact).
            fake._left()
        if answer is None:
            self.close_connection = True  # stopped meanwhile: hang up without an answer
        elif body.get("stream") and answer[0] == 200 and isinstance(answer[1].get("choices"), list):
            if fake.streaming == "refuse":
                message = "streaming is not supported by this server"
                self._error(400, message, "invalid_request_error")
            elif fake.streaming == "ignore":
                self._send_json(*answer)
            else:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._send_events(answer[1], include_usage, fake)
        else:
            self._send_json(*answer)

    def _send_events(self, completion: dict[str, Any], include_usage: bool, fake: Any) -> None:
        """The completion as a real server streams it: chunked transfer, an event per word."""
        head = {k: completion[k] for k in ("id", "created", "model")}
        head["object"] = "chat.completion.chunk"

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            event = {**head, "choices": choices}
            if usage is not None:
                event["usage"] = usage
            return b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"

        self._held: list[bytes] = []
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for choice in completion["choices"]:
                index = choice.get("index", 0)
                message = choice.get("message") or {}
                first = {"role": "assistant", "content": ""}
                self._write_chunk(chunk([{"index": index, "delta": first, "finish_reason": None}]))
                for piece in re.findall(r"\s*\S+", message.get("content") or ""):
                    if fake.chunk_delay and not fake._pause(fake.chunk_delay):
                        self.close_connection = True  # stopped: hang up mid-answer
                        return
                    delta = {"content": piece}
                    self._write_chunk(
                        chunk([{"index": index, "delta": delta, "finish_reason": None}])
                    )
                if message.get("refusal"):
                    delta = {"refusal": message["refusal"]}
                    self._write_chunk(
                        chunk([{"index": index, "delta": delta, "finish_reason": None}])
                    )
                end = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
                self._write_chunk(chunk([end]))
            if include_usage:
                self._write_chunk(chunk([], completion.get("usage")))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except OSError:
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        """One chunk of the body; without `chunk_delay` they are held and go out together with
        the last, empty one (fewer writes: the fake must not slow a benchmark down)."""
        self._held.append(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if self.server.fake.chunk_delay or not data:
            self.wfile.write(b"".join(self._held))
            self.wfile.flush()
            self._held.clear()

    def _answer(self, fake: FakeTeacher, body: dict[str, Any], behaviour: str) -> _Answer | None:
        """(status, payload, headers) for a chat request, or None if the server stopped meanwhile."""
        if behaviour not in BEHAVIOURS:
            message = f"fake teacher: unknown behaviour {behaviour!r}"
            return 500, _error_body(500, message, "server_error"), {}
        if not fake._pause(fake.latency):
            return None
        refused = fake._refuse_format(body)
        if refused is not None:
            status, message = refused
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return status, _error_body(status, message, kind), {}
        if behaviour == "rate_limited":
            message = "Rate limit reached for fake-teacher: please try again in 1s."
            return 429, _error_body(429, message, "rate_limit_error"), {"Retry-After": RETRY_AFTER}
        if behaviour == "server_error":
            message = "The server had an error while processing your request."
            return 500, _error_body(500, message, "server_error"), {}
        if behaviour == "bad_request":
            message = "Invalid request: 'messages' could not be processed."
            return 400, _error_body(400, message, "invalid_request_error"), {}
        if behaviour == "error_body_200":  # some proxies answer errors with status 200
            return 200, _error_body(500, "upstream failed", "server_error"), {}
        if behaviour == "no_choices":
            completion = fake._completion(body, "valid")
            return 200, {**completion, "choices": []}, {}
        if behaviour == "slow" and not fake._pause(SLOW_SECONDS):
            return None
        return 200, fake._completion(body, behaviour), {}


def _error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    """An OpenAI-style error body."""
    code = {429: "rate_limit_exceeded", 400: "invalid_request", 404: "not_found"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_Answer = tuple[int, dict[str, Any], dict[str, str]]


class FakeTeacher:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 and a free port (see the module doc)."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        default: str = "valid",
        esconv_file: Path | None = None,
        kind: str = "plain",
        streaming: str = "sse",
        chunk_delay: float = 0.0,
    ) -> None:
        if streaming not in ("sse", "refuse", "ignore"):
            raise ValueError(f"unknown streaming {streaming!r}: sse, refuse or ignore")
        if default not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {default!r}; known: {sorted(BEHAVIOURS)}")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
        self.latency = latency
        self.default = default
        self.kind = kind
        self.streaming = streaming
        self.chunk_delay = chunk_delay
        self.ignore_n = kind == "llamacpp"  # llama.cpp sends one choice whatever n
        self.crisis_words: tuple[str, ...] = ("the bridge",)  # what its crisis check calls risk
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []  # lower-cased names, same order as requests
        self.in_flight = 0  # chat requests being answered now
        self.peak_in_flight = 0  # the most answered at once since start
        self.pool = load_pool(Path(esconv_file) if esconv_file else default_esconv_file())
        self.url = ""
        self._lock = threading.Lock()
        self._counters = {"dialogue": 0, "supporter": 0, "seeker": 0, "id": 0}
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> FakeTeacher:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-teacher-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # sleeping handlers ("slow", latency) return at once
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive handlers wake up and end
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what handlers call --

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _arrived(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        """Record a request and take the behaviour it gets."""
        with self._lock:
            self.requests.append(body)
            self.request_headers.append({k.lower(): v for k, v in headers.items()})
            behaviour = self.script.pop(0) if self.script else self.default
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return behaviour

    def _left(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _pause(self, seconds: float) -> bool:
        """Sleep, unless the server stops meanwhile; False if it did."""
        if seconds > 0:
            self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def _take(self, counter: str, items: tuple[Any, ...]) -> Any:
        with self._lock:
            index = self._counters[counter]
            self._counters[counter] = index + 1
        return items[index % len(items)]

    def _schema(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The schema this server enforces for the request, or None (free text)."""
        form = body.get("response_format")
        if not isinstance(form, dict):
            return None
        if self.kind == "llamacpp" and form.get("type") == "json_object":
            schema = form.get("schema")
            return schema if isinstance(schema, dict) else {}
        if self.kind == "openai" and form.get("type") == "json_schema":
            return form["json_schema"]["schema"]
        if self.kind == "openai" and form.get("type") == "json_object":
            return {}
        return None

    def _refuse_format(self, body: dict[str, Any]) -> tuple[int, str] | None:
        form = body.get("response_format")
        if not isinstance(form, dict) or self.kind == "plain":
            return None
        kind = form.get("type")
        if self.kind == "rejects_format":
            return 400, "Unrecognized request argument supplied: response_format"
        if self.kind == "llamacpp" and kind == "json_schema":
            return 500, "Internal Server Error"
        if self.kind == "openai" and kind == "json_schema":
            spec = form.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                return 400, "Missing required parameter: 'response_format.json_schema.schema'."
            problem = strict_problem(spec["schema"])
            if problem:
                return 400, f"Invalid schema for response_format '{spec.get('name')}': {problem}"
        return None

    def _crisis_verdict(self, body: dict[str, Any], behaviour: str) -> tuple[str, str]:
        """A judge for the crisis gate's teacher check: risk when the seeker's words hold one of
        `crisis_words` (the sentence that holds it is the evidence). Deterministic, for wiring."""
        if behaviour == "invalid_json":
            return "I think this person may be fine, hard to say.", "stop"
        users = [_text_of(m.get("content")) for m in body.get("messages") or []
                 if isinstance(m, dict) and m.get("role") == "user"]  # fmt: skip
        text = users[-1] if users else ""
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
            if any(word in sentence.lower() for word in self.crisis_words):
                verdict = {"crisis": True, "category": "suicide", "evidence": sentence.strip()}
                break
        else:
            verdict = {"crisis": False, "category": "none", "evidence": ""}
        return json.dumps(verdict), "stop"

    def _structured_choice(
        self, index: int, kind: str, schema: dict[str, Any], behaviour: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A choice that follows `schema` ({} for bare JSON), as a server enforcing it writes."""
        message: dict[str, Any] = {"role": "assistant"}
        if behaviour == "refusal" and self.kind == "openai":
            message |= {"content": None, "refusal": REFUSAL}
            return {"index": index, "message": message, "finish_reason": "stop", "logprobs": None}
        properties = schema.get("properties") or {}
        if kind == "crisis_check":
            value: Any = json.loads(self._crisis_verdict(body, "valid")[0])
        elif "replies" in properties:
            count = int(properties["replies"].get("minItems") or 1)
            value = {
                "replies": [self._take("supporter", self.pool.supporter) for _ in range(count)]
            }
        elif kind == "dri":
            value = {"reply": self._take("supporter", self.pool.supporter)}
        else:
            record = self._take("dialogue", self.pool.dialogues)
            value = _conform(record, schema) if schema else record
        text = json.dumps(value, ensure_ascii=False)
        finish = "stop"
        if behaviour == "truncated":
            text, finish = text[: int(len(text) * 0.6)], "length"
        message["content"] = text
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}

    def _completion(self, body: dict[str, Any], behaviour: str) -> dict[str, Any]:
        kind = request_kind(body)
        try:
            n = max(1, int(body.get("n") or 1))
        except (TypeError, ValueError):
            n = 1
        if self.ignore_n:
            n = 1
        schema = self._schema(body)
        choices: list[dict[str, Any]] = []
        for index in range(n):
            if schema is not None:
                choices.append(self._structured_choice(index, kind, schema, behaviour, body))
                continue
            if kind == "crisis_check":
                text, finish = self._crisis_verdict(body, behaviour)
            elif kind == "dialogue":
                text, finish = dialogue_text(self._take("dialogue", self.pool.dialogues), behaviour)
            elif kind == "seeker_turn":
                text, finish = plain_text(self._take("seeker", self.pool.seeker), behaviour)
            else:  # a DRI fill or a supporter turn
                text, finish = plain_text(self._take("supporter", self.pool.supporter), behaviour)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            )
        prompt = "\n".join(
            _text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)
        )
        prompt_tokens = tokens(prompt)
        completion_tokens = sum(
            tokens(c["message"]["content"] or c["message"].get("refusal") or "") for c in choices
        )
        with self._lock:
            self._counters["id"] += 1
            number = self._counters["id"]
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def run_dri_job(url: str, concurrency: int = 1, candidates: int = 3) -> Any:
    """A DRI job (one random supporter turn per accepted dialogue, `candidates` fills each) run
    inline against the teacher at `url`; returns the finished job. For tests."""
    from generation import runner
    from generation.models import GenerationJob, new_job
    from generation.teacher import Sampling, TeacherConfig

    job = new_job(
        GenerationJob.Kind.DRI,
        teacher=TeacherConfig("http", "fake-teacher", url).as_dict(),
        sampling=Sampling().as_dict(),
        dri_candidates=candidates,
        dri_mask="random",
        dri_turns_per_dialogue=1,
        duplicate_threshold=None,
    )
    return runner.run_inline(job.pk, concurrency=concurrency)
