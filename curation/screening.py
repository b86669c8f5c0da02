"""Safety screening of new dialogues: the crisis gate's classifier, before any annotator sees one.

Every new dialogue passes the gate (generation.crisis_gate) before review. When the classifier
layer is on (settings.SAFETY_SCREEN) new dialogues either:

* ``worker``: wait as SCREENING (held like a flagged one: no review, no release) and a worker
  screens them (task ``curation.screen_dialogues``) moments later, with every other one waiting,
  in batches (`sweep`): imported files and generated dialogues alike; or
* ``inline``: are screened where they are created, in the same transaction.

Nothing waits for good: a worker that starts screens every dialogue still waiting (its message
may have been lost while the broker was down), the leads' safety page counts them and has a
"Screen now" button, and ``manage.py screen_safety`` screens them in the shell. With the layer
off, the rules alone decide where the dialogue is created.

The screen changes a dialogue only while it is still SCREENING (a conditional update), so it
never overrides a lead, an annotator or a second screen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from config.celery import BrokerUnreachable
from curation.models import Dialogue, Event, SafetyStatus, Turn
from generation import crisis_gate, safety

logger = logging.getLogger(__name__)

BATCH = 100  # dialogues screened per transaction


def mode() -> str:
    return str(settings.SAFETY_SCREEN)


def initial_fields(description: str, seeker_texts: list[str], origin: str, where: str) -> dict:
    """The safety fields of a new dialogue. ``where`` is "worker" or "inline": SCREENING, for
    the whole gate to decide (a worker's screen_waiting, or the caller's screen_dialogues right
    away); "rules" (the classifier is off): FLAGGED with the rules' reasons, or nothing."""
    if where in ("worker", "inline"):
        return {"safety_status": SafetyStatus.SCREENING}
    result = crisis_gate.check([description, *seeker_texts], layers=("rules",))
    if result.flagged:
        return {
            "safety_status": SafetyStatus.FLAGGED,
            "safety_notes": result.notes(safety.GATE_SOURCES.get(origin, "crisis gate")),
        }
    return {}


def decide(description: str, seeker_texts: Sequence[str], origin: str) -> dict:
    """The safety fields of a new dialogue, the whole gate run now, before it is stored: for
    callers that screen where they are (generation, in a worker) but outside their write
    transaction, so that SQLite's single writer is not held while the classifier runs.

    The same outcome as screening it inline: FLAGGED with the reasons (``record_flag`` writes its
    event once the row exists) or NONE, each noting when and with which layers it was screened.
    With the classifier off, the rules alone decide, as where dialogues are created."""
    if mode() == "off":
        return initial_fields(description, list(seeker_texts), origin, "rules")
    result = crisis_gate.check([description, *seeker_texts], crisis_gate.screen_layers())
    screened = {"at": timezone.now().isoformat(), "layers": list(result.layers)}
    if result.flagged:
        source = safety.GATE_SOURCES.get(origin, "crisis gate")
        notes = {**result.notes(source), "screened": screened}
        return {"safety_status": SafetyStatus.FLAGGED, "safety_notes": notes}
    return {"safety_status": SafetyStatus.NONE, "safety_notes": {"screened": screened}}


def record_flag(dialogue: Dialogue) -> None:
    """The event of a dialogue the whole gate flagged (by `decide`, before it was stored, or by
    a screen); nothing for one it did not flag or the rules alone did."""
    if dialogue.safety_status == SafetyStatus.FLAGGED and "screened" in dialogue.safety_notes:
        Event.objects.create(
            dialogue=dialogue,
            actor=None,
            action=Event.Action.CRISIS_FLAGGED,
            after={
                "safety_status": SafetyStatus.FLAGGED,
                "source": dialogue.safety_notes.get("source", ""),
            },
        )


def placement() -> str:
    """Where new dialogues created outside a worker are screened, per the setting."""
    return {"worker": "worker", "inline": "inline", "off": "rules"}[mode()]


@dataclass
class ScreenReport:
    screened: int = 0
    flagged: int = 0
    passed: int = 0

    def __str__(self) -> str:
        return f"screened {self.screened}: {self.flagged} flagged, {self.passed} passed"

    def add(self, other: ScreenReport) -> None:
        self.screened += other.screened
        self.flagged += other.flagged
        self.passed += other.passed


def _seeker_prefetch() -> Prefetch:
    seekers = Turn.objects.filter(role=Turn.Role.SEEKER).order_by("index")
    return Prefetch("turns", queryset=seekers, to_attr="seeker_turns")


def screen_dialogues(
    dialogues: Sequence[Dialogue], layers: Sequence[str] | None = None
) -> ScreenReport:
    """Run the classifier (or ``layers``) over these dialogues and settle each one still
    SCREENING: FLAGGED with the reasons, or NONE (the objects given are updated too). Returns
    the counts."""
    return _settle(dialogues, _verdicts(dialogues, layers))


def _verdicts(
    dialogues: Sequence[Dialogue], layers: Sequence[str] | None = None
) -> list[crisis_gate.GateResult]:
    """The gate's verdict on each dialogue, its texts read but nothing written."""
    groups = [
        [d.description, *(t.text for t in getattr(d, "seeker_turns", None) or d.turns.filter(role=Turn.Role.SEEKER).order_by("index"))]
        for d in dialogues
    ]  # fmt: skip
    return crisis_gate.check_many(groups, layers or crisis_gate.screen_layers())


def _settle(
    dialogues: Sequence[Dialogue], results: Sequence[crisis_gate.GateResult]
) -> ScreenReport:
    """Each dialogue still SCREENING settled by its verdict (conditional updates)."""
    report = ScreenReport()
    now = timezone.now()
    # Passed, by (notes, layers): one UPDATE each, as fresh imports share their notes.
    passed: dict[tuple[str, tuple[str, ...]], list[Dialogue]] = {}
    for dialogue, result in zip(dialogues, results, strict=True):
        if result.flagged:
            waiting = Dialogue.objects.filter(pk=dialogue.pk, safety_status=SafetyStatus.SCREENING)
            screened = {"at": now.isoformat(), "layers": list(result.layers)}
            notes = {
                **dialogue.safety_notes,
                **result.notes(safety.GATE_SOURCES.get(dialogue.origin, "crisis gate")),
                "screened": screened,
            }
            changed = waiting.update(
                safety_status=SafetyStatus.FLAGGED, safety_notes=notes, updated_at=now
            )
            if changed:
                dialogue.safety_status, dialogue.safety_notes = SafetyStatus.FLAGGED, notes
                report.flagged += 1
                record_flag(dialogue)
            report.screened += changed
        else:
            key = (json.dumps(dialogue.safety_notes, sort_keys=True), tuple(result.layers))
            passed.setdefault(key, []).append(dialogue)
    for (_, layers_used), group in passed.items():
        screened = {"at": now.isoformat(), "layers": list(layers_used)}
        notes = {**group[0].safety_notes, "screened": screened}
        changed = Dialogue.objects.filter(
            pk__in=[d.pk for d in group], safety_status=SafetyStatus.SCREENING
        ).update(safety_status=SafetyStatus.NONE, safety_notes=notes)
        if changed == len(group):
            for dialogue in group:
                dialogue.safety_status, dialogue.safety_notes = SafetyStatus.NONE, dict(notes)
        else:  # some were settled meanwhile: read back what each has now
            for dialogue in group:
                dialogue.refresh_from_db(fields=["safety_status", "safety_notes"])
        report.passed += changed
        report.screened += changed
    return report


def screen_waiting(ids: Iterable[int] | None = None, limit: int | None = None) -> ScreenReport:
    """Screen the dialogues waiting (``ids`` among them, or all), a batch per transaction."""
    total = ScreenReport()
    query = Dialogue.objects.filter(safety_status=SafetyStatus.SCREENING)
    if ids is not None:
        query = query.filter(pk__in=list(ids))
    pks = list(query.order_by("id").values_list("pk", flat=True)[:limit])
    for start in range(0, len(pks), BATCH):
        batch = list(
            Dialogue.objects.filter(pk__in=pks[start : start + BATCH])
            .prefetch_related(_seeker_prefetch())
            .order_by("id")
        )
        # The classifier runs outside the transaction: on SQLite a write transaction holds the
        # one writer from its start, and generation workers write meanwhile.
        verdicts = _verdicts(batch)
        with transaction.atomic():
            report = _settle(batch, verdicts)
        total.add(report)
    if total.screened:
        logger.info("safety screen: %s", total)
    return total


SWEEP = 200  # dialogues a sweep screens between two renewals of its lock
SWEEP_LEASE = 60  # seconds a sweep's lock outlives a sweeper that stopped renewing it


def sweep() -> ScreenReport:
    """Every dialogue waiting, oldest first, screened in batches by one worker at a time: what a
    screening message asks a worker for.

    Generation stores a dialogue at a time and sends a message for each; the classifier costs
    about a third as much a dialogue in batches as one at a time, so whichever worker takes the
    lock (in Redis, per database) screens everything waiting, while the messages that find it
    taken return at once. The holder looks again after letting go, so a dialogue whose message
    came while it was finishing is not left behind; a message that found the lock taken also
    asks for one more sweep a lease later (one at a time), in case the holder died. Without
    Redis, one pass over what waits, unlocked (a second screen changes nothing)."""
    import redis

    total = ScreenReport()
    try:
        client = _redis()
        lock = client.lock(_key("screening"), timeout=SWEEP_LEASE)
        while True:
            if not lock.acquire(blocking=False):
                if client.set(_key("screening-again"), 1, nx=True, ex=SWEEP_LEASE):
                    send_later(SWEEP_LEASE)
                return total
            try:
                while (report := screen_waiting(limit=SWEEP)).screened:
                    total.add(report)
                    try:
                        lock.reacquire()
                    except redis.exceptions.LockError:  # a batch outlasted the lease: take
                        break  # it again below, or leave the rest to whoever took it
            finally:
                with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile
                    lock.release()
            if not waiting_count():
                return total
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        logger.warning("safety screen without its lock (%s): screening what waits", exc)
        total.add(screen_waiting())
        return total


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


def _key(name: str) -> str:
    """A Redis key of this studio's database: studios (and tests) may share a Redis."""
    database = settings.DATABASES["default"]
    where = "|".join(str(database.get(k, "")) for k in ("ENGINE", "HOST", "PORT", "NAME"))
    return f"extes:{name}:{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def waiting_count() -> int:
    return Dialogue.objects.filter(safety_status=SafetyStatus.SCREENING).count()


def send(ids: Sequence[int] | None = None) -> bool:
    """Ask a worker now to screen these dialogues (all waiting ones when None). False when the
    broker cannot be reached: they stay waiting, counted on the safety page, and a worker that
    starts screens them."""
    from curation.tasks import screen_dialogues_task

    try:
        screen_dialogues_task.delay(list(ids) if ids is not None else None)
    except BrokerUnreachable as exc:
        logger.warning("safety screen not queued (%s): the dialogues wait for a worker", exc)
        return False
    return True


def send_later(seconds: float) -> None:
    """A sweep in `seconds`; nothing when the broker cannot be reached (a worker that starts
    sweeps)."""
    from curation.tasks import screen_dialogues_task

    try:
        screen_dialogues_task.apply_async((None,), countdown=seconds)
    except BrokerUnreachable as exc:
        logger.warning("safety screen not queued (%s)", exc)


def queue(ids: Sequence[int]) -> None:
    """`send` once the current transaction commits (the rows exist for the worker)."""
    pks = list(ids)
    if pks:
        transaction.on_commit(lambda: send(pks))
