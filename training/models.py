from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

from django.conf import settings
from django.db import models
from django.db.models import F, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from curation.models import Release

LOG_LINES = 50  # lines of the worker's log kept on the row


class LeasedRun(models.Model):
    """A row a training worker runs under a lease: TrainingJob and Experiment.

    A worker claims the row (queued -> running) with a conditional UPDATE, so a redelivered task
    never runs it twice at once; it writes progress (`record`) and beats while it works, and ends
    the row with `finish`. A row no worker has reported on for a whole lease
    (TRAINING_LEASE_SECONDS) is taken for abandoned and queued again when a worker starts.

    A subclass has its own `Status` choices, with at least queued, running, done, failed and
    cancelled; `ACTIVE` are the statuses a worker holds the row in. The `ON_*` dictionaries are
    the subclass's own fields the transitions write besides the lease's.
    """

    Status: ClassVar[Any]
    FINISHED: ClassVar[tuple[str, ...]]
    ACTIVE: ClassVar[tuple[str, ...]]
    ON_CLAIM: ClassVar[dict[str, Any]] = {}  # an earlier attempt's progress, reset
    ON_FINISH: ClassVar[dict[str, Any]] = {}
    ON_CANCEL_QUEUED: ClassVar[dict[str, Any]] = {}  # a queued row cancelled before it started
    ON_ORPHANED: ClassVar[dict[str, Any]] = {}  # a row queued again after its worker stopped

    # Each subclass declares it again with its own choices.
    status = models.CharField(max_length=10, default="queued")
    # The new-row form's one-time token: a double-clicked submit creates one row.
    request_key = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The lease, written by the worker that holds the row.
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    log_tail = models.TextField(blank=True)

    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_stale(self) -> bool:
        """Running, but its worker has not reported for a whole lease: it probably died."""
        if self.status not in self.ACTIVE or self.heartbeat_at is None:
            return False
        lease = timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
        return timezone.now() - self.heartbeat_at > lease

    def _this(self, **lookups: Any) -> QuerySet[Self]:
        return type(self)._default_manager.filter(pk=self.pk, **lookups)

    def held(self) -> QuerySet[Self]:
        """This row while this worker holds it: what the worker's writes update."""
        return self._this(worker=self.worker, status__in=self.ACTIVE)

    def claim(self, worker: str) -> bool:
        """queued -> running for `worker`, once; False when it is not queued (any more)."""
        now = timezone.now()
        updated = self._this(status=self.Status.QUEUED).update(
            status=self.Status.RUNNING,
            worker=worker,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
            finished_at=None,
            error="",
            **self.ON_CLAIM,
        )
        self.refresh_from_db()
        return updated == 1

    def record(self, **values: Any) -> None:
        """Write progress fields while this worker still holds the row."""
        now = timezone.now()
        self.held().update(**values, updated_at=now, heartbeat_at=now)
        for name, value in values.items():
            setattr(self, name, value)
        self.updated_at = self.heartbeat_at = now

    def beat(self) -> None:
        """The worker is alive (between progress reports)."""
        self.held().update(heartbeat_at=timezone.now())

    def finish(self, status: str, error: str = "", **values: Any) -> bool:
        """running -> done, failed or cancelled; False when it had ended already or another
        worker holds it."""
        updated = self.held().update(
            status=status,
            error=error[:4000],
            finished_at=timezone.now(),
            **self.ON_FINISH,
            **values,
        )
        self.refresh_from_db()
        return updated == 1

    def request_cancel(self) -> bool:
        """A queued row ends at once; a running one is asked to stop (its worker ends it at the
        next step). False when it had ended already."""
        ended = self._this(status=self.Status.QUEUED).update(
            status=self.Status.CANCELLED,
            cancel_requested=True,
            finished_at=timezone.now(),
            **self.ON_CANCEL_QUEUED,
        )
        asked = self._this(status__in=self.ACTIVE).update(cancel_requested=True)
        self.refresh_from_db()
        return bool(ended or asked)

    @classmethod
    def orphans_of(cls, worker: str) -> list[int]:
        """At worker start: rows this worker name held before it restarted (it died holding
        them) or that no worker has reported on for a whole lease, each queued again; with every
        queued one, whose message may be lost."""
        lease = timezone.now() - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
        rows = cls._default_manager
        abandoned = rows.filter(Q(worker=worker) | Q(heartbeat_at__lt=lease), status__in=cls.ACTIVE)
        ids = list(abandoned.values_list("pk", flat=True))
        rows.filter(pk__in=ids, status__in=cls.ACTIVE).update(
            status=cls.Status.QUEUED, **cls.ON_ORPHANED
        )
        queued = rows.filter(status=cls.Status.QUEUED)
        return sorted(set(ids) | set(queued.values_list("pk", flat=True)))


class TrainingJob(LeasedRun):
    """One LoRA training run of the student on a release, then its evaluation.

    A worker claims, runs and ends it as LeasedRun says. The run folder keeps checkpoints: a job
    whose worker died is queued again and continues from its last one.
    """

    class Variant(models.TextChoices):
        SFT = "sft", "SFT: whole dialogues"
        SFT_DRI = "sft_dri", "SFT + DRI: dialogues plus the release's DRI replies"
        SFT_DPO = "sft_dpo", "SFT, then DPO on the release's preference pairs"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Training"
        EVALUATING = "evaluating", "Evaluating"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)
    ACTIVE = (Status.RUNNING, Status.EVALUATING)
    ON_FINISH = {"eta_s": None}
    ON_ORPHANED = {"phase": "Queued again after its worker stopped"}

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="training_jobs")
    base_model = models.CharField(
        max_length=500,
        blank=True,
        help_text="A local model folder or a name cached offline; empty: the local SmolLM2-135M-Instruct.",
    )
    variant = models.CharField(max_length=10, choices=Variant.choices, default=Variant.SFT)
    # TrainConfig fields other than data, out, base, variant, seed and resume (see training.sft).
    hyperparameters = models.JSONField(default=dict)
    seed = models.IntegerField(default=0)
    evaluate = models.BooleanField(
        default=True,
        help_text="False: the student is trained, not scored ('train without evaluation').",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)

    # Progress, written by the worker at most every few seconds.
    phase = models.CharField(max_length=200, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    # While evaluating: replies generated, of all the models scored (base, then student).
    replies_done = models.PositiveIntegerField(default=0)
    replies_total = models.PositiveIntegerField(default=0)
    resumed_from = models.PositiveIntegerField(
        null=True, blank=True, help_text="the checkpoint step the last attempt continued from"
    )
    losses = models.JSONField(default=list, blank=True)  # [[step, loss], ...]

    # What the run left behind.
    run_dir = models.CharField(max_length=500, blank=True)
    adapter_dir = models.CharField(max_length=500, blank=True)
    resolved_config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)  # {"base": {...}, "student": {...}}
    samples = models.JSONField(default=list, blank=True)  # replies side by side
    model_card = models.CharField(max_length=500, blank=True)
    report = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"], name="trainingjob_status")]

    def __str__(self) -> str:
        return f"Training job #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("training-job-detail", args=[self.pk])

    @property
    def percent(self) -> int:
        """Of the steps while training, of the replies while evaluating."""
        if self.status == self.Status.DONE:
            return 100
        if self.status == self.Status.EVALUATING:
            return round(100 * self.replies_done / self.replies_total) if self.replies_total else 0
        return round(100 * self.step / self.total_steps) if self.total_steps else 0

    @property
    def progress_label(self) -> str:
        """What `percent` counts, e.g. "30/100 steps" or "12/40 replies"."""
        if self.status == self.Status.EVALUATING:
            return f"{self.replies_done}/{self.replies_total or '?'} replies"
        return f"{self.step}/{self.total_steps or '?'} steps"

    @property
    def can_resume(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.CANCELLED) or self.is_stale

    def end_training(self, adapter_dir: Path, resolved: dict[str, Any], evaluating: bool) -> None:
        """Training is over: keep what it made; then the models are scored, or (`evaluating`
        False) the job only writes its card."""
        self.record(
            status=self.Status.EVALUATING if evaluating else self.Status.RUNNING,
            phase="Evaluating" if evaluating else "Writing the model card",
            replies_done=0,
            replies_total=0,
            adapter_dir=str(adapter_dir),
            resolved_config=resolved,
            step=resolved.get("steps", self.step),
            total_steps=resolved.get("total_steps", self.total_steps),
            loss=resolved.get("final_loss", self.loss),
            eta_s=None,
        )

    def stop_requested(self) -> bool:
        return TrainingJob.objects.filter(pk=self.pk, cancel_requested=True).exists()

    def requeue(self) -> bool:
        """Queue a failed, cancelled or abandoned job again; its run continues from the last
        checkpoint. The caller enqueues the task."""
        lease = timezone.now() - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
        resumable = Q(status__in=[self.Status.FAILED, self.Status.CANCELLED]) | Q(
            status__in=self.ACTIVE, heartbeat_at__lt=lease
        )
        updated = TrainingJob.objects.filter(resumable, pk=self.pk).update(
            status=self.Status.QUEUED,
            cancel_requested=False,
            finished_at=None,
            error="",
            phase="Queued again",
        )
        self.refresh_from_db()
        return updated == 1

    def unqueue(self, before: TrainingJob) -> None:
        """Undo `requeue` (its task could not be sent): the job is again as `before`, unless a
        worker has taken it meanwhile."""
        TrainingJob.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=before.status,
            cancel_requested=before.cancel_requested,
            finished_at=before.finished_at,
            error=before.error,
            phase=before.phase,
        )
        self.refresh_from_db()

    def sft_counterparts(self) -> tuple[TrainingJob | None, TrainingJob | None]:
        """For an SFT + DRI job, (twin, other): the latest finished SFT-only job on the same
        release trained with the same settings (base, seed, hyperparameters), which the page
        compares with; and, when there is none, the latest one trained otherwise, which the page
        names to say why it compares with nothing. (None, None) for an SFT job."""
        if self.variant != self.Variant.SFT_DRI:
            return None, None
        finished = list(
            TrainingJob.objects.filter(
                release_id=self.release_id, variant=self.Variant.SFT, status=self.Status.DONE
            )
            .exclude(metrics={})
            .order_by("-finished_at")[:50]
        )
        twin = next((job for job in finished if self.same_settings(job)), None)
        return twin, None if twin is not None else next(iter(finished), None)

    def same_settings(self, other: TrainingJob) -> bool:
        return (self.base_model, self.seed, self.hyperparameters) == (
            other.base_model,
            other.seed,
            other.hyperparameters,
        )


class Experiment(LeasedRun):
    """The ablation on one release (training.experiment): the chosen arms trained and scored on
    the same test turns, with 95% intervals and paired comparisons.

    The same lifecycle as a training job (LeasedRun), but no checkpoint is kept: an experiment
    that runs again (its worker died, or stopped) starts from the beginning.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)
    ACTIVE = (Status.RUNNING,)
    ON_CLAIM = {
        "stage": 0,
        "stages": 0,
        "label": "Starting",
        "done": 0,
        "total": 0,
        "fraction": 0.0,
        "report": {},
        "samples": [],
    }
    ON_CANCEL_QUEUED = {"label": "Cancelled before it started"}
    ON_ORPHANED = {
        "label": "Queued again after its worker stopped: it starts again from the beginning"
    }

    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="experiments")
    arms = models.JSONField(default=list)  # names from training.experiment.ARMS, in run order
    seeds = models.PositiveSmallIntegerField(default=1)
    # The budget of every trained arm: max_steps when set, else the steps `epochs` make.
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    epochs = models.FloatField(null=True, blank=True, default=1.0)
    limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="test turns scored; empty: all of them"
    )
    base_model = models.CharField(max_length=500, blank=True)
    decoding = models.JSONField(default=dict)  # training.experiment.Decoding.as_dict()
    # The teacher as its worker configured it (generation.teacher.TeacherConfig): never a key.
    teacher = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)

    # Progress (training.experiment.Progress), written by the worker at most every few seconds.
    stage = models.PositiveIntegerField(default=0)  # 0-based
    stages = models.PositiveIntegerField(default=0)
    label = models.CharField(max_length=200, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    fraction = models.FloatField(default=0.0)  # of the whole experiment, as the engine says

    # What the run left behind (its files are in training.experiments.run_dir).
    report = models.JSONField(default=dict, blank=True)
    samples = models.JSONField(default=list, blank=True)  # the first lines of replies.jsonl

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"], name="experiment_status")]

    def __str__(self) -> str:
        return f"Experiment #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("training-experiment-detail", args=[self.pk])

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return max(0, min(100, round(100 * self.fraction)))

    @property
    def progress_label(self) -> str:
        """Where it is, e.g. "sft seed 0: training 12/40 (stage 2 of 5)"."""
        if not self.stages:
            return self.label
        counted = f" {self.done}/{self.total}" if self.total else ""
        return f"{self.label}{counted} (stage {self.stage + 1} of {self.stages})"


class ReplyPool(LeasedRun):
    """A trained student's replies on a pool of accepted dialogues that no release holds yet,
    scored by a training worker, the weakest then sent to annotators (training.sendback). Its
    rankings land in whatever split those dialogues get in the next release, where a student can
    train on them; the test split a job was scored on would leave them in test.

    Run under a lease like a training job; one that runs again scores its pool again."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Scoring"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)
    ACTIVE = (Status.RUNNING,)
    ON_CLAIM = {"replies_done": 0, "replies_total": 0, "outcome": {}}
    ON_ORPHANED = {"phase": "Queued again after its worker stopped: it scores the pool again"}

    training_job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="pools")
    rule = models.CharField(max_length=20)
    count = models.PositiveIntegerField(help_text="how many of the weakest replies to send")
    pool_size = models.PositiveIntegerField(help_text="dialogues scored, the oldest first")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=200, blank=True)
    replies_done = models.PositiveIntegerField(default=0)
    replies_total = models.PositiveIntegerField(default=0)
    # What send_back did: {"opened", "waiting", "skipped": [[where, why]], "note", "scored"}.
    outcome = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Reply pool #{self.pk} of {self.training_job}"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return round(100 * self.replies_done / self.replies_total) if self.replies_total else 0
