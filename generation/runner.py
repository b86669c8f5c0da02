"""Jobs and units in the database: planning, running one unit, advancing rounds, recovery.

Celery tasks (generation/tasks.py) and `--inline` runs call these plain functions. Functions that
make more work return the ids of units to run, and the caller decides how to run them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from curation import screening
from curation.exporting import extes_records
from curation.importing import Reference, create_dialogues, load_reference
from curation.models import Candidate, Dialogue, Scenario, Turn
from curation.parsing import ParsedDialogue
from curation.vocabulary import EXTES_STRATEGIES
from generation import crisis_gate, inpainting, quality, selfchat, vectors
from generation.models import (
    GenerationFailure,
    GenerationJob,
    GenerationUnit,
    dri_dialogues,
    writing,
)
from generation.selfchat import Failure
from generation.teacher import Sampling, Teacher, TeacherConfig, Usage, get_teacher, is_ready

logger = logging.getLogger(__name__)

DEFAULT_SHARES = {s.name: s.extes_share for s in EXTES_STRATEGIES}


# ---- planning ---------------------------------------------------------------------------------


def start(job_id: int) -> list[int]:
    """Start a queued job and plan its first units; returns the unit ids to run."""
    job = GenerationJob.objects.filter(pk=job_id).first()
    if job is None:
        logger.warning("job %s does not exist (deleted?); nothing to start", job_id)
        return []
    if not job.start():
        logger.info("job %s is %s; not starting it again", job_id, job.status)
        return []
    if job.kind == GenerationJob.Kind.DRI:
        _plan_dri(job)
    else:
        _plan_round(job, 1)
    ids = list(job.units.filter(status=GenerationUnit.Status.PENDING).values_list("pk", flat=True))
    if not ids:
        job.finish(
            GenerationJob.Status.FAILED, "nothing to do: no scenarios or no dialogues chosen"
        )
    return ids


def _plan_round(job: GenerationJob, round_number: int) -> None:
    # ignore_conflicts: planning the same round twice (a redelivered task) adds nothing.
    per_round = job.per_round()  # per_scenario each, or a targeted plan's counts
    GenerationUnit.objects.bulk_create(
        [
            GenerationUnit(job=job, round=round_number, scenario=scenario, slot=slot)
            for scenario in job.scenarios.order_by("name")
            for slot in range(per_round[scenario.name])
        ],
        ignore_conflicts=True,
    )


def _plan_dri(job: GenerationJob) -> None:
    if job.dri_turn_ids:  # chosen turns (a student's replies sent back)
        GenerationUnit.objects.bulk_create(
            [
                GenerationUnit(
                    job=job, turn=turn, dialogue=turn.dialogue, scenario=turn.dialogue.scenario
                )
                for turn in Turn.objects.filter(
                    pk__in=job.dri_turn_ids, role=Turn.Role.SUPPORTER
                ).select_related("dialogue__scenario")
            ],
            ignore_conflicts=True,
        )
        return
    rng = random.Random(f"dri-{job.pk}")
    dialogues = dri_dialogues(list(job.scenarios.all()), job.dri_source_status)
    units = []
    for dialogue in dialogues[: job.dri_dialogue_limit]:
        supporter = list(
            dialogue.turns.filter(role=Turn.Role.SUPPORTER)
            .select_related("strategy", "final_strategy")
            .order_by("index")
        )
        chosen = inpainting.choose_turns(
            [t.index for t in supporter],
            [_strategy_of(t) for t in supporter],
            job.dri_mask,
            job.dri_turns_per_dialogue,
            job.dri_strategies,
            rng,
        )
        by_index = {t.index: t for t in supporter}
        units += [
            GenerationUnit(job=job, turn=by_index[i], dialogue=dialogue, scenario=dialogue.scenario)
            for i in chosen
        ]
    GenerationUnit.objects.bulk_create(units, ignore_conflicts=True)


# ---- one unit ---------------------------------------------------------------------------------


def process_unit(unit_id: int, worker: str) -> list[int]:
    """Claim and run one unit; returns unit ids that now need running (next round, stale ones)."""
    unit = GenerationUnit.claim(unit_id, worker)
    if unit is None:
        logger.info("unit %s is not claimable (done, cancelled or held by another worker)", unit_id)
        return []
    job = unit.job
    try:
        if job.kind == GenerationJob.Kind.DRI:
            _run_dri_unit(unit)
        else:
            _run_selfchat_unit(unit)
    except Exception as exc:
        logger.exception("unit %s crashed", unit_id)
        with writing():
            unit.complete(
                GenerationUnit.Status.FAILED,
                created=0,
                attempts=unit.attempts,
                usage=None,  # what was spent until the crash, as counted call by call
                error=f"{type(exc).__name__}: {exc}",
            )
    return advance(job.pk) + stale_units(job.pk)


PREPARING_LOCAL_MODEL = "Preparing the local model (first use on this worker, about 20 s)…"


def _teacher(unit: GenerationUnit) -> Teacher:
    """The job's teacher, writing the unit's live counts before each request; the job page
    tells while a worker loads the local model for it."""
    config = TeacherConfig(**unit.job.teacher)
    if config.backend != "local" or is_ready(config):
        return _Reporting(get_teacher(config), unit)
    unit.set_activity(PREPARING_LOCAL_MODEL)
    try:
        return _Reporting(get_teacher(config), unit)
    finally:
        unit.set_activity("")


class _Reporting:
    """A teacher that, before each request, writes the counts of the unit's requests answered
    so far (GenerationUnit.record_call keeps them until then)."""

    def __init__(self, teacher: Teacher, unit: GenerationUnit) -> None:
        self._teacher, self._unit = teacher, unit
        self.backend, self.model = teacher.backend, teacher.model

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        self._unit.flush_calls()
        return self._teacher.chat(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)


def _run_selfchat_unit(unit: GenerationUnit) -> None:
    job = unit.job
    scenario = unit.scenario
    assert scenario is not None
    teacher = _teacher(unit)
    sampling = Sampling.from_dict(job.sampling)
    reference = _reference_data()
    vocab, strategies = reference.vocab, reference.definitions
    rng = random.Random(f"{job.pk}-{unit.pk}")
    vector_of = _VectorMemo()
    gates: list[Callable[[ParsedDialogue], None]] = [_exact_duplicate_gate]
    # Degenerate text (repetition, role confusion) before the embedding-based checks; the
    # off-scenario gate reuses the near-duplicate filter's embedding of the same dialogue.
    quality_gate = quality.gate_for(job.quality_gates, scenario.name, vector_of)
    gates.append(quality_gate)
    if job.duplicate_threshold is not None:
        gates.append(_near_duplicate_gate(scenario.pk, job.duplicate_threshold, vector_of))

    if job.mode == GenerationJob.Mode.TURNS:
        produced = selfchat.write_dialogue_by_turns(
            teacher,
            selfchat.TurnsSpec(
                scenario.name,
                strategies,
                job.exchanges,
                job.strategy_policy,
                job.strategy_shares or DEFAULT_SHARES,
            ),
            vocab,
            sampling,
            rng,
            gates=gates,
            max_attempts=settings.GENERATION_MAX_ATTEMPTS,
            on_call=unit.record_call,
        )
    else:
        examples = _examples(scenario, job, unit.round, rng)
        produced = selfchat.write_dialogue(
            teacher,
            selfchat.DialogueSpec(
                scenario.name, strategies, examples, job.min_utterances, job.max_utterances
            ),
            vocab,
            sampling,
            gates=gates,
            max_attempts=settings.GENERATION_MAX_ATTEMPTS,
            on_call=unit.record_call,
            on_tokens=unit.record_tokens,
        )

    provenance = _provenance(job, unit, produced.attempts, produced.usage)
    provenance["response_format"] = produced.response_format
    # The crisis gate (its classifier too) before the write: SQLite's one writer is not held
    # while it runs.
    safety_fields = _safety_fields(produced.dialogue) if produced.dialogue is not None else {}
    try:
        with writing(), transaction.atomic():
            dialogue = None
            if produced.dialogue is not None:
                dialogue = _store_dialogue(
                    produced.dialogue, produced.raw, scenario, job, unit, provenance, safety_fields
                )
                vector = vector_of.known(produced.dialogue.content_hash())
                if vector is not None:  # the gates' embedding: no process computes it again
                    vectors.store(dialogue.pk, dialogue.content_hash, vector)
            _record(
                unit,
                produced.failures,
                produced.attempts,
                produced.usage,
                dialogue,
                created=1 if dialogue else 0,
                response_format=produced.response_format,
            )
    except IntegrityError:
        # Same text as a dialogue stored since the gate looked: a duplicate after all.
        produced.failures.append(Failure("duplicate", "the same dialogue was stored meanwhile"))
        with writing(), transaction.atomic():
            _record(
                unit,
                produced.failures,
                produced.attempts,
                produced.usage,
                None,
                created=0,
                response_format=produced.response_format,
            )


def _strategy_of(turn: Turn) -> str | None:
    """A supporter turn's strategy: the final one once its dialogue settled (human-reviewed)."""
    chosen = turn.current_strategy
    return chosen.name if chosen else None


def _run_dri_unit(unit: GenerationUnit) -> None:
    job = unit.job
    turn = unit.turn
    assert turn is not None
    teacher = _teacher(unit)
    context = [
        inpainting.ContextTurn(t.role, t.current_text)
        for t in Turn.objects.filter(dialogue_id=turn.dialogue_id).order_by("index")
    ]
    strategy = _strategy_of(turn) or "whichever strategy fits best"
    dedupe = (
        _embedding_deduplicate(job.duplicate_threshold)
        if job.duplicate_threshold is not None
        else inpainting.exact_deduplicate
    )
    result = inpainting.write_candidates(
        teacher,
        context,
        turn.index,
        strategy,
        job.dri_candidates,
        Sampling.from_dict(job.sampling),
        dedupe,
        right_context=job.dri_right_context,
        max_attempts=settings.GENERATION_MAX_ATTEMPTS,
        on_call=unit.record_call,
    )
    provenance = _provenance(job, unit, result.attempts, result.usage)
    provenance["right_context"] = job.dri_right_context
    provenance["response_format"] = result.response_format
    # The same gate as every dialogue's, before the write (SQLite's one writer is not held
    # while the classifier runs): a lead looks first.
    crisis = crisis_gate.check(result.texts)
    with writing(), transaction.atomic():
        if unit.still_mine():
            Candidate.objects.bulk_create(
                Candidate(
                    turn=turn,
                    text=text,
                    strategy=turn.current_strategy,
                    provenance=provenance,
                )
                for text in result.texts
            )
            if crisis.flagged:
                turn.dialogue.flag_by_gate(
                    "DRI gate",
                    list(crisis.categories),
                    list(crisis.matches),
                    [r.as_dict() for r in crisis.reasons],
                )
            if result.texts and job.dri_turn_ids:
                from curation.review import rounds

                rounds.open_waiting(turn_ids=[turn.pk], dri_job_id=job.pk)
        _record(
            unit,
            result.failures,
            result.attempts,
            result.usage,
            turn.dialogue,
            created=len(result.texts),
            ok=bool(result.texts),
            response_format=result.response_format,
        )


def _record(
    unit: GenerationUnit,
    failures: list[Failure],
    attempts: int,
    usage: Usage,
    dialogue: Dialogue | None,
    *,
    created: int,
    ok: bool | None = None,
    response_format: str = "",
) -> None:
    """Mark the unit finished and keep every failed attempt, in the caller's transaction."""
    succeeded = created > 0 if ok is None else ok
    status = GenerationUnit.Status.DONE if succeeded else GenerationUnit.Status.FAILED
    error = "" if succeeded else (failures[-1].detail if failures else "no result")
    if not unit.complete(
        status,
        created=created,
        attempts=attempts,
        usage=usage.as_dict(),
        dialogue=dialogue,
        error=error,
        response_format=response_format,
    ):
        # Another worker took the unit over (our lease ran out): keep nothing of ours.
        transaction.set_rollback(True)
        return
    GenerationFailure.objects.bulk_create(
        GenerationFailure(
            job_id=unit.job_id,
            unit=unit,
            attempt=number,
            failure_class=f.failure_class,
            detail=f.detail[:2000],
            raw_output=f.raw[:20000],
        )
        for number, f in enumerate(failures, start=1)
    )


def _store_dialogue(
    parsed: ParsedDialogue,
    raw: str,
    scenario: Scenario,
    job: GenerationJob,
    unit: GenerationUnit,
    provenance: dict[str, Any],
    safety_fields: dict[str, Any],
) -> Dialogue:
    fields = {
        "scenario": scenario,
        "origin": Dialogue.Origin.GENERATED,
        "source_file": f"generation job {job.pk}",
        "source_record": unit.pk,
        "source_format": f"generated-{job.mode}",
        "raw": {"output": raw},
        "provenance": provenance,
        **safety_fields,  # screened already, before anyone can claim it
    }
    (dialogue,) = create_dialogues([(parsed, fields)], _reference_data().strategy_ids)
    screening.record_flag(dialogue)
    return dialogue


def _safety_fields(parsed: ParsedDialogue) -> dict[str, Any]:
    """The crisis gate on a dialogue about to be stored. With the screen in a worker (the
    default), it waits SCREENING and the screening worker takes it with the others waiting
    (curation.screening.sweep): the classifier in batches costs about a third as much a
    dialogue. Inline, the whole gate runs here, before the write; off, the rules alone."""
    seeker = Turn.Role.SEEKER.value
    seekers = [t.text for t in parsed.turns if t.role == seeker]
    origin = Dialogue.Origin.GENERATED
    if screening.mode() == "worker":
        return screening.initial_fields(parsed.description, seekers, origin, "worker")
    return screening.decide(parsed.description, seekers, origin)


def _provenance(
    job: GenerationJob, unit: GenerationUnit, attempts: int, usage: Usage
) -> dict[str, Any]:
    return {
        "job": job.pk,
        "kind": job.kind,
        "mode": job.mode if job.kind == GenerationJob.Kind.SELFCHAT else "dri",
        "round": unit.round,
        "unit": unit.pk,
        "teacher": job.teacher,
        "prompt_version": job.prompt_version,
        "sampling": job.sampling,
        "attempts": attempts,
        "usage": usage.as_dict(),
    }


# ---- what the teacher sees -------------------------------------------------------------------


def _examples(
    scenario: Scenario, job: GenerationJob, round_number: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Round 1: the scenario's seeds. Later rounds: seeds plus dialogues accepted since, in
    their final state (labels and texts as reviewers and leads settled them)."""
    pool = _example_pool(scenario.pk, later=round_number > 1)
    chosen = rng.sample(pool, min(job.examples_per_prompt, len(pool)))
    missing = [pk for pk in chosen if pk not in _example_records]
    if missing:
        for pk, record in zip(
            sorted(missing), extes_records(Dialogue.objects.filter(pk__in=missing)), strict=True
        ):
            _example_records[pk] = record
    return [_example_records[pk] for pk in chosen]


# Per process: which dialogues may serve as examples (refreshed every EXAMPLES_TTL seconds, so
# newly accepted dialogues join later rounds) and their ExTES records.
EXAMPLES_TTL = 30.0
_example_pools: dict[tuple[int, bool], tuple[float, list[int]]] = {}
_example_records: dict[int, dict[str, Any]] = {}


def _example_pool(scenario_id: int, later: bool) -> list[int]:
    cached = _example_pools.get((scenario_id, later))
    if cached and time.monotonic() - cached[0] < EXAMPLES_TTL:
        return cached[1]
    pool = Dialogue.objects.filter(scenario_id=scenario_id)
    if later:
        accepted = Dialogue.objects.releasable().filter(origin=Dialogue.Origin.GENERATED)
        pool = pool.filter(Q(origin=Dialogue.Origin.SEED) | Q(pk__in=accepted.values("pk")))
    else:
        pool = pool.filter(origin=Dialogue.Origin.SEED)
    ids = sorted(pool.values_list("pk", flat=True))
    if not ids:  # a scenario without seeds (e.g. one found in imported data): any seed will do
        ids = sorted(
            Dialogue.objects.filter(origin=Dialogue.Origin.SEED).values_list("pk", flat=True)
        )
    _example_pools[(scenario_id, later)] = (time.monotonic(), ids)
    return ids


_reference: tuple[float, Reference] | None = None
REFERENCE_TTL = 60.0  # seconds: a lead's edit to a definition reaches the prompts within a minute


def _reference_data() -> Reference:
    """Strategies and scenarios, read once a minute per process rather than once per unit."""
    global _reference
    now = time.monotonic()
    if _reference is None or now - _reference[0] > REFERENCE_TTL:
        _reference = (now, load_reference())
    return _reference[1]


# ---- gates ----------------------------------------------------------------------------------


def _exact_duplicate_gate(dialogue: ParsedDialogue) -> None:
    if Dialogue.objects.filter(content_hash=dialogue.content_hash()).exists():
        raise Failure("duplicate", "the very same dialogue already exists")


class _ScenarioIndex:
    """Embeddings of a scenario's dialogues in this process, topped up with rows added since
    (their stored vectors: generation.vectors)."""

    def __init__(self, scenario_id: int) -> None:
        from generation.embeddings import NearDuplicateIndex

        self.scenario_id = scenario_id
        self.index = NearDuplicateIndex()
        self.last_id = 0
        self.lock = threading.Lock()

    def refresh(self) -> None:
        from generation import vectors

        new = list(
            Dialogue.objects.filter(scenario_id=self.scenario_id, pk__gt=self.last_id)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not new:
            return
        found = vectors.vectors_for(new)
        for pk in new:
            if pk in found:
                self.index.add(pk, found[pk])
        self.last_id = new[-1]


_indexes: dict[int, _ScenarioIndex] = {}
_indexes_lock = threading.Lock()


class _VectorMemo:
    """A dialogue's embedding, computed once for the gates that need it and then stored with
    the dialogue (per unit: the last dialogue only)."""

    def __init__(self) -> None:
        self.memo: dict[str, Any] = {}

    def __call__(self, dialogue: ParsedDialogue) -> Any:
        from generation.embeddings import dialogue_text, get_embedder

        key = dialogue.content_hash()
        if key not in self.memo:
            self.memo.clear()
            self.memo[key] = get_embedder().embed(
                [dialogue_text(dialogue.description, [t.text for t in dialogue.turns])]
            )[0]
        return self.memo[key]

    def known(self, content_hash: str) -> Any | None:
        return self.memo.get(content_hash)


def _near_duplicate_gate(
    scenario_id: int, threshold: float, vector_of: Callable[[ParsedDialogue], Any]
) -> Callable[[ParsedDialogue], None]:
    def gate(dialogue: ParsedDialogue) -> None:
        with _indexes_lock:
            index = _indexes.setdefault(scenario_id, _ScenarioIndex(scenario_id))
        vector = vector_of(dialogue)
        with index.lock:
            index.refresh()
            key, score = index.index.nearest(vector)
        if key is not None and score >= threshold:
            raise Failure("duplicate", f"cosine {score:.3f} to dialogue #{key} (limit {threshold})")

    return gate


def _embedding_deduplicate(threshold: float) -> inpainting.Deduplicate:
    def deduplicate(original: str, kept: list[str], fresh: list[str]) -> list[int]:
        from generation.embeddings import get_embedder

        if not fresh:
            return []
        embedder = get_embedder()
        seen = list(embedder.embed([original, *kept]))
        keep = []
        for index, vector in enumerate(embedder.embed(fresh)):
            if all(float(vector @ other) < threshold for other in seen):
                keep.append(index)
                seen.append(vector)
        return keep

    return deduplicate


# ---- rounds, completion, recovery --------------------------------------------------------------


def advance(job_id: int) -> list[int]:
    """When the current round has no open unit: plan the next one, or finish the job."""
    open_statuses = [GenerationUnit.Status.PENDING, GenerationUnit.Status.RUNNING]
    # A read first: most units finish while others are open, and need no write lock at all.
    if GenerationUnit.objects.filter(
        job_id=job_id,
        job__status=GenerationJob.Status.RUNNING,
        status__in=open_statuses,
        round=GenerationJob.objects.filter(pk=job_id).values("current_round")[:1],
    ).exists():
        return []
    with writing(), transaction.atomic():
        job = GenerationJob.objects.select_for_update().get(pk=job_id)
        if job.status != GenerationJob.Status.RUNNING:
            return []
        open_units = job.units.filter(
            round=job.current_round,
            status__in=[GenerationUnit.Status.PENDING, GenerationUnit.Status.RUNNING],
        )
        if open_units.exists():
            return []
        if job.kind == GenerationJob.Kind.SELFCHAT and job.current_round < job.rounds:
            job.current_round += 1
            job.save(update_fields=["current_round"])
            _plan_round(job, job.current_round)
            return list(
                job.units.filter(
                    round=job.current_round, status=GenerationUnit.Status.PENDING
                ).values_list("pk", flat=True)
            )
        if job.units.filter(status=GenerationUnit.Status.DONE).exists():
            job.finish(GenerationJob.Status.COMPLETED)
        else:
            job.finish(GenerationJob.Status.FAILED, "every unit failed: see the failure samples")
        return []


_last_stale_check: dict[int, float] = {}


def stale_units(job_id: int) -> list[int]:
    """Running units whose worker stopped reporting (killed?): another worker may claim them.

    Looked for at most every tenth of the lease per job and process: a unit only goes stale
    after a whole lease.
    """
    now = time.monotonic()
    if now - _last_stale_check.get(job_id, 0.0) < settings.GENERATION_LEASE_SECONDS / 10:
        return []
    _last_stale_check[job_id] = now
    stale = timezone.now() - timedelta(seconds=settings.GENERATION_LEASE_SECONDS)
    return list(
        GenerationUnit.objects.filter(
            job_id=job_id,
            job__status=GenerationJob.Status.RUNNING,
            status=GenerationUnit.Status.RUNNING,
            heartbeat_at__lt=stale,
        ).values_list("pk", flat=True)
    )


def recover(worker: str) -> tuple[list[int], list[int]]:
    """At worker start: (jobs to start, units to run) that no live worker is on.

    Units this worker name held before it restarted are orphans: their lease is ended at once.
    Pending units are enqueued again; a unit already in the queue is claimed only once anyway.
    """
    GenerationUnit.objects.filter(status=GenerationUnit.Status.RUNNING, claimed_by=worker).update(
        heartbeat_at=timezone.now() - timedelta(days=1)
    )
    running = GenerationJob.objects.filter(status=GenerationJob.Status.RUNNING)
    stale = timezone.now() - timedelta(seconds=settings.GENERATION_LEASE_SECONDS)
    units = GenerationUnit.objects.filter(job__in=running).filter(
        Q(status=GenerationUnit.Status.PENDING)
        | Q(status=GenerationUnit.Status.RUNNING, heartbeat_at__lt=stale)
    )
    queued = GenerationJob.objects.filter(status=GenerationJob.Status.QUEUED)
    unit_ids = list(units.values_list("pk", flat=True))
    # A running job whose last units finished while no worker could advance it.
    for job_id in running.values_list("pk", flat=True):
        unit_ids += advance(job_id)
    return list(queued.values_list("pk", flat=True)), unit_ids


# ---- inline -------------------------------------------------------------------------------------


def run_inline(job_id: int, concurrency: int = 4, worker: str = "inline") -> GenerationJob:
    """Run a job in this process, `concurrency` units at a time, until it ends."""

    def work(unit_id: int) -> list[int]:
        try:
            return process_unit(unit_id, worker)
        finally:
            connection.close()  # this thread's own connection

    pending = start(job_id)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        while pending:
            results = list(pool.map(work, pending))
            pending = sorted({uid for ids in results for uid in ids})
    return GenerationJob.objects.get(pk=job_id)


def clear_caches() -> None:
    """Forget what this process cached about the database (tests switch databases)."""
    global _reference
    _reference = None
    _example_pools.clear()
    _example_records.clear()
    _last_stale_check.clear()
    quality.clear_caches()
    with _indexes_lock:
        _indexes.clear()
