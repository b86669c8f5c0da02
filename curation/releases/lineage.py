"""Where a release sits in the loop: the generation rounds and files its dialogues came from,
the releases before and after it, the students trained on it and the experiments run on it,
the ranking rounds sent back from those students and the releases that took their rankings.

Read from the release's frozen snapshots (what it holds, whatever happened to the dialogues
since) and from the rows that point at it; curation does not import training or generation,
their rows are reached through their foreign keys' related names.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Q
from django.db.models.fields.json import KT

from curation.models import Ranking, RankRound, Release, ReleaseDialogue


@dataclass(frozen=True)
class Lineage:
    rounds: list[dict[str, Any]]  # generation job, round: dialogues of this release
    sources: list[dict[str, Any]]  # origin (seed, imported, …): dialogues
    previous: Release | None
    next: list[Release]
    students: list[Any]  # training jobs on it, newest first
    experiments: list[Any]
    # Per training job or experiment that sent replies back: {"kind" ("job", "experiment"),
    # "id", "rounds", "ranked", "rankings"}.
    sent_back: list[dict[str, Any]]
    # Releases holding rankings of those rounds: {"release", "rankings"}.
    took: list[dict[str, Any]]
    # Generation jobs planned from its students' evaluations (a targeted round).
    targeted: list[Any]

    @property
    def empty(self) -> bool:
        return not (self.rounds or self.sources or self.students or self.experiments)


def lineage(release: Release) -> Lineage:
    items = release.items.order_by()
    rounds = [
        {"job": int(job), "round": None if r is None else int(r), "dialogues": n}
        for job, r, n in items.filter(snapshot__origin="generated")
        .annotate(job=KT("snapshot__provenance__job"), rnd=KT("snapshot__provenance__round"))
        .values_list("job", "rnd")
        .annotate(n=Count("id"))
        .order_by("job", "rnd")
        if job is not None
    ]
    sources = [
        {"origin": origin or "unknown", "dialogues": n}
        for origin, n in items.annotate(origin=KT("snapshot__origin"))
        .values_list("origin")
        .annotate(n=Count("id"))
        .order_by("origin")
    ]
    students = list(release.training_jobs.order_by("-id")[:50])
    experiments = list(release.experiments.order_by("-id")[:50])
    sent_back, took = _sent_back([job.pk for job in students], [e.pk for e in experiments], release)
    return Lineage(
        rounds=rounds,
        sources=sources,
        previous=release.previous,
        next=list(Release.objects.filter(previous=release).order_by("id")),
        students=students,
        experiments=experiments,
        sent_back=sent_back,
        took=took,
        targeted=_targeted([job.pk for job in students]),
    )


def _targeted(job_ids: list[int]) -> list[Any]:
    if not job_ids:
        return []
    jobs = apps.get_model("generation", "GenerationJob")._default_manager
    return list(jobs.filter(plan__training_job__in=job_ids).order_by("-id")[:20])


def _sent_back(
    job_ids: list[int], experiment_ids: list[int], release: Release
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rounds sent back from these training jobs and experiments with their rankings so
    far, and the later releases whose frozen snapshots hold rankings of those rounds."""
    sent = list(
        RankRound.objects.filter(
            Q(training_job_id__in=job_ids) | Q(source__experiment__in=experiment_ids)
        ).values_list(
            "training_job_id", "source", "turn_id", "turn__index", "turn__dialogue_id", "number"
        )
    )
    if not sent:
        return [], []
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for turn_id, number in Ranking.objects.filter(
        turn_id__in={row[2] for row in sent}, round__gte=2
    ).values_list("turn_id", "round"):
        counts[turn_id, number] += 1
    per_origin: dict[tuple[str, int], dict[str, Any]] = {}
    for job_id, source, turn_id, _, _, number in sent:
        kind, pk = ("job", job_id) if job_id is not None else ("experiment", source["experiment"])
        row = per_origin.setdefault(
            (kind, pk), {"kind": kind, "id": pk, "rounds": 0, "ranked": 0, "rankings": 0}
        )
        row["rounds"] += 1
        row["rankings"] += counts[turn_id, number]
        row["ranked"] += counts[turn_id, number] >= settings.REVIEWS_PER_DIALOGUE
    wanted = {(dialogue, index, number) for _, _, _, index, dialogue, number in sent}
    held: dict[int, int] = defaultdict(int)
    for release_id, snapshot in ReleaseDialogue.objects.filter(
        release_id__gt=release.pk, dialogue_id__in={d for d, _, _ in wanted}
    ).values_list("release_id", "snapshot"):
        snap = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
        held[release_id] += sum(
            (snap["id"], r["turn_index"], r.get("round", 1)) in wanted
            for r in snap.get("rankings", [])
        )
    names = dict(Release.objects.filter(pk__in=held).values_list("pk", "name"))
    took = [{"release": names[pk], "rankings": n} for pk, n in sorted(held.items()) if n]
    return sorted(per_origin.values(), key=lambda row: (row["kind"], -row["id"])), took
