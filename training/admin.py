"""Training in the admin: the Release admin gets "Train a student on this release", which leads to
a form (admin/training/trainingjob/new/); training jobs are listed with their progress and can be
cancelled or resumed. A job's live page is training/jobs/<id>/ (training/views.py). Experiments
are listed read-only; they are started and watched at training/experiments/."""

from __future__ import annotations

import uuid
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation import admin as curation_admin
from curation.models import Release
from training import jobs
from training.forms import TrainForm, cannot_evaluate, cannot_train
from training.models import Experiment, ReplyPool, TrainingJob
from training.tasks import run_job


def can_train(request: HttpRequest) -> bool:
    return bool(request.user.is_staff and request.user.has_perm("training.add_trainingjob"))


class ReleaseAdmin(curation_admin.ReleaseAdmin):
    actions = ["train_student"]

    @admin.action(description="Train a student on this release", permissions=["train"])
    def train_student(
        self, request: HttpRequest, queryset: QuerySet[Release]
    ) -> HttpResponse | None:
        releases = list(queryset[:2])
        if len(releases) != 1:
            self.message_user(request, "Pick one release to train on.", messages.WARNING)
            return None
        release = releases[0]
        if release.status != Release.Status.READY:
            self.message_user(
                request,
                f"{release} is {release.get_status_display().lower()}: only a ready release "
                "can be trained on.",
                messages.ERROR,
            )
            return None
        return redirect(f"{reverse('admin:training_trainingjob_new')}?release={release.pk}")

    def has_train_permission(self, request: HttpRequest) -> bool:
        return can_train(request)


admin.site.unregister(Release)
admin.site.register(Release, ReleaseAdmin)


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "release",
        "variant",
        "status",
        "progress",
        "loss",
        "created_by",
        "created_at",
        "page",
    ]
    list_filter = ["status", "variant", "release"]
    search_fields = ["release__name", "base_model", "error"]
    list_select_related = ["release", "created_by"]
    actions = ["cancel_jobs", "resume_jobs"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # The worker writes these rows; the admin only reads them (and cancels or resumes).
        return [f.name for f in TrainingJob._meta.fields]

    @admin.display(description="progress")
    def progress(self, job: TrainingJob) -> str:
        if not job.total_steps:
            return job.phase or "-"
        return f"{job.progress_label} ({job.percent}%)"

    @admin.display(description="page")
    def page(self, job: TrainingJob) -> str:
        return format_html('<a href="{}">watch</a>', job.get_absolute_url())

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return redirect("admin:training_trainingjob_new")

    def get_urls(self) -> list[URLPattern]:
        new = path(
            "new/", self.admin_site.admin_view(self.new_job_view), name="training_trainingjob_new"
        )
        return [new, *super().get_urls()]

    def new_job_view(self, request: HttpRequest) -> HttpResponse:
        """The action's intermediate page: the run's settings, with defaults; creates one job
        per form (a double-clicked submit finds the job its token already made)."""
        if not can_train(request):
            raise PermissionDenied("Training a student needs the permission to add training jobs.")
        if request.method == "POST":
            form = TrainForm(request.POST)
            if form.is_valid():
                job = _create_job(request, form)
                if job is not None:
                    return redirect(job)
        else:
            release = request.GET.get("release")
            form = TrainForm(initial={"token": uuid.uuid4().hex, "release": release})
        release_obj = _release_of(form)
        suggestions = {}
        if release_obj is not None:
            suggestions = {
                variant: jobs.suggest_max_length(release_obj, variant, "")
                for variant, _ in TrainingJob.Variant.choices
            }
        problems = []
        if release_obj is not None and not form.is_bound:
            # Said before the form is sent; sent, the form refuses with the same words.
            problems = [p for p in (cannot_train(release_obj), cannot_evaluate(release_obj)) if p]
        context = {
            **self.admin_site.each_context(request),
            "title": "Train a student",
            "opts": self.model._meta,
            "form": form,
            "release": release_obj,
            "suggestions": suggestions,
            "suggestion_how": next(iter(suggestions.values())).how if suggestions else "",
            "release_problems": problems,
            "lora_fields": form.fields_of(TrainForm.LORA),
            "optimisation_fields": form.fields_of(TrainForm.OPTIMISATION),
            "dpo_fields": form.fields_of(TrainForm.DPO),
        }
        return TemplateResponse(request, "training/admin_new.html", context)

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        cancelled = sum(job.request_cancel() for job in queryset)
        self.message_user(request, f"Cancel asked of {cancelled} job(s).")

    @admin.action(
        description="Resume the selected jobs from their last checkpoint", permissions=["change"]
    )
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[TrainingJob]) -> None:
        resumed = []
        for job in queryset:
            before = TrainingJob.objects.get(pk=job.pk)
            if not job.requeue():
                continue
            try:
                run_job.delay_on_commit(job.pk)
            except BrokerUnreachable:
                job.unqueue(before)  # as it was: no worker would ever take it
                self.message_user(request, f"{QUEUE_UNREACHABLE} Resume once it is back.", "error")
                return
            resumed.append(job)
        skipped = queryset.count() - len(resumed)
        note = (
            f" ({skipped} not failed, cancelled or abandoned: left as they were)" if skipped else ""
        )
        self.message_user(request, f"Queued {len(resumed)} job(s) again{note}.")


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["id", "release", "arms", "seeds", "status", "progress", "created_at", "page"]
    list_filter = ["status", "release"]
    search_fields = ["release__name", "base_model", "error"]
    list_select_related = ["release", "created_by"]
    actions = ["cancel_experiments"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Experiment._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the studio's form starts them: training/experiments/new/

    @admin.display(description="progress")
    def progress(self, experiment: Experiment) -> str:
        return f"{experiment.progress_label} ({experiment.percent}%)"

    @admin.display(description="page")
    def page(self, experiment: Experiment) -> str:
        return format_html('<a href="{}">open</a>', experiment.get_absolute_url())

    @admin.action(description="Cancel the selected experiments", permissions=["change"])
    def cancel_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        cancelled = sum(experiment.request_cancel() for experiment in queryset)
        self.message_user(request, f"Cancel asked of {cancelled} experiment(s).")


def _release_of(form: TrainForm) -> Release | None:
    value = form.data.get("release") if form.is_bound else form.initial.get("release")
    if not value or not str(value).isdigit():
        return None
    return Release.objects.filter(pk=int(value), status=Release.Status.READY).first()


def _create_job(request: HttpRequest, form: TrainForm) -> TrainingJob | None:
    """The queued job; None when the queue cannot be reached (no job is left behind)."""
    token = form.cleaned_data["token"]
    existing = TrainingJob.objects.filter(request_key=token).first()
    if existing is not None:  # the same form sent twice (double click, retry)
        return existing
    data = form.cleaned_data
    try:
        with transaction.atomic():
            job = TrainingJob.objects.create(
                release=data["release"],
                base_model=data["base_model"],
                variant=data["variant"],
                hyperparameters=form.hyperparameters(),
                seed=data["seed"],
                evaluate=not data["skip_evaluation"],
                request_key=token,
                created_by=cast(User, request.user),
            )
            run_job.delay_on_commit(job.pk)
    except IntegrityError:  # the other submit won the race
        return get_object_or_404(TrainingJob, request_key=token)
    except BrokerUnreachable:
        job.delete()  # committed a moment ago, and no worker would ever start it
        messages.error(request, f"{QUEUE_UNREACHABLE} Try again once it is back.")
        return None
    messages.success(request, f"{job} queued: training on {job.release}.")
    return job


@admin.register(ReplyPool)
class ReplyPoolAdmin(curation_admin.ReadOnly, admin.ModelAdmin):
    """A student scored on accepted dialogues outside every release, its weakest replies sent to
    annotators: started from its training job's page, shown there with its progress."""

    list_display = ["id", "training_job", "rule", "count", "pool_size", "status", "replies_done"]
    list_filter = ["status", "rule"]
    raw_id_fields = ["training_job"]
    readonly_fields = ["outcome"]
