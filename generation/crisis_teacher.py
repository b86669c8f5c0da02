"""The crisis gate's optional third layer: the configured teacher reads a dialogue's seeker turns
and answers in a fixed JSON shape whether they disclose a current risk, in which category, and
the evidence sentence. Off unless EXTES_SAFETY_TEACHER_CHECK=1 and the teacher is a real endpoint
(EXTES_TEACHER_BASE_URL): the local 135M model cannot judge this.

One request per dialogue (the turns in order, so "yes, every night" keeps the question it answers
in view of the model), temperature 0, cached per text in the process. A teacher that cannot be
reached or answers out of shape gives no verdict (the other layers still run), and the failure is
logged; it never blocks an import.

    verdicts([texts, ...]) -> [Verdict | None, ...]
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from generation.schemas import Schema
from generation.teacher import Sampling, TeacherConfig, TeacherError, get_teacher

logger = logging.getLogger(__name__)

PROMPT_VERSION = "crisis-check-1"
SYSTEM = (
    "You review messages that a person wrote to an emotional-support chat, for a team that must "
    "act when someone may be at risk. Decide whether the messages disclose a CURRENT crisis risk "
    "in one of four categories: suicide (thoughts, wishes, plans or preparations to end their "
    "life, including indirect or oblique signs such as goodbyes, giving things away, stockpiling, "
    "a chosen date), self_harm (hurting themselves on purpose), harm_to_others (intent, urges or "
    "intrusive thoughts of hurting someone, threats, stalking), abuse (violence, sexual abuse, "
    "threats or control they suffer now). Figures of speech, resolved past history, grief and "
    "other people's stories are not a current risk. Answer with one JSON object only: "
    '{"crisis": true or false, "category": "suicide" | "self_harm" | "harm_to_others" | '
    '"abuse" | "none", "evidence": "the one sentence, copied exactly, that shows the risk, or an '
    'empty string"}.'
)
CACHE_SIZE = 50_000


class Verdict(BaseModel):
    """The answer; also the schema the teacher is asked to follow (structured output)."""

    model_config = ConfigDict(extra="forbid")

    crisis: bool
    category: Literal["suicide", "self_harm", "harm_to_others", "abuse", "none"]
    evidence: str


VERDICT_SCHEMA = Schema("crisis_verdict", Verdict)


@dataclass(frozen=True)
class TeacherVerdict:
    category: str
    evidence: str
    model: str

    def detail(self) -> str:
        return f"teacher {self.model} ({PROMPT_VERSION})"


_cache: dict[str, TeacherVerdict | None] = {}
_lock = threading.Lock()


def enabled() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "SAFETY_TEACHER_CHECK", False)) and (
        TeacherConfig.from_env().backend == "http"
    )


def _prompt(texts: Sequence[str]) -> str:
    lines = [f"{i}. {t.strip()}" for i, t in enumerate(texts, 1) if t and t.strip()]
    return "The person's messages, in order:\n" + "\n".join(lines)


def _parse(text: str) -> Verdict | None:
    match = re.search(r"\{.*\}", text or "", re.DOTALL)
    if not match:
        return None
    try:
        return Verdict.model_validate(json.loads(match.group(0)))
    except (ValueError, ValidationError):
        return None


def verdict(texts: Sequence[str]) -> TeacherVerdict | None:
    """The teacher's reading of one dialogue's seeker texts: a verdict of risk, or None (no
    risk, or no usable answer)."""
    prompt = _prompt(texts)
    config = TeacherConfig.from_env()
    key = hashlib.sha256(f"{config.model}\n{PROMPT_VERSION}\n{prompt}".encode()).hexdigest()
    with _lock:
        if key in _cache:
            return _cache[key]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    try:
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=300)
        reply = get_teacher(config).chat(messages, sampling, schema=VERDICT_SCHEMA)
    except TeacherError as exc:
        logger.warning("crisis check: the teacher did not answer (%s)", exc)
        return None  # not cached: the next screen asks again
    parsed = _parse(reply.text)
    if parsed is None:
        logger.warning("crisis check: the teacher's answer is not the expected JSON")
        return None
    found = (
        TeacherVerdict(parsed.category, parsed.evidence.strip(), config.model)
        if parsed.crisis and parsed.category != "none"
        else None
    )
    with _lock:
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[key] = found
    return found


def verdicts(groups: Sequence[Sequence[str]]) -> list[TeacherVerdict | None]:
    """One request per group, as many at once as the teacher's concurrency allows."""
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    if len(groups) <= 1:
        return [verdict(texts) for texts in groups]
    workers = max(1, min(len(groups), int(settings.TEACHER_MAX_CONCURRENCY)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(verdict, groups))


def clear_cache() -> None:
    with _lock:
        _cache.clear()
