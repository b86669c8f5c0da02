"""Training pages, for staff with the training permissions. Jobs: list, live progress with the
loss curve and the log, the evaluation when done, downloads, cancel and resume. Experiments:
list, the new-experiment form, live progress, then the results with their intervals, the paired
comparisons, a chart and the replies side by side; downloads and cancel."""

from __future__ import annotations

import copy
import math
import uuid
import zipfile
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeGuard, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation.roles import HtmxHttpRequest, is_lead
from generation.teacher import TeacherConfig
from training import experiments, noise, sendback
from training.card import METRIC_NAMES
from training.experiment import LOWER_IS_BETTER as EXPERIMENT_LOWER_IS_BETTER
from training.experiment import METRICS
from training.forms import ExperimentForm
from training.jobs import not_evaluated_reason, valid_loss_text
from training.models import Experiment, ReplyPool, TrainingJob
from training.tasks import run_experiment, run_job, score_pool

LOWER_IS_BETTER = {"perplexity"}
SHOWN_METRICS = {**METRIC_NAMES, "reply_words": "Words per reply"}
# Keys of evaluations stored before the ESConv convention (0-1 scales): shown with 4 decimals.
LEGACY_METRICS = {
    "bleu1", "bleu2", "bleu4", "rouge_l", "distinct1", "distinct2", "unigram_f1", "strategy_accuracy"
}  # fmt: skip
SAMPLES_SHOWN = 20


def may_view(user: Any) -> bool:
    return bool(user.is_staff and user.has_perm("training.view_trainingjob"))


def may_change(user: Any) -> bool:
    return bool(user.is_staff and user.has_perm("training.change_trainingjob"))


def may_start(user: Any) -> bool:
    """Starting a training job or an experiment: both train students."""
    return bool(user.is_staff and user.has_perm("training.add_trainingjob"))


def staff_required(view: Callable[..., Any]) -> Callable[..., HttpResponseBase]:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not may_view(request.user):
            raise PermissionDenied("Training jobs are for staff with the training permissions.")
        return view(request, *args, **kwargs)

    return wrapped


def _get_job_for_user(request: HttpRequest, pk: int) -> TrainingJob:
    if not may_view(request.user):
        raise PermissionDenied
    return get_object_or_404(TrainingJob.objects.select_related("release", "created_by"), pk=pk)


def _get_rw_job_for_user(request: HttpRequest, pk: int) -> TrainingJob:
    job = _get_job_for_user(request, pk)
    if not may_change(request.user):
        raise PermissionDenied("Cancelling or resuming needs the permission to change jobs.")
    return job


@require_GET
@staff_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = TrainingJob.objects.select_related("release", "created_by")[:100]
    can_train = may_start(request.user)
    return render(request, "training/job_list.html", {"jobs": jobs, "can_train": can_train})


@require_GET
@staff_required
def job_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    job = _get_job_for_user(request, pk)
    twin, other = job.sft_counterparts()
    evaluation, notes = evaluation_rows(job, twin)
    if other is not None and job.metrics:
        notes.append(
            f"The SFT-only job #{other.pk} on this release was trained with other settings "
            "(base model, seed or hyperparameters), so it is not compared with this one: train "
            "an SFT job with the same settings to see what DRI changed."
        )
    done = job.status == TrainingJob.Status.DONE
    valid_loss, no_valid_loss = _valid_loss(job)
    context = {
        "job": job,
        "can_change": may_change(request.user),
        "curve": loss_curve(job.losses),
        "evaluation": evaluation,
        "evaluation_notes": notes,
        "not_evaluated": not_evaluated_reason(job) if done and not job.metrics else "",
        "valid_loss": valid_loss,
        "no_valid_loss": no_valid_loss,
        "twin": twin,
        "samples": job.samples[:SAMPLES_SHOWN],
        "eta": _duration(job.eta_s),
        "hyperparameters": [
            (name, ", ".join(map(str, value)) if isinstance(value, list) else value)
            for name, value in job.hyperparameters.items()
        ],
        "has_adapter": _artefact(job, job.adapter_dir, "adapter_model.safetensors") is not None,
        "has_card": _artefact(job, job.model_card) is not None,
        "has_report": _artefact(job, job.report) is not None,
        "send_back": _send_back_context(job, request.user) if done else None,
    }
    if request.htmx and request.htmx.target == "live":
        return render(request, "training/job_detail.html#live", context)
    return render(request, "training/job_detail.html", context)


@require_POST
@login_required
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_rw_job_for_user(request, pk)
    if job.request_cancel():
        messages.success(request, f"{job}: cancel asked. A running job stops at its next step.")
    else:
        messages.info(request, f"{job} had already ended ({job.get_status_display().lower()}).")
    return redirect(job)


def _send_back_context(job: TrainingJob, user: Any) -> dict[str, Any]:
    """The job page's "back to annotators" section: the rounds sent from this job with their
    rankings so far, and (for a lead) the form, each rule with why it cannot pick, if so."""
    from curation.models import RankRound

    pools = list(job.pools.order_by("-id")[:10])
    return _sent_rows(RankRound.objects.filter(training_job_id=job.pk)) | {
        "pools": pools,
        "pool_running": any(not p.is_finished for p in pools),
        "pool_available": sendback.pool_dialogues().count(),
        "may_send": is_lead(user),
        **_rules(job.samples),
    }


def _rules(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Each rule with why it cannot pick from these samples, if so."""
    rules = [
        {"key": key, "label": label, "problem": sendback.rule_problem(key, samples)}
        for key, label in sendback.RULES.items()
    ]
    usable = [r["key"] for r in rules if not r["problem"]]
    return {
        "rules": rules,
        "any_rule": bool(usable),
        "default_rule": usable[0] if usable else "",
        "most": len(samples),
    }


def _sent_rows(sent_rounds: Any) -> dict[str, Any]:
    """The rounds sent back from one place, with the rankings each has so far."""
    from curation.models import Ranking

    sent = list(sent_rounds.select_related("turn__dialogue").order_by("id"))
    counts: dict[tuple[int, int], int] = {}
    for turn_id, number in Ranking.objects.filter(turn__in=[r.turn_id for r in sent]).values_list(
        "turn_id", "round"
    ):
        counts[turn_id, number] = counts.get((turn_id, number), 0) + 1
    needed = int(settings.REVIEWS_PER_DIALOGUE)
    rows: list[dict[str, Any]] = [
        {"round": r, "rankings": counts.get((r.turn_id, r.number), 0), "needed": needed}
        for r in sent
    ]
    return {"rows": rows, "ranked": sum(1 for row in rows if row["rankings"] >= needed)}


@require_POST
@login_required
def job_send_back(request: HttpRequest, pk: int) -> HttpResponse:
    """A lead sends the student's weakest replies to annotators as ranking rounds."""
    job = _get_job_for_user(request, pk)
    if not is_lead(request.user):
        raise PermissionDenied("Sending replies to annotators is for leads.")
    rule = request.POST.get("rule", "")
    count = _count(request)
    if count is None:
        return redirect(job)
    if request.POST.get("contexts") == "pool":
        return _send_from_pool(request, job, rule, count)
    _send(request, lambda: sendback.send_back(job, rule, count, request.user))
    return redirect(job)


def _count(request: HttpRequest) -> int | None:
    """The form's "how many", or None after saying why it is refused."""
    try:
        count = int(request.POST.get("count", ""))
    except ValueError:
        count = 0
    if not 1 <= count <= 500:
        messages.error(request, "How many replies: a number from 1 to 500.")
        return None
    return count


def _send(request: HttpRequest, send: Callable[[], sendback.Outcome]) -> None:
    """Send, then tell the lead what was sent, what waits for the teacher and what was skipped."""
    try:
        outcome = send()
    except ValueError as exc:
        messages.error(request, f"Nothing was sent: {exc}.")
        return
    sent = len(outcome.opened) + len(outcome.waiting)
    if sent:
        messages.success(
            request,
            f"{sent} of the student's replies sent to annotators to rank "
            f"({len(outcome.opened)} open now).",
        )
    else:
        messages.info(request, "No reply was sent.")
    note = sendback.queue_teacher(outcome, request.user)
    if note:
        (messages.warning if "cannot be reached" in note else messages.info)(request, note)
    if outcome.skipped:
        shown = "; ".join(f"{where}: {why}" for where, why in outcome.skipped[:5])
        more = len(outcome.skipped) - 5
        messages.info(
            request,
            f"{len(outcome.skipped)} skipped: {shown}" + (f"; and {more} more" if more > 0 else ""),
        )


@require_POST
@login_required
def experiment_send_back(request: HttpRequest, pk: int) -> HttpResponse:
    """A lead sends the weakest replies of one trained arm of a finished experiment."""
    experiment = _get_experiment_for_user(request, pk)
    if not is_lead(request.user):
        raise PermissionDenied("Sending replies to annotators is for leads.")
    count = _count(request)
    if count is not None:
        arm, rule = request.POST.get("arm", ""), request.POST.get("rule", "")
        _send(
            request,
            lambda: sendback.send_back(
                sendback.experiment_origin(experiment, arm), rule, count, request.user
            ),
        )
    return redirect(experiment)


def _send_from_pool(request: HttpRequest, job: TrainingJob, rule: str, count: int) -> HttpResponse:
    """Queue the scoring of the student on a pool of accepted, unreleased dialogues."""
    try:
        size = int(request.POST.get("pool_size", ""))
    except ValueError:
        size = 0
    available = sendback.pool_dialogues().count()
    problem = ""
    if job.status != TrainingJob.Status.DONE or not job.adapter_dir:
        problem = "only a finished job's student can be scored"
    elif rule not in ("likelihood", "overlap") and not job.release.file_options.get(
        "strategy_tags"
    ):
        problem = f"the rule {rule!r} needs strategy tags or is unknown"
    elif not available:
        problem = "no accepted dialogue is outside every release: accept some first"
    elif not 1 <= size <= 5000:
        problem = "how many dialogues to score: a number from 1 to 5000"
    if problem:
        messages.error(request, f"Nothing was queued: {problem}.")
        return redirect(job)
    pool = ReplyPool.objects.create(
        training_job=job,
        rule=rule,
        count=count,
        pool_size=min(size, available),
        created_by=cast(User, request.user),
        phase="Waiting for a training worker",
    )
    try:
        score_pool.delay(pool.pk)
    except BrokerUnreachable:
        pool.delete()  # no worker would ever score it
        messages.error(request, f"{QUEUE_UNREACHABLE} Try again once it is back.")
        return redirect(job)
    messages.success(
        request,
        f"{pool} queued: a training worker scores the student on {pool.pool_size} accepted "
        f"dialogues outside every release, then sends the {count} weakest replies.",
    )
    return redirect(job)


@require_POST
@login_required
def job_resume(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_rw_job_for_user(request, pk)
    before = copy.copy(job)
    if not job.requeue():
        messages.info(request, f"{job} is {job.get_status_display().lower()}: nothing to resume.")
        return redirect(job)
    try:
        run_job.delay_on_commit(job.pk)
    except BrokerUnreachable:
        job.unqueue(before)  # as it was: no worker would ever run it
        messages.error(request, f"{QUEUE_UNREACHABLE} Resume it once it is back.")
    else:
        messages.success(request, f"{job} queued again: it continues from its last checkpoint.")
    return redirect(job)


@require_GET
@login_required
def adapter_zip(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    job = _get_job_for_user(request, pk)
    folder = _artefact(job, job.adapter_dir)
    if folder is None or not folder.is_dir():
        raise Http404("This job has no adapter yet.")
    name = f"{job.release.name}-{job.variant}-job{job.pk}-adapter"
    response = StreamingHttpResponse(zip_chunks(folder, name), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{name}.zip"'
    return response


@require_GET
@login_required
def model_card(request: HttpRequest, pk: int) -> FileResponse:
    job = _get_job_for_user(request, pk)
    path = _artefact(job, job.model_card)
    if path is None:
        raise Http404("This job has no model card yet.")
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{job.release.name}-{job.variant}-job{job.pk}-model-card.md",
        content_type="text/markdown; charset=utf-8",
    )


@require_GET
@login_required
def evaluation_report(request: HttpRequest, pk: int) -> FileResponse:
    job = _get_job_for_user(request, pk)
    path = _artefact(job, job.report)
    if path is None:
        raise Http404("This job has no evaluation report yet.")
    return FileResponse(path.open("rb"), content_type="text/html; charset=utf-8")


def _artefact(job: TrainingJob, recorded: str, inside: str = "") -> Path | None:
    """A file or folder the job's worker recorded, only when it exists within TRAINING_DIR."""
    if not recorded:
        return None
    path = Path(recorded).resolve()
    if not path.is_relative_to(Path(settings.TRAINING_DIR).resolve()):
        return None
    if not (path / inside if inside else path).exists():
        return None
    return path


class _Chunks:
    """A write-only file for zipfile that hands over what was written since the last take()."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def zip_chunks(folder: Path, name: str, block: int = 1 << 20) -> Iterator[bytes]:
    """A zip of `folder` (under `name/`), made while it is sent: nothing is staged on disk."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo.from_file(path, f"{name}/{path.relative_to(folder).as_posix()}")
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w") as target:
                for data in iter(lambda: source.read(block), b""):
                    target.write(data)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


# ---- what the page shows ----------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def loss_curve(
    losses: list[list[float]], width: int = 640, height: int = 220, points: int = 400
) -> dict[str, Any] | None:
    """What the SVG loss curve draws: each step's loss (thin) and a moving average (bold), as
    polyline coordinates in a width x height box with room for the axis labels."""
    values = [(float(s), float(v)) for s, v in losses if v is not None and math.isfinite(v)]
    if not values:
        return None
    window = max(1, len(values) // 20)
    smooth, total = [], 0.0
    for k, (_, value) in enumerate(values):
        total += value
        if k >= window:
            total -= values[k - window][1]
        smooth.append(total / min(k + 1, window))
    steps = [s for s, _ in values]
    low, high = min(v for _, v in values), max(v for _, v in values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    first, last = steps[0], steps[-1]
    left, right, top, bottom = 48, width - 8, 8, height - 24

    def x(step: float) -> float:
        return left + (right - left) * ((step - first) / (last - first) if last > first else 0.5)

    def y(value: float) -> float:
        return bottom - (bottom - top) * (value - low) / (high - low)

    stride = max(1, math.ceil(len(values) / points))
    keep = list(range(0, len(values), stride))
    if keep[-1] != len(values) - 1:
        keep.append(len(values) - 1)
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "top": top,
        "bottom": bottom,
        "raw": " ".join(f"{x(steps[k]):.1f},{y(values[k][1]):.1f}" for k in keep),
        "smooth": " ".join(f"{x(steps[k]):.1f},{y(smooth[k]):.1f}" for k in keep),
        "low": f"{low:.3g}",
        "high": f"{high:.3g}",
        "first": int(first),
        "last": int(last),
        "label_y": bottom + 16,
        "mid_y": (top + bottom) / 2,
        "window": window,
    }


def evaluation_rows(
    job: TrainingJob, twin: TrainingJob | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per metric: the base, the student and (for an SFT + DRI job) the student trained
    without DRI, with the difference DRI made; and the notes that say what the colours mean.
    A cell is coloured only when its difference is beyond noise (training.noise)."""
    if not job.metrics:
        return [], []
    columns: list[dict[str, Any]] = [
        job.metrics.get("base") or {},
        job.metrics.get("student") or {},
    ]
    if twin is not None:
        columns.append(twin.metrics.get("student") or {})
    versus_base = noise.compare_samples(job.samples, "base", job.samples, "student")
    versus_twin = (
        noise.compare_samples(twin.samples, "student", job.samples, "student")
        if twin is not None
        else None
    )
    keys = [k for k in SHOWN_METRICS if any(k in c for c in columns)]
    keys += sorted({k for c in columns for k in c} - set(keys))
    rows = []
    for key in keys:
        compared = key not in ("samples", "reply_words", "length")
        digits = 4 if key in LEGACY_METRICS else 2
        base, student = columns[0].get(key), columns[1].get(key)
        row = {
            "name": SHOWN_METRICS.get(key, key),
            "lower_is_better": key in LOWER_IS_BETTER,
            "cells": [_cell(c.get(key), digits) for c in columns],
            "better": None,
            "difference": "-",
        }
        if key not in ("samples", "reply_words") and _number(base) and _number(student):
            row["difference"] = _difference(student - base, versus_base, key, digits)
            if compared:
                row["better"] = _better(key, versus_base)
        if versus_twin is not None:
            without = columns[2].get(key)
            row |= {"dri": "-", "dri_better": None}
            if key not in ("samples", "reply_words") and _number(without) and _number(student):
                row["dri"] = _difference(student - without, versus_twin, key, digits)
                if compared:
                    row["dri_better"] = _better(key, versus_twin)
        rows.append(row)
    return rows, _notes(versus_base, versus_twin)


def _difference(value: float, comparison: noise.Comparison, key: str, digits: int) -> str:
    """A difference and its paired 95% interval when there is one: "+1.23 [0.40, 2.10]"."""
    text = f"{value:+.{digits}f}"
    interval = comparison.intervals.get(key) if comparison.enough else None
    if interval is not None and math.isfinite(interval.low) and math.isfinite(interval.high):
        text += f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return text


def _better(key: str, comparison: noise.Comparison) -> bool | None:
    """Whether the second model of `comparison` does better on `key`; None within noise."""
    direction = comparison.direction(key)
    if direction == 0:
        return None
    return direction < 0 if key in LOWER_IS_BETTER else direction > 0


def _notes(versus_base: noise.Comparison, versus_twin: noise.Comparison | None) -> list[str]:
    least = noise.MIN_REPLIES_TO_COMPARE
    if not versus_base.enough:
        return [
            f"Differences are not coloured: {_replies(versus_base.replies)} scored, at least "
            f"{least} are needed to tell a difference from noise."
        ]
    notes = [
        "A difference is coloured only when it is beyond noise: when the 95% interval of a "
        f"paired bootstrap ({noise.RESAMPLES} resamples of the {versus_base.replies} replies) "
        "excludes 0."
    ]
    if versus_twin is not None and not versus_twin.enough:
        notes.append(
            "The differences with the student without DRI are not coloured: "
            f"{_replies(versus_twin.replies)} scored by both, at least {least} are needed."
        )
    return notes


def _replies(count: int) -> str:
    return f"{count} repl{'y' if count == 1 else 'ies'}"


def _valid_loss(job: TrainingJob) -> tuple[str, str]:
    """Once training has ended: (the validation loss, formatted, or ""; why there is none)."""
    if not job.resolved_config:
        return "", ""
    value = valid_loss_text(job.resolved_config)
    return (f"{value:.4f}", "") if isinstance(value, float) else ("", value)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


# ---- experiments --------------------------------------------------------------------------------

EXPERIMENT_METRICS = {
    "bleu-1": "BLEU-1",
    "bleu-2": "BLEU-2",
    "bleu-3": "BLEU-3",
    "bleu-4": "BLEU-4",
    "rouge-l": "ROUGE-L",
    "distinct-1": "Distinct-1",
    "distinct-2": "Distinct-2",
    "distinct-3": "Distinct-3",
    "unigram-f1": "Unigram F1",
    "length": "Length (tokens)",
    "perplexity": "Perplexity",
    "strategy-accuracy": "Strategy accuracy",
}
UNRANKED = {"length"}  # neither longer nor shorter replies are better: never coloured
CHARTED = ("bleu-2", "rouge-l", "distinct-2", "unigram-f1")
AGAINST = ("sft", "base")  # the arms every other is compared with, in the report's "versus"
EXPERIMENT_FILES = {
    "report.json": "application/json",
    "replies.jsonl": "application/x-ndjson; charset=utf-8",
    "report.html": "text/html; charset=utf-8",
}


def _get_experiment_for_user(request: HttpRequest, pk: int) -> Experiment:
    if not may_view(request.user):
        raise PermissionDenied("Experiments are for staff with the training permissions.")
    return get_object_or_404(Experiment.objects.select_related("release", "created_by"), pk=pk)


def _get_rw_experiment_for_user(request: HttpRequest, pk: int) -> Experiment:
    experiment = _get_experiment_for_user(request, pk)
    if not may_change(request.user):
        raise PermissionDenied("Cancelling needs the permission to change training jobs.")
    return experiment


@require_GET
@staff_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    found = Experiment.objects.select_related("release", "created_by")[:100]
    context = {"experiments": found, "can_start": may_start(request.user)}
    return render(request, "training/experiment_list.html", context)


@require_http_methods(["GET", "POST"])
@staff_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    if not may_start(request.user):
        raise PermissionDenied("Starting an experiment needs the permission to add training jobs.")
    if request.method == "POST":
        form = ExperimentForm(request.POST)
        if form.is_valid():
            experiment = _create_experiment(request, form)
            if experiment is not None:
                return redirect(experiment)
    else:
        release = request.GET.get("release")
        form = ExperimentForm(initial={"token": uuid.uuid4().hex, "release": release})
    context = {
        "form": form,
        "run_fields": form.fields_of(ExperimentForm.RUN),
        "decoding_fields": form.fields_of(ExperimentForm.DECODING_FIELDS),
        "teacher": TeacherConfig.from_env(),
    }
    return render(request, "training/experiment_new.html", context)


def _create_experiment(request: HttpRequest, form: ExperimentForm) -> Experiment | None:
    """The queued experiment; None when the queue cannot be reached (no row is left behind)."""
    data = form.cleaned_data
    token = data["token"]
    existing = Experiment.objects.filter(request_key=token).first()
    if existing is not None:  # the same form sent twice (double click, retry)
        return existing
    try:
        with transaction.atomic():
            experiment = Experiment.objects.create(
                release=data["release"],
                arms=form.arms_in_order(),
                seeds=data["seeds"],
                max_steps=data["max_steps"],
                epochs=None if data["max_steps"] else data["epochs"],
                limit=data["limit"],
                base_model=data["base_model"],
                decoding=form.decoding_settings().as_dict(),
                request_key=token,
                created_by=cast(User, request.user),
            )
            run_experiment.delay_on_commit(experiment.pk)
    except IntegrityError:  # the other submit won the race
        return get_object_or_404(Experiment, request_key=token)
    except BrokerUnreachable:
        experiment.delete()  # committed a moment ago, and no worker would ever start it
        messages.error(request, f"{QUEUE_UNREACHABLE} Try again once it is back.")
        return None
    messages.success(request, f"{experiment} queued on {experiment.release}.")
    return experiment


@require_GET
@staff_required
def experiment_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    experiment = _get_experiment_for_user(request, pk)
    report = experiment.report
    arms = list(report.get("arms", {})) or list(experiment.arms)
    folder = experiments.run_dir(experiment)
    context = {
        "experiment": experiment,
        "can_change": may_change(request.user),
        "arms": arms,
        "results": result_rows(report),
        "comparisons": comparison_tables(report),
        "chart": interval_chart(report),
        "budget": budget_rows(report),
        "samples": sample_rows(experiment.samples[:SAMPLES_SHOWN], arms),
        "decoding": experiment.report.get("decoding") or experiment.decoding,
        "files": [name for name in EXPERIMENT_FILES if (folder / name).is_file()]
        if experiment.status == Experiment.Status.DONE
        else [],
        "send_back": _experiment_send_back(experiment, request.user),
    }
    if request.htmx and request.htmx.target == "live":
        return render(request, "training/experiment_detail.html#live", context)
    return render(request, "training/experiment_detail.html", context)


def _experiment_send_back(experiment: Experiment, user: Any) -> dict[str, Any] | None:
    """The experiment page's "back to annotators": per trained arm, the rules that can pick."""
    from curation.models import RankRound
    from training.experiment import TRAINED

    trained = [arm for arm in experiment.arms if arm in TRAINED]
    if experiment.status != Experiment.Status.DONE or not trained:
        return None
    try:
        samples = sendback.experiment_origin(experiment, trained[0]).samples
    except ValueError:
        return None  # its replies file is gone or unreadable: nothing to send
    return _sent_rows(RankRound.objects.filter(source__experiment=experiment.pk)) | {
        "arms": trained,
        "may_send": is_lead(user),
        **_rules(samples),
    }


@require_POST
@login_required
def experiment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = _get_rw_experiment_for_user(request, pk)
    if experiment.request_cancel():
        messages.success(
            request, f"{experiment}: cancel asked. A running experiment stops at its next step."
        )
    else:
        messages.info(
            request,
            f"{experiment} had already ended ({experiment.get_status_display().lower()}).",
        )
    return redirect(experiment)


@require_GET
@login_required
def experiment_file(request: HttpRequest, pk: int, name: str) -> FileResponse:
    experiment = _get_experiment_for_user(request, pk)
    path = experiments.run_dir(experiment) / name
    if name not in EXPERIMENT_FILES or experiment.status != Experiment.Status.DONE:
        raise Http404("This experiment has no such file yet.")
    if not path.is_file():
        raise Http404("This experiment's files are gone.")
    return FileResponse(
        path.open("rb"),
        as_attachment=not name.endswith(".html"),
        filename=f"{experiment.release.name}-experiment{experiment.pk}-{name}",
        content_type=EXPERIMENT_FILES[name],
    )


def _two(value: Any) -> str:
    return f"{value:.2f}" if _number(value) else "—"


def _interval(ci: Any) -> str:
    low, high = (ci or [None, None])[:2]
    if not (_number(low) or _number(high)):
        return "—"
    return f"[{_two(low)}, {_two(high)}]"


def _p_value(p: Any) -> str:
    if not _number(p):
        return "—"
    return "< 0.01" if p < 0.01 else f"{p:.2f}"


def _metric_keys(report: dict[str, Any]) -> list[str]:
    found = {key for arm in report.get("arms", {}).values() for key in arm.get("metrics", {})}
    return [key for key in METRICS if key in found] + sorted(found - set(METRICS))


def verdict(key: str, compared: dict[str, Any]) -> str | None:
    """ "better" or "worse" when the difference's 95% interval excludes 0 (on the side that is
    better for `key`); None within noise, or for a metric with no better side."""
    low, high = (compared.get("ci") or [None, None])[:2]
    if key in UNRANKED or not (_number(low) and _number(high)):
        return None
    if low > 0:
        up = True
    elif high < 0:
        up = False
    else:
        return None
    return "better" if up != (key in EXPERIMENT_LOWER_IS_BETTER) else "worse"


def result_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: each arm's value and 95% interval."""
    arms = report.get("arms", {})
    rows = []
    for key in _metric_keys(report):
        cells = [
            {
                "value": _two(found.get("metrics", {}).get(key)),
                "ci": _interval(found.get("ci", {}).get(key)),
            }
            for found in arms.values()
        ]
        rows.append(_metric_row(key) | {"cells": cells})
    return rows


def _metric_row(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "name": EXPERIMENT_METRICS.get(key, key),
        "lower_is_better": key in EXPERIMENT_LOWER_IS_BETTER,
    }


def comparison_tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For `sft` and for `base`: each other arm's paired difference with it, per metric."""
    arms = report.get("arms", {})
    tables = []
    for against in AGAINST:
        compared = [arm for arm, found in arms.items() if against in found.get("versus", {})]
        if not compared:
            continue
        rows = []
        for key in _metric_keys(report):
            cells = []
            for arm in compared:
                found = arms[arm]["versus"][against].get(key) or {}
                difference = found.get("difference")
                cells.append(
                    {
                        "difference": f"{difference:+.2f}" if _number(difference) else "—",
                        "ci": _interval(found.get("ci")),
                        "p": _p_value(found.get("p")),
                        "verdict": verdict(key, found),
                    }
                )
            rows.append(_metric_row(key) | {"cells": cells})
        tables.append({"against": against, "arms": compared, "rows": rows})
    return tables


def interval_chart(
    report: dict[str, Any], width: int = 460, row: int = 24, label: int = 70
) -> list[dict[str, Any]]:
    """What the SVG chart draws for each charted metric: a horizontal bar per arm from 0 to its
    value, and a whisker across its 95% interval, on a scale shared by the arms."""
    arms = report.get("arms", {})
    right = width - 56  # room for the value after the longest bar
    panels = []
    for key in CHARTED:
        values = {arm: found.get("metrics", {}).get(key) for arm, found in arms.items()}
        intervals = {
            arm: found.get("ci", {}).get(key) or [None, None] for arm, found in arms.items()
        }
        ends = [v for v in values.values() if _number(v)]
        ends += [x for ci in intervals.values() for x in ci[:2] if _number(x)]
        if not ends:
            continue
        top = max(max(ends), 1e-9)

        def x(value: float, top: float = top) -> float:
            return round(label + (right - label) * max(0.0, value) / top, 1)

        bars = []
        for index, arm in enumerate(arms):
            y = 20 + index * row
            value, (low, high) = values[arm], intervals[arm][:2]
            bar: dict[str, Any] = {"arm": arm, "y": y, "text_y": y + row // 2 + 4}
            bar |= {"value": None, "low": None, "high": None}
            if _number(value):
                bar |= {"value": _two(value), "width": round(x(value) - label, 1)}
                bar["value_x"] = x(max([value] + [v for v in (high,) if _number(v)])) + 4
            if _number(low) and _number(high):
                bar |= {"low": x(low), "high": x(high), "mid": y + row // 2 - 2}
            bars.append(bar)
        panels.append(
            {
                "key": key,
                "name": EXPERIMENT_METRICS.get(key, key),
                "width": width,
                "height": 24 + row * len(arms),
                "label": label,
                "axis_bottom": 20 + row * len(arms),
                "bar_height": row - 8,
                "top": _two(top),
                "right": right,
                "bars": bars,
            }
        )
    return panels


def budget_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per trained arm and seed: steps and tokens seen; untrained arms say so."""
    rows: list[dict[str, Any]] = []
    for arm, found in report.get("arms", {}).items():
        budget = found.get("budget")
        if not isinstance(budget, list):
            rows.append({"arm": arm, "trained": False})
            continue
        for entry in budget:
            rows.append(
                {
                    "arm": arm,
                    "trained": True,
                    "seed": entry.get("seed"),
                    "steps": entry.get("steps"),
                    "tokens_seen": entry.get("tokens_seen"),
                }
            )
    return rows


def sample_rows(samples: list[dict[str, Any]], arms: list[str]) -> list[dict[str, Any]]:
    """replies.jsonl lines as rows: the context's last messages, the written reply, each arm's."""
    return [
        {
            "context": sample.get("context") or [],
            "reference": sample.get("reference", ""),
            "replies": [sample.get(arm, "") for arm in arms],
        }
        for sample in samples
    ]
