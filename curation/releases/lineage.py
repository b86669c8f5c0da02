"""Where a release sits in the loop: the generation rounds and files its dialogues came from,
the releases before and after it, the students trained on it and the experiments run on it.

Read from the release's frozen snapshots (what it holds, whatever happened to the dialogues
since) and from the rows that point at it; curation does not import training or generation,
their rows are reached through their foreign keys' related names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count
from django.db.models.fields.json import KT

from curation.models import Release


@dataclass(frozen=True)
class Lineage:
    rounds: list[dict[str, Any]]  # generation job, round: dialogues of this release
    sources: list[dict[str, Any]]  # origin (seed, imported, …): dialogues
    previous: Release | None
    next: list[Release]
    students: list[Any]  # training jobs on it, newest first
    experiments: list[Any]

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
    return Lineage(
        rounds=rounds,
        sources=sources,
        previous=release.previous,
        next=list(Release.objects.filter(previous=release).order_by("id")),
        students=list(release.training_jobs.order_by("-id")[:50]),
        experiments=list(release.experiments.order_by("-id")[:50]),
    )
