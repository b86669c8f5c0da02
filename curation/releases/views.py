"""Release pages, for leads: list, new, progress and contents, retry, downloads."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.db import IntegrityError, transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
from curation.models import Dialogue, Release, Scenario
from curation.releases.build import (
    DEFAULT_SPLIT,
    SPLITS,
    FileOptions,
    Filters,
    new_release,
    split_counts,
    split_warnings,
)
from curation.releases.card import card_html
from curation.releases.lineage import lineage
from curation.roles import HtmxHttpRequest, lead_required
from curation.tasks import build_release


class SplitForm(forms.Form):
    """The fields that decide which dialogues a release holds and how they split; bound alone, it
    previews the split while the lead fills in the new-release form."""

    statuses = forms.MultipleChoiceField(
        choices=Dialogue.Status.choices,
        initial=Filters().statuses,
        widget=forms.CheckboxSelectMultiple,
    )
    scenarios = forms.ModelMultipleChoiceField(
        queryset=Scenario.objects.order_by("name"),
        required=False,
        help_text="None chosen: every scenario.",
    )
    min_agreeing_reviews = forms.IntegerField(min_value=0, initial=0)
    train = forms.IntegerField(min_value=0, max_value=100, initial=DEFAULT_SPLIT["train"])
    valid = forms.IntegerField(min_value=0, max_value=100, initial=DEFAULT_SPLIT["valid"])
    test = forms.IntegerField(min_value=0, max_value=100, initial=DEFAULT_SPLIT["test"])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if sum(data.get(s) or 0 for s in SPLITS) == 0:
            raise forms.ValidationError("The split needs a non-zero share.")
        return data

    def filters(self) -> Filters:
        data = self.cleaned_data
        return Filters(
            statuses=data["statuses"],
            scenarios=[s.name for s in data["scenarios"]],
            min_agreeing_reviews=data["min_agreeing_reviews"],
            dri=data.get("dri", True),
        )

    def shares(self) -> dict[str, int]:
        return {s: self.cleaned_data[s] for s in SPLITS}


class ReleaseForm(SplitForm):
    name = forms.RegexField(
        regex=r"^[a-z0-9][a-z0-9._-]*$",
        max_length=100,
        help_text="For example extes-curated-1.0.0: a-z, 0-9, '.', '-', '_'.",
    )
    licence = forms.CharField(max_length=200, initial="CC BY-NC 4.0")
    notes = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    dri = forms.BooleanField(required=False, initial=True, label="Include DRI candidates")
    # Not required: a form sent without it (an older page) cuts a release by today's rule.
    dri_policy = forms.TypedChoiceField(
        choices=Release.DriPolicy.choices,
        required=False,
        empty_value=Release.DriPolicy.ACCEPTABLE,
        initial=Release.DriPolicy.ACCEPTABLE,
        widget=forms.RadioSelect,
        label="DRI candidates that become examples",
        help_text="Unrejected is the paper's setting: the teacher's replies as they are, unless "
        "someone marked one unacceptable.",
    )
    strategy_tags = forms.BooleanField(
        required=False,
        label="Prefix assistant texts in the SFT files with their strategy, e.g. [Affirmation]",
        help_text="For a student that learns to name its strategy (scored as strategy accuracy).",
    )
    dpo_pairs = forms.ChoiceField(
        choices=[
            ("best_vs_rest", "the best reply against each other one"),
            ("all_pairs", "every pair with a minimum rank margin"),
        ],
        initial="best_vs_rest",
        label="DPO pairs from rankings",
    )
    dpo_min_margin = forms.FloatField(
        min_value=0, initial=1.0, label="Minimum rank margin (every-pair rule)"
    )


@require_GET
@lead_required
def release_list(request: HttpRequest) -> HttpResponse:
    releases = Release.objects.select_related("created_by")[:100]
    return render(request, "curation/release_list.html", {"releases": releases})


def _preview(form: SplitForm) -> dict[str, Any] | None:
    """Dialogues per split if the release were frozen now, and a warning for each split left
    empty; None while the selection or the shares are not valid."""
    if not form.is_valid():
        return None
    counts = split_counts(form.filters(), form.shares())
    return {"counts": counts, "warnings": split_warnings(counts)}


@require_http_methods(["GET", "POST"])
@lead_required
def release_new(request: HtmxHttpRequest) -> HttpResponse:
    if request.method == "GET" and request.htmx and request.htmx.target == "split-preview":
        # The selection and shares as they are in the form now, sent on each change.
        preview = _preview(SplitForm(request.GET))
        return render(request, "curation/release_new.html#split-preview", {"preview": preview})
    form = ReleaseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        existing = Release.objects.filter(name=data["name"]).first()
        if (
            existing is not None
            and existing.created_by == request.user
            and existing.notes == data["notes"]
        ):
            return redirect("curation-release", existing.name)  # the same form sent twice
        try:
            with transaction.atomic():
                release = new_release(
                    data["name"],
                    form.filters(),
                    form.shares(),
                    licence=data["licence"],
                    notes=data["notes"],
                    user=request.user,
                    file_options=FileOptions(
                        data["strategy_tags"], data["dpo_pairs"], data["dpo_min_margin"]
                    ),
                    dri_policy=data["dri_policy"],
                )
                build_release.delay_on_commit(release.pk)
        except IntegrityError:
            form.add_error(
                "name", "A release with this name exists already; releases never change."
            )
        except BrokerUnreachable:
            release.delete()  # committed a moment ago, and no worker would ever build it
            messages.error(request, f"{QUEUE_UNREACHABLE} Try again once it is back.")
        else:
            messages.success(request, f"Release {release.name} is being built.")
            for warning in split_warnings(split_counts(form.filters(), form.shares())):
                messages.warning(request, f"Release {release.name}: {warning}")
            return redirect("curation-release", release.name)
    # A first visit previews the initial values; a refused form, what was sent.
    preview = _preview(SplitForm(request.POST if request.method == "POST" else _initial(form)))
    return render(request, "curation/release_new.html", {"form": form, "preview": preview})


def _initial(form: forms.Form) -> dict[str, Any]:
    """The initial values of `form`'s fields, as data to bind a form to."""
    return {name: form.get_initial_for_field(field, name) for name, field in form.fields.items()}


@require_GET
@lead_required
def release_detail(request: HtmxHttpRequest, name: str) -> HttpResponse:
    release = get_object_or_404(Release, name=name)
    folder = release.folder
    manifest = card = None
    warnings: list[str] = []
    if release.status == Release.Status.READY:
        warnings = split_warnings(release.counts)
        if (folder / "manifest.json").exists():
            manifest = json.loads((folder / "manifest.json").read_text())
            if (folder / "README.md").exists():
                files = {
                    f["path"]: reverse("curation-release-download", args=[release.name, f["path"]])
                    for f in manifest["files"]
                }
                card = card_html((folder / "README.md").read_text(encoding="utf-8"), files)
    context = {"release": release, "manifest": manifest, "card": card, "warnings": warnings}
    if release.status == Release.Status.READY:
        context["lineage"] = lineage(release)
    if request.htmx and request.htmx.target == "release-progress":
        return render(request, "curation/release_detail.html#progress", context)
    return render(request, "curation/release_detail.html", context)


@require_POST
@lead_required
def release_retry(request: HttpRequest, name: str) -> HttpResponse:
    release = get_object_or_404(Release, name=name)
    error = release.error
    if not release.retry():
        messages.info(request, f"Release {release.name} has not failed: nothing to retry.")
        return redirect("curation-release", release.name)
    try:
        build_release.delay_on_commit(release.pk)
    except BrokerUnreachable:
        release.fail(error)  # as it was: no worker would ever build it
        messages.error(request, f"{QUEUE_UNREACHABLE} Retry once it is back.")
    else:
        messages.success(request, f"Release {release.name} is being built again.")
    return redirect("curation-release", release.name)


@require_GET
@lead_required
def release_download(request: HttpRequest, name: str, path: str) -> FileResponse:
    release = get_object_or_404(Release, name=name, status=Release.Status.READY)
    folder = release.folder
    listed = {"manifest.json"}
    if (folder / "manifest.json").exists():
        listed |= {f["path"] for f in json.loads((folder / "manifest.json").read_text())["files"]}
    if path not in listed:  # only the release's own files, never a path of the caller's choosing
        raise Http404("No such file in this release.")
    return FileResponse(
        (folder / path).open("rb"),
        as_attachment=not path.endswith(".png"),
        filename=path.replace("/", "_"),
    )
