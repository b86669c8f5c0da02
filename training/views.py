"""Training job pages, for staff with the training permissions: list, live progress with the loss
curve and the log, the evaluation when done, downloads, cancel and resume."""

from __future__ import annotations

import copy
import math
import zipfile
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeGuard

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation.roles import HtmxHttpRequest
from training import noise
from training.card import METRIC_NAMES
from training.jobs import not_evaluated_reason, valid_loss_text
from training.models import TrainingJob
from training.tasks import run_job

LOWER_IS_BETTER = {"perplexity"}
SHOWN_METRICS = {**METRIC_NAMES, "reply_words": "Words per reply"}
SAMPLES_SHOWN = 20


def may_view(user: Any) -> bool:
    return bool(user.is_staff and user.has_perm("training.view_trainingjob"))


def may_change(user: Any) -> bool:
    return bool(user.is_staff and user.has_perm("training.change_trainingjob"))


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
    can_train = request.user.has_perm("training.add_trainingjob")
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
        compared = key not in ("samples", "reply_words")
        base, student = columns[0].get(key), columns[1].get(key)
        row = {
            "name": SHOWN_METRICS.get(key, key),
            "lower_is_better": key in LOWER_IS_BETTER,
            "cells": [_cell(c.get(key)) for c in columns],
            "better": None,
        }
        if compared and _number(base) and _number(student):
            row["better"] = _better(key, versus_base)
        if versus_twin is not None:
            without = columns[2].get(key)
            row |= {"dri": "-", "dri_better": None}
            if compared and _number(without) and _number(student):
                row |= {"dri": f"{student - without:+.4f}", "dri_better": _better(key, versus_twin)}
        rows.append(row)
    return rows, _notes(versus_base, versus_twin)


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "-"
    return str(value)
