"""What leads read on the dashboard and the agreement page, gathered from the database.

Every table is a list of plain dict rows with the same keys, so the page, its chart and its CSV
show the same numbers. Counting is done by the database (GROUP BY), never row by row in Python,
except where the agreement statistics need each label.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import pickle
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Count, Max, Q
from django.db.models.fields.json import KT
from django.db.models.functions import TruncHour
from django.utils import timezone

from curation.lead import agreement
from curation.models import (
    Adjudication,
    Assignment,
    Dialogue,
    Event,
    Ranking,
    Review,
    SafetyStatus,
    Turn,
    TurnLabel,
)
from curation.vocabulary import EXTES_STRATEGIES

logger = logging.getLogger(__name__)
Row = dict[str, Any]
STATUSES = [s.value for s in Dialogue.Status]


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[Row]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({c: _cell(row.get(c)) for c in self.columns})
        return out.getvalue()


def _cell(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _count_by(rows: Any, name: str, count: Any = None) -> dict[str, int]:
    """{value of `name`: count} of a queryset, counted by the database."""
    grouped = rows.order_by().values_list(name).annotate(n=count or Count("id"))
    return dict(grouped.values_list(name, "n"))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# ---- dashboard ---------------------------------------------------------------------------------


def scenario_progress() -> Table:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    for name, status, n in (
        Dialogue.objects.order_by().values_list("scenario__name", "status").annotate(n=Count("id"))
    ):
        counts[name][status] = n
    rows = []
    for name in sorted(counts):
        row: Row = {"scenario": name, **counts[name]}
        row["total"] = sum(counts[name].values())
        row["done_share"] = _rate(row["accepted"] + row["rejected"], row["total"])
        rows.append(row)
    return Table(
        "scenarios", "Progress per scenario", ["scenario", *STATUSES, "total", "done_share"], rows
    )


def annotator_progress(now: Any = None) -> Table:
    """Per annotator: reviews, decisions, skips (apart from rejections), flags, rankings, and
    throughput over the hours in which they submitted anything."""
    now = now or timezone.now()
    rows: dict[str, Row] = defaultdict(
        lambda: {
            "reviews": 0,
            "accepted": 0,
            "rejected": 0,
            "skipped": 0,
            "crisis_flags": 0,
            "rankings": 0,
            "active_hours": 0,
            "reviews_last_24h": 0,
        }
    )
    submitted = Review.objects.filter(submitted_at__isnull=False).order_by()
    day_ago = now - timedelta(hours=24)
    for name, reviews, accepted, rejected, recent in submitted.values_list(
        "annotator__username"
    ).annotate(
        n=Count("id"),
        accepts=Count("id", filter=Q(decision=Review.Decision.ACCEPT)),
        rejects=Count("id", filter=Q(decision=Review.Decision.REJECT)),
        recent=Count("id", filter=Q(submitted_at__gte=day_ago)),
    ):
        rows[name].update(
            reviews=reviews, accepted=accepted, rejected=rejected, reviews_last_24h=recent
        )
    per_annotator = {
        "crisis_flags": _count_by(
            Event.objects.filter(action=Event.Action.CRISIS_FLAGGED, actor__isnull=False),
            "actor__username",
        ),
        "active_hours": _count_by(
            submitted.annotate(hour=TruncHour("submitted_at")),
            "annotator__username",
            Count("hour", distinct=True),
        ),
        "skipped": _count_by(Assignment.objects.filter(skipped=True), "annotator__username"),
        "rankings": _count_by(Ranking.objects.filter(adjudicated=False), "annotator__username"),
    }
    for column, counts in per_annotator.items():
        for name, n in counts.items():
            rows[name][column] = n
    result = []
    for name in sorted(rows):
        row = {"annotator": name, **rows[name]}
        row["reviews_per_active_hour"] = _rate(row["reviews"], row["active_hours"])
        result.append(row)
    return Table(
        "annotators",
        "Progress per annotator",
        [
            "annotator",
            "reviews",
            "accepted",
            "rejected",
            "skipped",
            "crisis_flags",
            "rankings",
            "active_hours",
            "reviews_per_active_hour",
            "reviews_last_24h",
        ],
        result,
    )


def queue_state(now: Any = None) -> Table:
    now = now or timezone.now()
    by_status = dict(
        Dialogue.objects.order_by()
        .values_list("status")
        .annotate(Count("id"))
        .values_list("status", "id__count")
    )
    safety = _count_by(
        Dialogue.objects.filter(safety_status__in=[SafetyStatus.FLAGGED, SafetyStatus.CLEARED]),
        "safety_status",
    )
    rows: list[Row] = [
        {"what": f"dialogues {s.label.lower()}", "count": by_status.get(s.value, 0)}
        for s in Dialogue.Status
    ]
    rows += [
        {
            "what": "leases held now",
            "count": Assignment.objects.live(now).count(),
        },
        {
            "what": "open disagreements",
            "count": Adjudication.objects.filter(resolved_at__isnull=True).count(),
        },
        {"what": "waiting in the safety queue", "count": safety.get(SafetyStatus.FLAGGED, 0)},
        {"what": "crisis-flagged, cleared", "count": safety.get(SafetyStatus.CLEARED, 0)},
    ]
    return Table("queue", "The queue now", ["what", "count"], rows)


_ACCEPTANCE_PATHS = {
    "round": "provenance__round",
    "teacher": "provenance__teacher__model",
    "prompt_version": "provenance__prompt_version",
}
_ACCEPTANCE_TITLES = {
    "round": "generation round",
    "teacher": "teacher",
    "prompt_version": "prompt version",
}


def acceptance_tables() -> list[Table]:
    """Acceptance of generated dialogues per generation round, teacher and prompt version:
    accepted / (accepted + rejected), adjudicated ones included. One pass over the dialogues,
    grouped by all three (reading each one's provenance once), summed per key here."""
    grouped = (
        Dialogue.objects.filter(origin=Dialogue.Origin.GENERATED)
        .order_by()
        .annotate(**{f"g_{key}": KT(path) for key, path in _ACCEPTANCE_PATHS.items()})
        .values_list(*(f"g_{key}" for key in _ACCEPTANCE_PATHS))
        .annotate(
            n=Count("id"),
            accepts=Count("id", filter=Q(status=Dialogue.Status.ACCEPTED)),
            rejects=Count("id", filter=Q(status=Dialogue.Status.REJECTED)),
        )
    )
    sums: dict[str, dict[str, list[int]]] = {key: {} for key in _ACCEPTANCE_PATHS}
    for *groups, total, accepted, rejected in grouped:
        for key, group in zip(_ACCEPTANCE_PATHS, groups, strict=True):
            counts = sums[key].setdefault("" if group is None else str(group), [0, 0, 0])
            counts[0] += total
            counts[1] += accepted
            counts[2] += rejected
    tables = []
    for key, by_group in sums.items():
        rows = [
            {
                key: group,
                "generated": total,
                "accepted": accepted,
                "rejected": rejected,
                "acceptance_rate": _rate(accepted, accepted + rejected),
            }
            for group, (total, accepted, rejected) in by_group.items()
        ]
        rows.sort(key=lambda row: (len(str(row[key])), str(row[key])))  # rounds 2 before 10
        tables.append(
            Table(
                f"acceptance_by_{key}",
                f"Acceptance per {_ACCEPTANCE_TITLES[key]}",
                [key, "generated", "accepted", "rejected", "acceptance_rate"],
                rows,
            )
        )
    return tables


def acceptance_by(key: str) -> Table:
    """One of `acceptance_tables`: "round", "teacher" or "prompt_version"."""
    return next(t for t in acceptance_tables() if t.name == f"acceptance_by_{key}")


def strategy_distribution() -> Table:
    """Final strategies of the supporter turns of accepted dialogues (as they settled) against
    the ExTES shares (DOMAIN.md)."""
    counts: dict[str, int] = defaultdict(int)
    for name, n in (
        Turn.objects.filter(
            dialogue__status=Dialogue.Status.ACCEPTED,
            dialogue__settled_at__isnull=False,
            role=Turn.Role.SUPPORTER,
        )
        .order_by()
        .values_list("final_strategy__name")
        .annotate(Count("id"))
    ):
        counts[name or ""] += n
    total = sum(counts.values())
    rows = [
        {
            "strategy": spec.name,
            "labels": counts.get(spec.name, 0),
            "share": _rate(counts.get(spec.name, 0), total),
            "extes_share": spec.extes_share / 100,
        }
        for spec in EXTES_STRATEGIES
    ]
    others = {k: v for k, v in counts.items() if k not in {s.name for s in EXTES_STRATEGIES}}
    for name, n in sorted(others.items()):
        rows.append(
            {
                "strategy": name or "(no strategy)",
                "labels": n,
                "share": _rate(n, total),
                "extes_share": None,
            }
        )
    return Table(
        "strategies",
        "Strategies of accepted data against ExTES",
        ["strategy", "labels", "share", "extes_share"],
        rows,
    )


def dashboard_tables() -> dict[str, Table]:
    tables = [
        queue_state(),
        scenario_progress(),
        annotator_progress(),
        *acceptance_tables(),
        strategy_distribution(),
    ]
    return {t.name: t for t in tables}


# ---- agreement ---------------------------------------------------------------------------------


def label_items(include_teacher: bool = True) -> dict[Hashable, dict[str, str | None]]:
    """{turn id: {annotator: strategy}} from submitted reviews' explicit labels (the teacher's
    label too, as rater `agreement.TEACHER`). A label set to "no strategy" counts as "(none)"."""
    items: dict[Hashable, dict[str, str | None]] = defaultdict(dict)
    for turn_id, name, strategy in (
        TurnLabel.objects.filter(review__submitted_at__isnull=False)
        .order_by()
        .values_list("turn_id", "review__annotator__username", "strategy__name")
        .iterator(chunk_size=5000)
    ):
        items[turn_id][name] = strategy or "(none)"
    if include_teacher and items:
        for turn_id, strategy in (
            Turn.objects.filter(pk__in=list(items)).values_list("pk", "strategy__name").iterator()
        ):
            items[turn_id][agreement.TEACHER] = strategy or "(none)"
    return dict(items)


def decision_items() -> dict[Hashable, dict[str, str]]:
    items: dict[Hashable, dict[str, str]] = defaultdict(dict)
    for dialogue_id, name, decision in (
        Review.objects.filter(submitted_at__isnull=False)
        .order_by()
        .values_list("dialogue_id", "annotator__username", "decision")
        .iterator(chunk_size=5000)
    ):
        items[dialogue_id][name] = decision
    return dict(items)


def ranking_groups() -> list[list[dict[str, float]]]:
    """Per turn and round, each annotator's ranks (1 = best, tied items share a rank); leads' settling
    rankings are not annotators' opinions and are left out."""
    by_turn: dict[tuple[int, int], list[dict[str, float]]] = defaultdict(list)
    for turn_id, number, order in (
        Ranking.objects.filter(adjudicated=False)
        .order_by("turn_id", "round", "id")
        .values_list("turn_id", "round", "order")
    ):
        by_turn[turn_id, number].append(
            {key: float(place) for place, group in enumerate(order, start=1) for key in group}
        )
    return [group for group in by_turn.values() if len(group) >= 2]


@dataclass(frozen=True)
class AgreementReport:
    fleiss: agreement.Kappa
    mean_cohen: float | None
    pairs: list[agreement.PairKappa]
    teacher: agreement.TeacherKappa
    categories: dict[str, agreement.CategoryAgreement]
    decisions: agreement.Agreement
    rankings: agreement.RankingAgreement
    humans: agreement.Confusion
    teacher_vs_humans: agreement.Confusion
    labelled_turns: int
    # The teacher's label against the stored final label (curation.settlement) of the turns
    # people labelled, in dialogues that settled.
    teacher_final: agreement.Kappa

    def category_table(self) -> Table:
        rows = [
            {
                "strategy": label,
                "kappa": c.kappa,
                "specific_agreement": c.specific,
                "labels": c.support,
                "reading": agreement.describe_kappa(c.kappa),
            }
            for label, c in self.categories.items()
        ]
        return Table(
            "per_strategy",
            "Agreement per strategy",
            ["strategy", "kappa", "specific_agreement", "labels", "reading"],
            rows,
        )

    def humans_count(self) -> int:
        """Annotators who share a labelled turn with another one: those behind the label figures."""
        return len({name for pair in self.pairs for name in (pair.a, pair.b)})

    def summary_table(self) -> Table:
        """Every figure of the page with the sample it rests on (items, raters), its reading on the
        one kappa scale (kappas only) and a note when it rests on too few items."""
        humans = str(self.humans_count())
        teacher = f"teacher + {len(self.teacher.per_human)}"
        fewest, most = self.rankings.raters
        rankers = f"{fewest}" if fewest == most else f"{fewest} to {most}"
        decisions = self.decisions
        rows = [
            _figure("Fleiss' kappa, strategy labels (all annotators)", self.fleiss.value, True, self.fleiss.n, "turns", humans),
            _figure("Mean pairwise Cohen's kappa, strategy labels", self.mean_cohen, True, self.fleiss.n, "turns", humans),
            _figure("Teacher vs human majority, Cohen's kappa", self.teacher.value, True, self.teacher.n, "turns", teacher),
            _figure("Teacher vs each human, mean Cohen's kappa", self.teacher.mean_per_human, True, self.labelled_turns, "turns", teacher),
            _figure("Teacher vs final label, Cohen's kappa", self.teacher_final.value, True, self.teacher_final.n, "turns", "teacher + final label"),
            _figure("Accept/reject: all reviewers agree", decisions.all_agree, False, decisions.n, "dialogues", str(decisions.raters)),
            _figure("Accept/reject: pairwise agreement", decisions.pairwise, False, decisions.n, "dialogues", str(decisions.raters)),
            _figure("Rankings: mean Kendall's tau-b", self.rankings.mean_tau, False, self.rankings.groups, "ranked turns", f"{rankers} per turn"),
            _figure("Rankings: mean Kendall's W (3+ rankers)", self.rankings.mean_w, False, self.rankings.w_groups, "ranked turns", "3+ per turn"),
        ]  # fmt: skip
        columns = ["figure", "value", "reading", "items", "unit", "raters", "note"]
        return Table("summary", "Agreement", columns, rows)

    def pair_table(self) -> Table:
        rows: list[Row] = [
            {
                "annotator_a": p.a,
                "annotator_b": p.b,
                "kappa": p.value,
                "reading": agreement.describe_kappa(p.value),
                "turns": p.n,
                "note": _reliability(p.value, p.n, "turns"),
            }
            for p in self.pairs
        ]
        columns = ["annotator_a", "annotator_b", "kappa", "reading", "turns", "note"]
        return Table("pairs", "Cohen's kappa per pair of annotators", columns, rows)


def _reliability(value: float | None, items: int, unit: str) -> str:
    """The note beside a figure: why it is blank, or that it rests on too few items."""
    if items == 0:
        return f"No {unit} to compute it on yet."
    if agreement.few_items(items):
        return f"Not reliable: only {items} {unit} (fewer than {agreement.MIN_ITEMS})."
    if value is None:
        return "Undefined: every label fell in one category."
    return ""


def _figure(name: str, value: float | None, kappa: bool, items: int, unit: str, raters: str) -> Row:
    return {
        "figure": name,
        "value": value,
        "reading": agreement.describe_kappa(value) if kappa else "",
        "items": items,
        "unit": unit,
        "raters": raters if items else "none",
        "note": _reliability(value, items, unit),
        "reliable": not agreement.few_items(items),
    }


def data_version() -> str:
    """Changes whenever a review, a label or a ranking does: a cache key for the figures."""
    parts = [
        Review.objects.filter(submitted_at__isnull=False).aggregate(
            n=Count("id"), last=Max("submitted_at")
        ),
        TurnLabel.objects.aggregate(n=Count("id"), last=Max("updated_at")),
        Ranking.objects.aggregate(n=Count("id"), last=Max("id")),
        Turn.objects.aggregate(last=Max("id")),
        Dialogue.objects.aggregate(n=Count("settled_at"), last=Max("settled_at")),
    ]
    return ":".join(f"{p.get('n', '')}-{p['last']}" for p in parts)


@dataclass(frozen=True)
class Figures:
    """The agreement report a page shows, and how old it is.

    `report` is None only while the first figures of a large studio are computed. `stale`:
    the data has changed since `as_of` (the figures are the last ones, new ones are on their
    way unless `note` says why not). `note`: what the lead should know about them."""

    report: AgreementReport | None
    as_of: Any
    seconds: float | None
    stale: bool
    note: str = ""


AGREEMENT = "agreement"


def _version_key() -> str:
    return hashlib.sha256(data_version().encode()).hexdigest()


def agreement_figures(inline: bool | None = None) -> Figures:
    """The agreement report for the page: the stored one while it matches the data; else, on a
    small studio (settings.LEAD_FIGURES_INLINE_MAX submitted labels or fewer) or with ``inline``,
    computed here; else the last stored one, marked stale, while a worker computes new ones
    (`refresh_agreement`). When no worker can be asked (the broker is down), the figures are
    computed here after all, and the note says so."""
    from django.conf import settings

    from curation.models import FigureSnapshot

    version = _version_key()
    snapshot = FigureSnapshot.of(AGREEMENT)
    # None also when what is stored no longer loads (an earlier version of the report's classes).
    report = _report_of(snapshot)
    if report is not None and snapshot.version == version:
        return Figures(report, snapshot.computed_at, snapshot.seconds, stale=False)
    if inline is None:
        labels = TurnLabel.objects.filter(review__submitted_at__isnull=False).count()
        inline = labels <= settings.LEAD_FIGURES_INLINE_MAX
    if inline:
        return _figures(refresh_agreement(version, snapshot), stale=False)
    if snapshot.ask(version) and not _send_refresh():
        snapshot.requested_at = None
        snapshot.save(update_fields=["requested_at"])
        fresh = refresh_agreement(version, snapshot)
        return _figures(
            fresh,
            stale=False,
            note="No worker could be reached (the broker is down), so these figures were "
            f"computed while you waited ({fresh.seconds:.1f} s). Start a worker to have them "
            "kept up to date in the background.",
        )
    return Figures(report, snapshot.computed_at, snapshot.seconds, stale=True)


def _report_of(snapshot: Any) -> AgreementReport | None:
    """The stored report, or None when there is none or it no longer loads (figures stored by
    an earlier version of the report's classes): they are then computed again."""
    if snapshot.payload is None:
        return None
    try:
        report = pickle.loads(bytes(snapshot.payload))
    except Exception:  # any unpickling error: AttributeError, TypeError, UnpicklingError…
        logger.warning("stored agreement figures do not load: computed again", exc_info=True)
        return None
    return report if isinstance(report, AgreementReport) else None


def _figures(snapshot: Any, stale: bool, note: str = "") -> Figures:
    return Figures(_report_of(snapshot), snapshot.computed_at, snapshot.seconds, stale, note)


def _send_refresh() -> bool:
    """Ask a worker for new agreement figures; False when the broker cannot be reached."""
    from config.celery import BrokerUnreachable
    from curation.tasks import refresh_agreement_task

    try:
        refresh_agreement_task.delay()
    except BrokerUnreachable as exc:
        logger.warning("agreement figures not queued (%s): computed on the request", exc)
        return False
    return True


def refresh_agreement(version: str | None = None, snapshot: Any = None) -> Any:
    """Compute the agreement report and store it (unless figures computed from a later start
    are there already); the snapshot row. What the worker's task runs."""
    from curation.models import FigureSnapshot

    snapshot = snapshot or FigureSnapshot.of(AGREEMENT)
    started = timezone.now()
    clock = time.perf_counter()
    version = version or _version_key()  # read before computing: changes meanwhile stay news
    report = agreement_report()
    snapshot.store(version, pickle.dumps(report), started, time.perf_counter() - clock)
    return snapshot


def agreement_up_to_date() -> bool:
    """Whether the stored figures match the data (the page's poll asks this)."""
    from curation.models import FigureSnapshot

    snapshot = FigureSnapshot.objects.filter(name=AGREEMENT).first()
    return (
        snapshot is not None
        and snapshot.version == _version_key()
        and _report_of(snapshot) is not None
    )


def cached_agreement_report() -> AgreementReport:
    """The report for the data as it is now, computed here if the stored one does not match
    (the CSV downloads, which must be the current figures)."""
    figures = agreement_figures(inline=True)
    assert figures.report is not None
    return figures.report


def agreement_report() -> AgreementReport:
    items = label_items()
    humans_only = {
        k: {r: v for r, v in raters.items() if r != agreement.TEACHER}
        for k, raters in items.items()
    }
    labels = sorted({v for raters in items.values() for v in raters.values() if v is not None})
    pairs = agreement.pairwise_cohen(humans_only)
    return AgreementReport(
        fleiss=agreement.fleiss_kappa(humans_only),
        mean_cohen=agreement.mean_kappa(pairs),
        pairs=pairs,
        teacher=agreement.humans_vs_teacher(items),
        categories=agreement.per_category(humans_only),
        decisions=agreement.percent_agreement(decision_items()),
        rankings=agreement.ranking_agreement(ranking_groups()),
        humans=agreement.confusion(humans_only, labels=labels),
        teacher_vs_humans=agreement.confusion(items, a_raters=[agreement.TEACHER], labels=labels),
        labelled_turns=len(humans_only),
        teacher_final=teacher_vs_final(list(humans_only)),
    )


def teacher_vs_final(turn_ids: list[Hashable]) -> agreement.Kappa:
    pairs: Counter[tuple[str, str]] = Counter()
    for teacher, final in (
        Turn.objects.filter(pk__in=turn_ids, dialogue__settled_at__isnull=False)
        .values_list("strategy__name", "final_strategy__name")
        .iterator(chunk_size=5000)
    ):
        pairs[(teacher or "(none)", final or "(none)")] += 1
    return agreement.cohen_from_pairs(pairs)


def tables_csv(tables: Sequence[Table]) -> str:
    return "\n".join(t.csv() for t in tables)
