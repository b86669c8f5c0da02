from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.db.models.fields.json import KT
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation.models import Scenario
from curation.roles import HtmxHttpRequest, int_or_none, is_lead, lead_required
from generation import quality
from generation.forms import JobForm
from generation.models import FAILURE_CLASSES, GenerationJob, new_job
from generation.tasks import start_job


@require_GET
@lead_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = list(GenerationJob.objects.select_related("created_by")[:100])
    rows = [(job, job.progress()) for job in jobs]
    return render(
        request, "generation/job_list.html", {"rows": rows, "can_start": is_lead(request.user)}
    )


@require_http_methods(["GET", "POST"])
@lead_required
def job_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = JobForm(request.POST)
        if "preview" in request.POST:  # "Show the plan": the weights, no job
            form.is_valid()
            return render(request, "generation/job_new.html", {"form": form})
        if form.is_valid():
            token = form.cleaned_data["token"]
            existing = GenerationJob.objects.filter(request_token=token).first()
            if existing:  # the same form sent twice (double click, retry)
                return redirect("generation-job-detail", existing.pk)
            try:
                with transaction.atomic():
                    job = new_job(
                        form.cleaned_data["kind"],
                        teacher=form.teacher_config(),
                        sampling=form.sampling(),
                        scenarios=list(form.cleaned_data["scenarios"]),
                        created_by=request.user,
                        **form.job_options(),
                    )
                    start_job.delay_on_commit(job.pk)
            except IntegrityError:
                job = get_object_or_404(GenerationJob, request_token=token)
            except BrokerUnreachable:
                job.delete()  # committed a moment ago, and no worker would ever start it
                messages.error(request, f"{QUEUE_UNREACHABLE} Try again once it is back.")
                return render(request, "generation/job_new.html", {"form": form})
            messages.success(request, f"{job} queued.")
            return redirect("generation-job-detail", job.pk)
    else:
        kind = request.GET.get("kind", GenerationJob.Kind.SELFCHAT)
        initial: dict[str, Any] = {"kind": kind, "token": uuid.uuid4().hex}
        target = int_or_none(request.GET.get("from_job"))
        if target is not None:
            initial |= _targeted_initial(target)
        form = JobForm(initial=initial)
        if "target_job" in initial:  # the weights are shown at once
            bound = JobForm(_as_post(form, initial))
            bound.is_valid()
            form.plan = bound.plan
    return render(request, "generation/job_new.html", {"form": form})


def _targeted_initial(job_id: int) -> dict[str, Any]:
    """The new-job form planned from a training job's evaluation: self-chat, every official
    scenario its scored replies came from."""
    from generation.forms import evaluated_jobs

    job = evaluated_jobs().filter(pk=job_id).first()
    if job is None:
        return {}
    scenes = set(
        job.release.items.filter(
            dialogue_id__in=[int(s["id"]) for s in job.samples if str(s.get("id", "")).isdigit()]
        )
        .annotate(scene=KT("snapshot__scene"))
        .values_list("scene", flat=True)
    )
    scenarios = list(Scenario.objects.filter(is_official=True, name__in=scenes).order_by("name"))
    return {"kind": GenerationJob.Kind.SELFCHAT, "target_job": job.pk, "scenarios": scenarios}


def _as_post(form: JobForm, initial: dict[str, Any]) -> QueryDict:
    """The form's initial values as a submitted form would send them (to show the plan)."""
    data = QueryDict(mutable=True)
    for name, field in form.fields.items():
        value = initial.get(name, field.initial)
        if value is None:
            continue
        if name == "scenarios":
            data.setlist(name, [str(s.pk) for s in value])
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = str(value)
    return data


LIVE_UNITS_SHOWN = 10


@require_GET
@lead_required
def job_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(GenerationJob.objects.select_related("created_by"), pk=pk)
    failure_class = request.GET.get("failure", "")
    failures = job.failures.select_related("unit__scenario")
    if failure_class in FAILURE_CLASSES:
        failures = failures.filter(failure_class=failure_class)
    context = {
        "job": job,
        "progress": job.progress(),
        "rounds": job.rounds_summary() if job.kind == GenerationJob.Kind.SELFCHAT else [],
        "held": job.held_dialogues() if job.kind == GenerationJob.Kind.SELFCHAT else {},
        "failures": failures[:20],
        "failure_class": failure_class,
        "can_cancel": is_lead(request.user) and not job.is_finished,
        "scenario_names": list(job.scenarios.values_list("name", flat=True)),
        "quality_gates": quality.shown(job.quality_gates),
        "live_units": list(job.live_units()[:LIVE_UNITS_SHOWN]),
        "unit_errors": job.units.filter(status="failed")
        .exclude(error="")
        .values("error")
        .annotate(n=Count("id"))
        .order_by("-n")[:5],
        "recent": job.units.filter(status="done")
        .select_related("dialogue")
        .order_by("-finished_at")[:10],
    }
    if request.htmx and request.htmx.target == "progress":
        return render(request, "generation/job_detail.html#progress", context)
    return render(request, "generation/job_detail.html", context)


@require_POST
@lead_required
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(GenerationJob, pk=pk)
    if job.request_cancel():
        messages.success(request, f"{job} cancelled. What it made so far is kept.")
    else:
        messages.info(request, f"{job} had already ended ({job.get_status_display().lower()}).")
    return redirect("generation-job-detail", job.pk)
