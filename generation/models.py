from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from curation.models import Dialogue, SafetyStatus, Scenario, Turn
from generation.teacher import Usage

_sqlite_writer = threading.Lock()


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Around a write transaction of generation work.

    SQLite has one writer at a time, and a writer that finds it busy sleeps in growing steps (up
    to 100 ms). Threads of one worker therefore queue on a lock here instead; other processes still
    meet SQLite's own wait. PostgreSQL locks rows, so there this does nothing.
    """
    if connection.vendor != "sqlite":
        yield
        return
    with _sqlite_writer:
        yield


FAILURE_CLASSES = (
    "invalid_json",
    "schema",
    "unknown_strategy",
    "too_short",
    "not_alternating",
    "truncated",
    "refusal",
    "http_error",
    "duplicate",
    "prompt_leakage",
    "repetition",
    "role_confusion",
    "off_scenario",
)


class GenerationJob(models.Model):
    class Kind(models.TextChoices):
        SELFCHAT = "selfchat", "Self-chat"
        DRI = "dri", "DRI"

    class Mode(models.TextChoices):
        DIALOGUE = "dialogue", "Whole dialogue"
        TURNS = "turns", "Turn by turn"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SELFCHAT)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.DIALOGUE)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The new-job form's one-time token: a double-clicked submit creates one job.
    request_token = models.CharField(max_length=64, null=True, blank=True, unique=True)

    # What to make. Self-chat: `per_scenario` dialogues per scenario in each of `rounds` rounds.
    scenarios = models.ManyToManyField(Scenario, blank=True, related_name="generation_jobs")
    per_scenario = models.PositiveIntegerField(default=1)
    rounds = models.PositiveIntegerField(default=1)
    current_round = models.PositiveIntegerField(default=0)
    examples_per_prompt = models.PositiveIntegerField(default=1)
    min_utterances = models.PositiveIntegerField(default=8)
    max_utterances = models.PositiveIntegerField(default=30)
    exchanges = models.PositiveIntegerField(
        default=6, help_text="turns mode: seeker/supporter pairs"
    )
    # turns mode: "target" samples each supporter strategy from `strategy_shares`; "teacher" lets it pick.
    strategy_policy = models.CharField(max_length=10, default="target")
    strategy_shares = models.JSONField(default=dict, blank=True)
    # A round targeted from an evaluation (training.targeting): the training job and rule, the
    # weakness and share of each scenario and strategy, and `counts`, the dialogues of each
    # scenario a round (in place of `per_scenario`); empty for an even round.
    plan = models.JSONField(default=dict, blank=True)
    duplicate_threshold = models.FloatField(
        null=True, blank=True, default=0.92, help_text="cosine; empty turns the filter off"
    )
    # The degenerate-text gates it runs and all their thresholds, fixed when it is created.
    quality_gates = models.JSONField(default=dict, blank=True)

    # DRI: which dialogues and turns, and how many candidates per masked turn.
    dri_source_status = models.CharField(max_length=20, default=Dialogue.Status.ACCEPTED)
    dri_dialogue_limit = models.PositiveIntegerField(default=20)
    dri_mask = models.CharField(max_length=10, default="random")  # all | random | strategy
    dri_turns_per_dialogue = models.PositiveIntegerField(default=1)
    dri_strategies = models.JSONField(default=list, blank=True)
    dri_candidates = models.PositiveIntegerField(default=4)
    dri_right_context = models.BooleanField(default=True)
    # These turns only (a student's replies sent back to be ranked, where no candidates were).
    dri_turn_ids = models.JSONField(default=list, blank=True)

    # Provenance shared by everything the job makes (the API key is never stored).
    teacher = models.JSONField(default=dict)  # TeacherConfig: backend, model, base_url
    sampling = models.JSONField(default=dict)
    prompt_version = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job #{self.pk}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def start(self) -> bool:
        """queued -> running, once; False when someone else already started it."""
        updated = GenerationJob.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, started_at=timezone.now(), current_round=1
        )
        self.refresh_from_db()
        return updated == 1

    def request_cancel(self) -> bool:
        now = timezone.now()
        updated = GenerationJob.objects.filter(
            pk=self.pk, status__in=[self.Status.QUEUED, self.Status.RUNNING]
        ).update(status=self.Status.CANCELLED, finished_at=now)
        if updated:
            self.units.filter(status=GenerationUnit.Status.PENDING).update(
                status=GenerationUnit.Status.CANCELLED, finished_at=now
            )
        self.refresh_from_db()
        self.release_rounds()
        return updated == 1

    def finish(self, status: str, error: str = "") -> None:
        GenerationJob.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            status=status, finished_at=timezone.now(), error=error
        )
        self.refresh_from_db()
        self.release_rounds()

    def finish_unstarted(self, error: str) -> None:
        """A queued job that no worker will start (the queue was down) ends as failed."""
        GenerationJob.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.FAILED, finished_at=timezone.now(), error=error
        )
        self.refresh_from_db()
        self.release_rounds()

    def release_rounds(self) -> int:
        """Ranking rounds waiting for this DRI job's candidates open once it has ended, with
        what it wrote (none at all: the original and the student's reply)."""
        if self.kind != self.Kind.DRI or not self.dri_turn_ids or not self.is_finished:
            return 0
        from curation.review import rounds

        return rounds.open_waiting(dri_job_id=self.pk)

    def progress(self) -> dict[str, Any]:
        """Counts derived from the units: one query for the units, one for failures."""
        units = self.units.aggregate(
            total=Count("id"),
            done=Count("id", filter=Q(status=GenerationUnit.Status.DONE)),
            failed=Count("id", filter=Q(status=GenerationUnit.Status.FAILED)),
            cancelled=Count("id", filter=Q(status=GenerationUnit.Status.CANCELLED)),
            running=Count("id", filter=Q(status=GenerationUnit.Status.RUNNING)),
            running_turns=Sum("turns", filter=Q(status=GenerationUnit.Status.RUNNING)),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            calls=Sum("calls"),
            created=Sum("created"),
        )
        # Units of later rounds do not exist yet: the planned total includes them.
        per_round = self.planned_units_per_round()
        planned = per_round * self.rounds if self.kind == self.Kind.SELFCHAT else units["total"]
        finished = units["done"] + units["failed"] + units["cancelled"]
        # Turn by turn, a running unit counts by the share of its turns written so far.
        expected = self.expected_turns
        partial = (units["running_turns"] or 0) / expected if expected else 0
        failures = dict(
            self.failures.values_list("failure_class").annotate(n=Count("id")).order_by()
        )
        formats = dict(
            self.units.exclude(response_format="")
            .values_list("response_format")
            .annotate(n=Count("id"))
            .order_by("-n")
        )
        return {
            "planned": planned,
            "finished": finished,
            "percent": min(100, round(100 * (finished + partial) / planned)) if planned else 0,
            "done": units["done"],
            "failed": units["failed"],
            "running": units["running"],
            "created": units["created"] or 0,
            "prompt_tokens": units["prompt_tokens"] or 0,
            "completion_tokens": units["completion_tokens"] or 0,
            "calls": units["calls"] or 0,
            "failures": {k: failures.get(k, 0) for k in FAILURE_CLASSES if failures.get(k)},
            "failed_attempts": sum(failures.values()),
            "duplicates": failures.get("duplicate", 0),
            "response_formats": formats,
        }

    def planned_units_per_round(self) -> int:
        if self.plan.get("counts"):
            return sum(self.per_round().values())
        return self.per_scenario * self.scenarios.count()

    def per_round(self) -> dict[str, int]:
        """Dialogues of each of the job's scenarios a round, by name."""
        names = list(self.scenarios.order_by("name").values_list("name", flat=True))
        counts = self.plan.get("counts") or {}
        return {name: int(counts.get(name, self.per_scenario)) for name in names}

    @property
    def expected_turns(self) -> int:
        """Utterances a turn-by-turn unit writes (one teacher call each); 0 in other modes."""
        if self.kind == self.Kind.SELFCHAT and self.mode == self.Mode.TURNS:
            return 2 * self.exchanges
        return 0

    def held_dialogues(self) -> dict[str, int]:
        """How many of the dialogues this job made no annotator sees yet, by why: "screening"
        (waiting for the safety screen) and "flagged" (the crisis gate's, for a lead)."""
        held = (SafetyStatus.SCREENING, SafetyStatus.FLAGGED)
        counts = dict(
            self.units.filter(dialogue__safety_status__in=held)
            .values_list("dialogue__safety_status")
            .annotate(n=Count("id"))
            .values_list("dialogue__safety_status", "n")
        )
        return {str(status): counts.get(status, 0) for status in held}

    def live_units(self) -> QuerySet[GenerationUnit]:
        """The running units, with what they did so far, for the job page."""
        return self.units.filter(status=GenerationUnit.Status.RUNNING).select_related(
            "scenario", "turn"
        )

    def rounds_summary(self) -> list[dict[str, Any]]:
        rows = (
            self.units.filter(status=GenerationUnit.Status.DONE, dialogue__isnull=False)
            .values("round")
            .annotate(
                created=Count("id"),
                accepted=Count("id", filter=Q(dialogue__status=Dialogue.Status.ACCEPTED)),
                rejected=Count("id", filter=Q(dialogue__status=Dialogue.Status.REJECTED)),
            )
            .order_by("round")
        )
        return [
            {**row, "rate": round(100 * row["accepted"] / row["created"]) if row["created"] else 0}
            for row in rows
        ]


class GenerationUnit(models.Model):
    """One unit of work: a dialogue slot (job, round, scenario, slot) or a masked turn (job, turn).

    The unique constraints make a redelivered or retried task unable to create a second unit, and
    `claim` lets exactly one worker run a unit at a time.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="units")
    round = models.PositiveIntegerField(default=1)
    scenario = models.ForeignKey(Scenario, null=True, blank=True, on_delete=models.PROTECT)
    slot = models.PositiveIntegerField(default=0)
    turn = models.ForeignKey(Turn, null=True, blank=True, on_delete=models.CASCADE)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The dialogue made (self-chat) or masked (DRI).
    dialogue = models.ForeignKey(Dialogue, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.PositiveIntegerField(default=0)  # dialogues or candidates made
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    # Live, while the unit runs: turns written in this attempt (turn-by-turn mode), the time of
    # the last teacher answer, and what the worker does besides asking (e.g. loading a model).
    turns = models.PositiveIntegerField(default=0)
    last_call_at = models.DateTimeField(null=True, blank=True)
    activity = models.CharField(max_length=200, blank=True)
    # Tokens of the answer being written now, where the teacher tells (the local one does).
    live_tokens = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # How the teacher was asked for the answer's shape: json_schema, json_object, grammar, none.
    response_format = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ["job", "round", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "round", "scenario", "slot"],
                condition=Q(turn__isnull=True),
                name="unit_unique_slot",
            ),
            models.UniqueConstraint(
                fields=["job", "turn"], condition=Q(turn__isnull=False), name="unit_unique_turn"
            ),
        ]
        indexes = [models.Index(fields=["job", "status"], name="unit_job_status")]

    def __str__(self) -> str:
        return f"unit {self.pk} of job {self.job_id}"

    @classmethod
    def claim(cls, pk: int, worker: str) -> GenerationUnit | None:
        """Take the unit if it is pending, or running under a lease that has run out."""
        now = timezone.now()
        stale = now - timedelta(seconds=settings.GENERATION_LEASE_SECONDS)
        claimable = Q(status=cls.Status.PENDING) | Q(
            status=cls.Status.RUNNING, heartbeat_at__lt=stale
        )
        with writing():
            updated = cls.objects.filter(
                claimable, pk=pk, job__status=GenerationJob.Status.RUNNING
            ).update(
                status=cls.Status.RUNNING,
                claimed_by=worker,
                claimed_at=now,
                heartbeat_at=now,
                # What an earlier claim counted is not this claim's work.
                calls=0,
                prompt_tokens=0,
                completion_tokens=0,
                turns=0,
                last_call_at=None,
                activity="",
                live_tokens=0,
            )
        if updated != 1:
            return None
        return cls.objects.select_related("job", "scenario", "turn").get(pk=pk)

    def heartbeat(self) -> None:
        """Tell others this claim is alive; at most every tenth of the lease (writes are costly)."""
        if not self.heartbeat_due():
            return
        now = timezone.now()
        with writing():
            GenerationUnit.objects.filter(pk=self.pk, claimed_by=self.claimed_by).update(
                heartbeat_at=now
            )
        self.heartbeat_at = now

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def _mine(self) -> QuerySet[GenerationUnit]:
        return GenerationUnit.objects.filter(
            pk=self.pk,
            status=self.Status.RUNNING,
            claimed_by=self.claimed_by,
            claimed_at=self.claimed_at,
        )

    def still_mine(self) -> bool:
        return self._mine().exists()

    def record_call(self, usage: Usage, turns: int | None = None) -> None:
        """After each teacher request: its usage joins the live counts.

        The write waits for the unit's next request (`flush_calls`, before it is sent) or its
        end (`complete`): the counts a page reads while the teacher writes are the same, and a
        unit of one request writes once instead of twice, on SQLite's single writer. A request
        that failed (no usage, no turn) only beats.
        """
        if not usage.calls and turns is None:
            self.heartbeat()
            return
        pending = self._pending_calls or {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        if usage.calls:
            pending["calls"] += usage.calls
            pending["prompt_tokens"] += usage.prompt_tokens
            pending["completion_tokens"] += usage.completion_tokens
            pending["last_call_at"] = timezone.now()
        if turns is not None:
            pending["turns"] = turns
        self._pending_calls = pending
        # A lease must not run out for want of a write; and a page that showed the answer being
        # written (live tokens) learns at once that it is in.
        if self.heartbeat_due() or self._tokens_at is not None:
            self.flush_calls()

    def _pending_values(self) -> dict[str, Any]:
        pending = self._pending_calls or {}
        values: dict[str, Any] = {}
        if pending.get("calls"):
            values |= {
                "live_tokens": 0,
                "calls": F("calls") + pending["calls"],
                "prompt_tokens": F("prompt_tokens") + pending["prompt_tokens"],
                "completion_tokens": F("completion_tokens") + pending["completion_tokens"],
                "last_call_at": pending["last_call_at"],
            }
        if "turns" in pending:
            values["turns"] = pending["turns"]
        return values

    def flush_calls(self) -> None:
        """Write the counts of the requests answered since the last write (before the next)."""
        values = self._pending_values()
        if not values:
            return
        now = timezone.now()
        with writing():
            self._mine().update(heartbeat_at=now, **values)
        self._pending_calls = None
        self._tokens_at = None
        self.heartbeat_at = now

    def heartbeat_due(self) -> bool:
        interval = timedelta(seconds=settings.GENERATION_LEASE_SECONDS / 10)
        return self.heartbeat_at is None or timezone.now() - self.heartbeat_at >= interval

    _pending_calls: dict[str, Any] | None = None

    def record_tokens(self, count: int) -> None:
        """While an answer is being written: its tokens so far, at most once a second (it also
        beats)."""
        now = timezone.now()
        if self._tokens_at is not None and (now - self._tokens_at).total_seconds() < 1.0:
            return
        self._tokens_at = now
        with writing():
            self._mine().update(live_tokens=count, heartbeat_at=now)
        self.heartbeat_at = now

    _tokens_at: Any = None

    def set_activity(self, text: str) -> None:
        """What the worker is busy with besides teacher calls; "" when it is done with it."""
        now = timezone.now()
        with writing():
            self._mine().update(activity=text[:200], heartbeat_at=now)
        self.heartbeat_at = now

    @transaction.atomic
    def complete(
        self,
        status: str,
        *,
        created: int,
        attempts: int,
        usage: dict[str, int] | None,
        dialogue: Dialogue | None = None,
        error: str = "",
        response_format: str = "",
    ) -> bool:
        """Record the outcome, if this claim still holds; False means another worker took over.

        `usage` None keeps the counts recorded call by call (a unit that crashed).
        """
        counts = (
            {k: v for k, v in self._pending_values().items() if k != "live_tokens"}
            if usage is None  # a unit that crashed: what it counted, the last requests too
            else {
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
                "calls": usage.get("calls", 0),
            }
        )
        for name in ("turns", "last_call_at"):  # of the last requests, not written yet
            if self._pending_calls and name in self._pending_calls:
                counts[name] = self._pending_calls[name]
        updated = self._mine().update(
            status=status,
            created=created,
            attempts=attempts,
            dialogue=dialogue,
            error=error[:2000],
            finished_at=timezone.now(),
            activity="",
            live_tokens=0,
            response_format=response_format,
            **counts,
        )
        self._pending_calls = None
        return updated == 1


class GenerationFailure(models.Model):
    """One failed attempt: its class, what was wrong and what the teacher wrote."""

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="failures")
    unit = models.ForeignKey(GenerationUnit, on_delete=models.CASCADE, related_name="failures")
    attempt = models.PositiveIntegerField()
    failure_class = models.CharField(
        max_length=20, choices=[(c, c.replace("_", " ")) for c in FAILURE_CLASSES]
    )
    detail = models.TextField(blank=True)
    raw_output = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["job", "failure_class"], name="failure_job_class")]

    def __str__(self) -> str:
        return f"{self.failure_class} in job {self.job_id}"


class DialogueVector(models.Model):
    """A dialogue's sentence embedding for the near-duplicate filter and the off-scenario gate
    (all-MiniLM-L6-v2 of its description and turns, unit length, float32 bytes): computed once,
    in batches, and read by every worker process instead of computed again by each."""

    dialogue = models.OneToOneField(
        Dialogue, on_delete=models.CASCADE, primary_key=True, related_name="vector"
    )
    model = models.CharField(max_length=100)
    content_hash = models.CharField(max_length=64)  # of the text it was computed from
    vector = models.BinaryField()

    def __str__(self) -> str:
        return f"vector of dialogue {self.dialogue_id}"


def dri_dialogues(scenarios: Sequence[Scenario], status: str | None = None) -> QuerySet[Dialogue]:
    """Where a DRI job takes its dialogues, oldest first: those of `scenarios` (all when none is
    given) with `status` (any when None). The planner and the new-job form both ask here."""
    dialogues = Dialogue.objects.order_by("id")
    if scenarios:
        dialogues = dialogues.filter(scenario__in=scenarios)
    if status is not None:
        dialogues = dialogues.filter(status=status)
    return dialogues


def new_job(
    kind: str,
    *,
    teacher: dict[str, str],
    sampling: dict[str, Any],
    scenarios: list[Scenario] | None = None,
    created_by: Any = None,
    **options: Any,
) -> GenerationJob:
    """A queued job with its provenance fixed: teacher, sampling, and the prompt version."""
    from generation import prompts, quality

    mode = options.get("mode", GenerationJob.Mode.DIALOGUE)
    if kind == GenerationJob.Kind.SELFCHAT:
        options.setdefault("quality_gates", quality.job_settings())
    job = GenerationJob.objects.create(
        kind=kind,
        teacher=teacher,
        sampling=sampling,
        prompt_version=prompts.version("dri" if kind == GenerationJob.Kind.DRI else mode),
        created_by=created_by,
        **options,
    )
    if scenarios:
        job.scenarios.set(scenarios)
    return job
