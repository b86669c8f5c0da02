from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import connections, models, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from curation.vocabulary import normalize


class Taxonomy(models.TextChoices):
    EXTES = "extes", "ExTES"
    ESCONV = "esconv", "ESConv"


class Scenario(models.Model):
    name = models.CharField(max_length=200, unique=True)
    # normalize(name): what every lookup matches on, so case and spacing never matter.
    key = models.CharField(max_length=200, unique=True, editable=False)
    aliases = models.JSONField(default=list, blank=True)
    # False for scenes found in imported data that match none of the 36: kept, and flagged for a lead.
    is_official = models.BooleanField(default=True)
    extes_count = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.key = normalize(self.name)
        super().save(*args, **kwargs)

    @classmethod
    def by_key(cls) -> dict[str, Scenario]:
        """Every scenario under the matching key of its name and of each alias."""
        found: dict[str, Scenario] = {}
        for scenario in cls.objects.all():
            for alias in (scenario.name, *scenario.aliases):
                found.setdefault(normalize(alias), scenario)
        return found


class Strategy(models.Model):
    name = models.CharField(max_length=100)
    key = models.CharField(max_length=100, editable=False)
    taxonomy = models.CharField(max_length=10, choices=Taxonomy.choices)
    definition = models.TextField()
    aliases = models.JSONField(default=list, blank=True)
    # ExTES strategies point at the ESConv strategy they map to (DOMAIN.md's published mapping).
    esconv_equivalent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="extes_strategies",
        limit_choices_to={"taxonomy": Taxonomy.ESCONV},
    )
    extes_share = models.FloatField(default=0.0, help_text="Share of labelled ExTES turns, percent")

    class Meta:
        ordering = ["taxonomy", "name"]
        verbose_name_plural = "strategies"
        constraints = [
            models.UniqueConstraint(fields=["taxonomy", "name"], name="strategy_unique_name"),
            models.UniqueConstraint(fields=["taxonomy", "key"], name="strategy_unique_key"),
        ]

    def __str__(self) -> str:
        return self.name if self.taxonomy == Taxonomy.EXTES else f"{self.name} (ESConv)"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.key = normalize(self.name)
        super().save(*args, **kwargs)


class DialogueQuerySet(models.QuerySet["Dialogue"]):
    def unflagged(self) -> DialogueQuerySet:
        """Not waiting in (or excluded by) the leads' safety queue: what annotators and releases
        may see."""
        return self.exclude(safety_status__in=SAFETY_HELD)

    def in_review(self) -> DialogueQuerySet:
        """Still open to annotators' reviews: nothing about it has settled."""
        return self.filter(status__in=Dialogue.OPEN)

    def settled(self) -> DialogueQuerySet:
        return self.filter(settled_at__isnull=False)

    def releasable(self) -> DialogueQuerySet:
        """Accepted and not held back for safety: what releases and later rounds use by
        default (an accepted dialogue has its final state stored, curation.settlement)."""
        return self.filter(status=Dialogue.Status.ACCEPTED).unflagged()

    def reference_for_scenarios(self) -> DialogueQuerySet:
        """What a scenario is, to the off-scenario gate: its seeds and its accepted dialogues
        (rejected seeds and those held for safety left out)."""
        return (
            self.filter(Q(origin=Dialogue.Origin.SEED) | Q(status=Dialogue.Status.ACCEPTED))
            .exclude(status=Dialogue.Status.REJECTED)
            .unflagged()
        )

    def reviewable_by(self, user: Any, now: Any = None) -> DialogueQuerySet:
        """Dialogues this annotator may claim: in review, not held for safety (crisis-flagged
        ones only once a lead cleared them, and no more than the daily cap), not reviewed or
        skipped by them, and with room left among submitted reviews and others' live holds.

        Correlated subqueries rather than a GROUP BY: walking the status index in id order, the
        database stops at the first rows that qualify, however many dialogues there are.
        """
        now = now or timezone.now()
        live_others = (
            Assignment.objects.live(now)
            .filter(dialogue=OuterRef("pk"))
            .exclude(annotator=user)
            .order_by()
            .values("dialogue")
            .annotate(n=Count("id"))
            .values("n")
        )
        # Annotators' wellbeing matters more than throughput.
        safe = Q(safety_status=SafetyStatus.NONE)
        if Assignment.objects.crisis_given_today(user, now) < settings.CRISIS_DAILY_CAP:
            safe |= Q(safety_status=SafetyStatus.CLEARED)
        return (
            self.in_review()
            .filter(safe, reviews_done__lt=settings.REVIEWS_PER_DIALOGUE)
            .exclude(
                Exists(
                    Review.objects.filter(
                        dialogue=OuterRef("pk"), annotator=user, submitted_at__isnull=False
                    )
                )
            )
            .exclude(
                Exists(
                    Assignment.objects.filter(dialogue=OuterRef("pk"), annotator=user, skipped=True)
                )
            )
            .annotate(live_leases=Coalesce(Subquery(live_others), 0))
            .filter(live_leases__lt=settings.REVIEWS_PER_DIALOGUE - F("reviews_done"))
            .order_by("id")
        )

    def search(self, text: str) -> DialogueQuerySet:
        """Dialogues whose description and turns (as written or as settled) hold every word of
        `text`, the last one as a prefix: "lost my jo" finds "... lost my job". The index is
        made by migration 0011; text without a letter or digit ("???") falls back to a
        substring scan, as does an engine without an index."""
        text = text.strip()
        if not text:
            return self
        words = _SEARCH_WORD.findall(text.lower())
        vendor = connections[self.db].vendor
        if words and vendor == "sqlite":
            match = " ".join(f'"{word}"' for word in words) + "*"
            if _sqlite_many_match(self.db, match):
                # Reading every matching row by id then costs more than walking the small
                # indexes of all rows (status, scenario) and checking each id against the
                # matches; "id + 0" is what keeps SQLite from the lookups by id.
                return self.alias(search_id=F("id") + 0).filter(
                    search_id__in=_sqlite_search(match, words)
                )
            return self.filter(pk__in=_sqlite_search(match, words))
        if words and vendor == "postgresql":
            query = " & ".join(f"'{word}'" for word in words) + ":*"
            return self.filter(pk__in=RawSQL(_POSTGRES_SEARCH, [query]))
        in_turns = Turn.objects.filter(text__icontains=text).values("dialogue_id")
        return self.filter(Q(description__icontains=text) | Q(pk__in=in_turns))


# What both indexes take as a word: a run of letters and digits. Only such runs reach the index's
# query language, each quoted, so its syntax (quotes, *, -, AND, OR, NEAR, brackets) cannot
# appear in a query.
_SEARCH_WORD = re.compile(r"[^\W_]+")

_POSTGRES_SEARCH = (
    "SELECT dialogue_id FROM curation_dialogue_search WHERE document @@ to_tsquery('simple', %s)"
)


# "Many" matches: more than one dialogue in ten (ids stand in for the table's size).
_SQLITE_MANY = (
    "WITH n AS (SELECT coalesce(max(id), 0) / %s AS share FROM curation_dialogue) "
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM curation_dialogue_search "
    "WHERE curation_dialogue_search MATCH %s LIMIT (SELECT share + 1 FROM n))) "
    "> (SELECT share FROM n)"
)
_SQLITE_MANY_SHARE = 10


def _sqlite_many_match(db: str, match: str) -> bool:
    """Whether `match` finds many dialogues: counts no further than it needs to know."""
    with connections[db].cursor() as cursor:
        cursor.execute(_SQLITE_MANY, [_SQLITE_MANY_SHARE, match])
        return bool(cursor.fetchone()[0])


def _sqlite_search(match: str, words: list[str]) -> RawSQL:
    """The indexed documents that match, and the pending ones (the dialogue changed last, not yet
    indexed: see migration 0011) matched here with GLOB on word boundaries."""
    patterns = [f"*[^a-z0-9]{word}[^a-z0-9]*" for word in words[:-1]]
    patterns.append(f"*[^a-z0-9]{words[-1]}*")
    pending = " AND ".join(["document GLOB %s"] * len(patterns))
    sql = (
        "SELECT rowid FROM curation_dialogue_search WHERE curation_dialogue_search MATCH %s "
        "UNION ALL SELECT dialogue_id FROM (SELECT dialogue_id, "
        "' ' || lower(p.description || char(10) || coalesce((SELECT group_concat(t.text || "
        "CASE WHEN t.final_text IS NOT NULL AND t.final_text != t.text "
        "THEN char(10) || t.final_text ELSE '' END, char(10)) FROM curation_turn t "
        "WHERE t.dialogue_id = p.dialogue_id), '')) || ' ' AS document "
        f"FROM curation_dialogue_search_pending p) WHERE {pending}"
    )
    return RawSQL(sql, [match, *patterns])


class SafetyStatus(models.TextChoices):
    NONE = "none", "Not flagged"
    SCREENING = "screening", "Waiting for the safety screen"
    FLAGGED = "flagged", "Flagged: waiting for a lead"
    CLEARED = "cleared", "Cleared by a lead"
    EXCLUDED = "excluded", "Excluded by a lead"


# Safety statuses that keep a dialogue away from annotators and releases.
SAFETY_HELD = [SafetyStatus.FLAGGED, SafetyStatus.EXCLUDED, SafetyStatus.SCREENING]
# Where a lead holds it: a gate's new flag changes nothing there.
LEAD_HELD = [SafetyStatus.FLAGGED, SafetyStatus.EXCLUDED]


class Dialogue(models.Model):
    class Origin(models.TextChoices):
        SEED = "seed", "Seed"
        IMPORTED = "imported", "Imported"
        GENERATED = "generated", "Generated"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        IN_REVIEW = "in_review", "In review"
        NEEDS_ADJUDICATION = "needs_adjudication", "Needs adjudication"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"

    scenario = models.ForeignKey(Scenario, on_delete=models.PROTECT, related_name="dialogues")
    description = models.TextField(blank=True)
    origin = models.CharField(max_length=10, choices=Origin.choices)
    # Where it came from: the file and record number for imports and seeds (the generation job
    # arrives with the generation issue).
    source_file = models.CharField(max_length=500, blank=True)
    source_record = models.PositiveIntegerField(null=True, blank=True)
    source_format = models.CharField(max_length=20, blank=True)
    # sha256 of the normalised description and turns: importing the same dialogue twice adds nothing.
    content_hash = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    version = models.PositiveIntegerField(default=1)
    reviews_done = models.PositiveIntegerField(default=0)  # submitted reviews, kept with them
    # The record exactly as read, and what the importer repaired in it: nothing is lost.
    raw = models.JSONField()
    repairs = models.JSONField(default=list, blank=True)
    # For generated dialogues: job, round, unit, teacher, prompt version, sampling, attempts, usage.
    provenance = models.JSONField(default=dict, blank=True)
    # When its final state (status, and each turn's final text and strategy) was last written.
    settled_at = models.DateTimeField(null=True, blank=True)
    # Set by the generation gate (or later by annotators) when the seeker may be at risk. A flagged
    # dialogue waits in the leads' safety queue, out of reviews and releases, until a lead clears
    # it (with a note) or excludes it for good; "none" means it was never flagged.
    safety_notes = models.JSONField(default=dict, blank=True)
    safety_status = models.CharField(
        max_length=10, choices=SafetyStatus.choices, default=SafetyStatus.NONE
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DialogueQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "id"], name="dialogue_status_id"),
            models.Index(fields=["origin", "id"], name="dialogue_origin_id"),
            # The list filtered by origin counts its statuses from the index alone.
            models.Index(fields=["origin", "status"], name="dialogue_origin_status"),
            models.Index(fields=["scenario", "id"], name="dialogue_scenario_id"),
            # The leads' dashboard: progress per scenario and the safety counts, from the
            # index alone.
            models.Index(fields=["scenario", "status"], name="dialogue_scenario_status"),
            models.Index(fields=["safety_status"], name="dialogue_safety_status"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(version__gte=1), name="dialogue_version_positive"),
            models.CheckConstraint(
                condition=Q(origin__in=["seed", "imported", "generated"]),
                name="dialogue_origin_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "pending",
                        "in_review",
                        "needs_adjudication",
                        "accepted",
                        "rejected",
                    ]
                ),
                name="dialogue_status_valid",
            ),
        ]

    OPEN = [Status.PENDING, Status.IN_REVIEW]

    def __str__(self) -> str:
        return f"#{self.pk} {self.scenario.name}"

    @property
    def crisis_flagged(self) -> bool:
        """Flagged for crisis or self-harm at some point (whatever a lead decided since)."""
        return self.safety_status not in (SafetyStatus.NONE, SafetyStatus.SCREENING)

    @property
    def is_settled(self) -> bool:
        return self.settled_at is not None

    def settle(self) -> str:
        """Its last required review landed: store the final state, or send it to a lead
        (`curation.settlement`). Returns the new status."""
        from curation import settlement

        return settlement.settle(self)

    def flag_crisis(self, annotator: Any, notes: str) -> None:
        """An annotator's crisis flag: to the leads' safety queue, even when a lead had cleared
        it before (a new flag is a new concern). Each flag is counted on the dashboard."""
        if self.safety_status != SafetyStatus.FLAGGED:
            self.safety_status = SafetyStatus.FLAGGED
            self.safety_notes = {
                **self.safety_notes,
                "source": "annotator",
                "flagged_by": annotator.get_username(),
                "notes": notes,
            }
            self.save(update_fields=["safety_status", "safety_notes"])
        Event.objects.create(
            dialogue=self,
            actor=annotator,
            action=Event.Action.CRISIS_FLAGGED,
            after={"safety_status": self.safety_status},
        )

    def flag_by_gate(
        self,
        source: str,
        categories: list[str],
        matches: list[str],
        reasons: list[dict[str, str]] | None = None,
    ) -> bool:
        """The crisis gate found risk in new text of this dialogue (a DRI candidate, a proposed
        edit): to the leads' safety queue, with the reasons. False when a lead already holds it
        (flagged or excluded); a dialogue a lead had cleared is flagged again."""
        updated = (
            Dialogue.objects.filter(pk=self.pk)
            .exclude(safety_status__in=LEAD_HELD)
            .update(
                safety_status=SafetyStatus.FLAGGED,
                safety_notes={
                    **self.safety_notes,
                    "source": source,
                    "categories": categories,
                    "matches": matches,
                    **({"reasons": reasons} if reasons is not None else {}),
                },
            )
        )
        self.refresh_from_db(fields=["safety_status", "safety_notes"])
        if updated:
            Event.objects.create(
                dialogue=self,
                actor=None,
                action=Event.Action.CRISIS_FLAGGED,
                after={"safety_status": self.safety_status, "source": source},
            )
        return bool(updated)

    def reopen(self, lead: Any, reason: str) -> Adjudication:
        """A lead's only way to change a settled dialogue: back to adjudication, with a reason,
        recorded. Its stored final state stands until the new decision replaces it."""
        from curation.lead import adjudication
        from curation.review.reviewing import next_version

        reason = reason.strip()
        if not reason:
            raise ValueError("Say why you re-open it: the reason is kept with the dialogue.")
        with transaction.atomic():
            locked = Dialogue.objects.select_for_update().get(pk=self.pk)
            if not locked.is_settled or locked.status == Dialogue.Status.NEEDS_ADJUDICATION:
                raise ValueError("Only a settled dialogue can be re-opened.")
            next_version(self.pk, locked.version, status=Dialogue.Status.NEEDS_ADJUDICATION)
            Event.objects.create(
                dialogue=self,
                actor=lead,
                action=Event.Action.REOPENED,
                before={"status": locked.status, "version": locked.version},
                after={
                    "status": Dialogue.Status.NEEDS_ADJUDICATION,
                    "version": locked.version + 1,
                    "reason": reason,
                },
            )
            opened = adjudication.open_for(
                self,
                [Adjudication.Reason.REOPENED],
                {"reopened": {"by": lead.get_username(), "reason": reason}},
            )
        self.refresh_from_db()
        return opened

    @property
    def source_label(self) -> str:
        return self.label_of_source(self.source_file, self.source_record)

    @staticmethod
    def label_of_source(source_file: str, source_record: int | None) -> str:
        if source_record is None:
            return source_file
        return f"{source_file} · record {source_record}"


class Turn(models.Model):
    class Role(models.TextChoices):
        SEEKER = "seeker", "Seeker"
        SUPPORTER = "supporter", "Supporter"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="turns")
    index = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    # As written by the teacher or the source file: reviews never change it.
    text = models.TextField()
    strategy = models.ForeignKey(
        Strategy, null=True, blank=True, on_delete=models.PROTECT, related_name="turns"
    )
    # The turn's final state, written by `curation.settlement` when its dialogue settles (reviewers
    # agree, or a lead decides) and by nothing else; None (not "") before that.
    final_text = models.TextField(null=True, blank=True)  # noqa: DJ001
    final_strategy = models.ForeignKey(
        Strategy, null=True, blank=True, on_delete=models.PROTECT, related_name="final_turns"
    )

    class Meta:
        ordering = ["dialogue", "index"]
        constraints = [
            models.UniqueConstraint(fields=["dialogue", "index"], name="turn_unique_index"),
            models.CheckConstraint(
                condition=Q(role__in=["seeker", "supporter"]), name="turn_role_valid"
            ),
            models.CheckConstraint(
                condition=Q(role="supporter") | Q(strategy__isnull=True),
                name="turn_only_supporter_has_strategy",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dialogue_id}:{self.index} {self.role}"

    @property
    def current_text(self) -> str:
        """The final text once the dialogue settled, else the text as written."""
        return self.text if self.final_text is None else self.final_text

    @property
    def current_strategy(self) -> Strategy | None:
        """The final strategy once the dialogue settled, else the teacher's (or the file's)."""
        return self.strategy if self.final_text is None else self.final_strategy


class Candidate(models.Model):
    """A reply for a masked supporter turn: written by the teacher (DRI), or a trained student's
    reply sent back to be ranked (`author` student; never an SFT example of a release)."""

    class Author(models.TextChoices):
        TEACHER = "teacher", "Teacher (DRI)"
        STUDENT = "student", "Student"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="candidates")
    text = models.TextField()
    author = models.CharField(max_length=10, choices=Author.choices, default=Author.TEACHER)
    strategy = models.ForeignKey(
        Strategy, null=True, blank=True, on_delete=models.PROTECT, related_name="candidates"
    )
    # Teacher: job, unit, teacher, prompt version, sampling, attempts, usage, similarity to the
    # original. Student: training job, adapter, base, decoding, the rule that chose it, its score.
    provenance = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["turn", "id"]

    def __str__(self) -> str:
        return f"candidate {self.pk} for turn {self.turn_id}"


class Review(models.Model):
    """One annotator's review of one dialogue: a draft while they work, then submitted once."""

    class Decision(models.TextChoices):
        ACCEPT = "accept", "Accept"
        REJECT = "reject", "Reject"

    class Flag(models.TextChoices):
        CRISIS = "crisis", "Crisis / self-harm"
        PERSONAL_DATA = "personal_data", "Personal data"
        OFF_SCENARIO = "off_scenario", "Off-scenario"
        UNREALISTIC = "unrealistic", "Unrealistic"
        REPETITIVE = "repetitive", "Repetitive"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="reviews")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    flags = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True)
    based_on_version = models.PositiveIntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dialogue", "annotator"], name="review_one_per_annotator"
            ),
        ]

    def __str__(self) -> str:
        return f"review of #{self.dialogue_id} by {self.annotator_id}"

    @property
    def is_submitted(self) -> bool:
        return self.submitted_at is not None


class TurnLabel(models.Model):
    """The strategy one annotator chose for one supporter turn."""

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="labels")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="labels")
    strategy = models.ForeignKey(Strategy, null=True, blank=True, on_delete=models.PROTECT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["review", "turn"], name="label_one_per_turn")
        ]

    def __str__(self) -> str:
        return f"label of turn {self.turn_id}"


class TurnEdit(models.Model):
    """A proposed change to a turn's text. An annotator's proposal belongs to their review and
    stays theirs (blind) until the dialogue settles, when `curation.settlement` applies it or
    sends conflicting proposals to a lead; a lead's (no review) is part of their decision."""

    review = models.ForeignKey(Review, null=True, blank=True, on_delete=models.SET_NULL)
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="edits")
    editor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    before = models.TextField()
    after = models.TextField()
    reason = models.CharField(max_length=300, blank=True)
    version = models.PositiveIntegerField(help_text="the dialogue version the edit was made on")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["review", "turn"],
                condition=Q(review__isnull=False),
                name="edit_one_proposal_per_review_turn",
            )
        ]

    def __str__(self) -> str:
        return f"edit of turn {self.turn_id}"


class HoldQuerySet(models.QuerySet[Any]):
    """Holds (a dialogue for review, a masked turn for ranking): `expires_at`, `released_at`."""

    def live(self, now: Any = None) -> HoldQuerySet:
        """Holds still held: not given back, not run out."""
        return self.filter(released_at__isnull=True, expires_at__gt=now or timezone.now())


class AssignmentQuerySet(HoldQuerySet):
    def crisis_given_today(self, user: Any, now: Any = None) -> int:
        """Crisis-flagged dialogues this annotator was given since local midnight."""
        now = now or timezone.now()
        midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return (
            self.filter(annotator=user, created_at__gte=midnight)
            .exclude(dialogue__safety_status=SafetyStatus.NONE)
            .count()
        )


class Assignment(models.Model):
    """A lease: this dialogue is reserved for this annotator until `expires_at`."""

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    skipped = models.BooleanField(default=False)

    objects = AssignmentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dialogue", "annotator"], name="assignment_once"),
        ]
        indexes = [models.Index(fields=["dialogue", "expires_at"], name="assignment_active")]

    def __str__(self) -> str:
        return f"#{self.dialogue_id} for {self.annotator_id}"


class Event(models.Model):
    """The dialogue's history: who changed what, when, from what to what."""

    class Action(models.TextChoices):
        CLAIMED = "claimed", "claimed"
        SKIPPED = "skipped", "skipped"
        PROPOSED_EDIT = "edited", "proposed an edit of"
        REVIEWED = "reviewed", "reviewed"
        CRISIS_FLAGGED = "crisis flagged", "flagged a crisis"
        RANKED = "ranked", "ranked"
        STATUS = "status", "status"
        SETTLED = "settled", "settled"
        ADJUDICATION_OPENED = "adjudication opened", "opened an adjudication"
        ADJUDICATED = "adjudicated", "adjudicated"
        REOPENED = "reopened", "re-opened for adjudication"
        SAFETY_CLEARED = "safety cleared", "cleared the safety flag"
        SAFETY_EXCLUDED = "safety excluded", "excluded for safety"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=40, choices=Action.choices)
    target = models.CharField(max_length=100, blank=True)  # e.g. "turn 3"
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["dialogue", "id"], name="event_dialogue")]

    def __str__(self) -> str:
        return f"{self.action} on #{self.dialogue_id}"


class Ranking(models.Model):
    """One annotator's ranking of the replies for a masked supporter turn: the DRI candidates and
    the original, shown unmarked in a shuffled order. Items are "c<candidate id>" or "t<turn id>"
    (the original); `order` lists groups of tied items, best first."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="rankings")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings"
    )
    # The turn's ranking round (RankRound.number; 1 is the DRI round, which has no row).
    round = models.PositiveSmallIntegerField(default=1)
    order = models.JSONField(default=list)
    unacceptable = models.JSONField(default=list, blank=True)
    display_order = models.JSONField(default=list)
    edited_best = models.TextField(blank=True)
    submitted_at = models.DateTimeField(auto_now_add=True)
    # A lead's ranking that settles a conflict: releases use it alone for this turn and round.
    adjudicated = models.BooleanField(default=False)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["turn", "round", "annotator"], name="ranking_one_per_annotator_round"
            ),
        ]

    def __str__(self) -> str:
        return f"ranking of turn {self.turn_id} by {self.annotator_id}"


class RankHold(models.Model):
    """A lease on ranking one masked turn: taken from the rank queue, it keeps the turn's place
    among its rankers while this annotator works on it."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="rank_holds")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rank_holds"
    )
    round = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)

    objects = HoldQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["turn", "round", "annotator"], name="rank_hold_once_per_round"
            ),
        ]

    def __str__(self) -> str:
        return f"turn {self.turn_id} for {self.annotator_id}"


class RankRound(models.Model):
    """A later ranking round of a masked turn, e.g. a trained student's reply sent back among
    the original and the teacher's DRI candidates. Round 1 (the DRI candidates and the original)
    has no row; a turn's current round is its highest, and only that one is offered to rank.

    `keys` are the items shown ("t<turn id>", "c<candidate id>"). A round waits while the teacher
    writes DRI candidates for a gap that had none (`dri_job_id`); it opens when they land, or
    when that job ends without them (then it holds the original and the student's reply)."""

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting for the teacher's candidates"
        OPEN = "open", "Open for ranking"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="rank_rounds")
    number = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    keys = models.JSONField(default=list)
    # Where the round came from: {"kind": "student", "training_job", "rule", "score", ...}.
    source = models.JSONField(default=dict, blank=True)
    # The ids of what it came from and waits for (plain ids: training and generation sit
    # downstream of curation).
    training_job_id = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    dri_job_id = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["turn", "number"]
        constraints = [
            models.UniqueConstraint(fields=["turn", "number"], name="rank_round_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=2), name="rank_round_after_dri"),
        ]

    def __str__(self) -> str:
        return f"round {self.number} of turn {self.turn_id}"


class Adjudication(models.Model):
    """Reviewers disagreed on this dialogue (or a lead re-opened it): a lead decides, and the
    decision is final."""

    class Reason(models.TextChoices):
        DECISION = "decision", "Accept vs reject"
        LABELS = "labels", "Strategy labels"
        TEXTS = "texts", "Conflicting text edits"
        RANKINGS = "rankings", "Candidate rankings"
        REOPENED = "reopened", "Re-opened by a lead"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="adjudications")
    reasons = models.JSONField(default=list)  # Reason values
    # What differs: {"labels": {turn index: {annotator: strategy}}, "texts": {turn index:
    # {annotator: text}}, "rankings": [turn index, ...], "reopened": {"by": lead, "reason": why}}
    details = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT
    )
    decision = models.CharField(max_length=10, choices=Review.Decision.choices, blank=True)
    # The lead's final strategy per supporter turn: {turn index (str): strategy name or ""}.
    labels = models.JSONField(default=dict, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dialogue"],
                condition=models.Q(resolved_at__isnull=True),
                name="adjudication_one_open",
            ),
        ]

    def __str__(self) -> str:
        return f"adjudication of #{self.dialogue_id}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class Release(models.Model):
    """A named, frozen dataset: its dialogues are snapshotted when it is created."""

    class Status(models.TextChoices):
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class DriPolicy(models.TextChoices):
        """Which DRI candidates become examples in sft_dri/ (curation.releases.build)."""

        ACCEPTABLE = "acceptable", "Acceptable: ranked, and marked unacceptable by no one"
        UNREJECTED = "unrejected", "Unrejected: every candidate no one marked unacceptable"
        BEST = "best", "Best: the top-ranked reply of each masked turn, when it is a candidate"

    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9._-]*$", "Use a-z, 0-9, '.', '-' and '_'.")],
    )
    licence = models.CharField(max_length=200, default="CC BY-NC 4.0")
    notes = models.TextField(blank=True)
    filters = models.JSONField(default=dict, blank=True)
    # Figures about the selection taken when it was frozen (e.g. crisis-flagged ones left out).
    stats = models.JSONField(default=dict, blank=True)
    # How its files are written (strategy tags, DPO pairing): the same files every time.
    file_options = models.JSONField(default=dict, blank=True)
    dri_policy = models.CharField(
        max_length=10, choices=DriPolicy.choices, default=DriPolicy.ACCEPTABLE
    )
    split = models.JSONField(default=dict)  # {"train": 80, "valid": 10, "test": 10}
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BUILDING)
    progress = models.PositiveSmallIntegerField(default=0)  # percent of the files written
    error = models.TextField(blank=True)
    # The build's claim, as for generation and training jobs: the worker that holds it, beating.
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    checksum = models.CharField(max_length=64, blank=True)  # sha256 of the snapshots, in order
    counts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def selection(self) -> str:
        """What the release holds, in words (from its stored filters)."""
        chosen = self.filters or {}
        statuses = " or ".join(chosen.get("statuses") or ["accepted"])
        parts = [f"{statuses} dialogues"]
        scenarios = chosen.get("scenarios") or []
        parts.append(f"of {', '.join(scenarios)}" if scenarios else "of every scenario")
        if chosen.get("min_agreeing_reviews"):
            parts.append(f"with at least {chosen['min_agreeing_reviews']} accepting reviews")
        if not chosen.get("dri", True):
            return f"{' '.join(parts)}, without DRI replies"
        which = {
            self.DriPolicy.ACCEPTABLE: "that rankers found acceptable",
            self.DriPolicy.UNREJECTED: "that no annotator marked unacceptable",
            self.DriPolicy.BEST: "ranked best for their turn",
        }[self.DriPolicy(self.dri_policy)]
        return f"{' '.join(parts)}, with the DRI replies {which}"

    @property
    def folder(self) -> Path:
        """Where its files live; curation.releases.build.ensure_files is the one writer of it."""
        return Path(settings.MEDIA_ROOT) / "releases" / self.name

    @property
    def dialogue_count(self) -> int | None:
        """Dialogues in it; None until it is frozen."""
        return sum(self.counts.values()) if self.counts else None

    # The build's claim, as for training jobs: a worker takes a building release with `claim`,
    # `beat`s while it works, and ends it with `finish` or `fail`; a worker that starts puts back
    # what a dead one held (`recover`). After a successful claim the object speaks for its worker:
    # these methods reload the row only when they succeed, so a worker whose build was taken
    # over never starts speaking for the new one.

    @classmethod
    def _claimable(cls) -> Q:
        lease = timezone.now() - timedelta(seconds=settings.RELEASE_LEASE_SECONDS)
        return Q(worker="") | Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=lease)

    def claim(self, worker: str) -> bool:
        """Take the build for `worker`: a building release nobody holds, or whose worker has not
        beaten for a whole lease. False when it is not building or a live worker holds it."""
        claimable = Release.objects.filter(
            self._claimable(), pk=self.pk, status=self.Status.BUILDING
        )
        # Read first: on SQLite a write would wait for the freeze transaction of a live build.
        if not claimable.exists():
            return False
        updated = claimable.update(
            worker=worker, heartbeat_at=timezone.now(), attempts=F("attempts") + 1, progress=1
        )
        if updated:
            self.refresh_from_db()
        return updated == 1

    def beat(self, progress: int | None = None) -> bool:
        """This worker still builds it (and has got this far); False when another has taken the
        build over, or it has ended."""
        values: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if progress is not None:
            values["progress"] = progress
        updated = Release.objects.filter(
            pk=self.pk, worker=self.worker, status=self.Status.BUILDING
        ).update(**values)
        return updated == 1

    def finish(self) -> bool:
        """building -> ready, if this worker still holds the build."""
        updated = Release.objects.filter(
            pk=self.pk, worker=self.worker, status=self.Status.BUILDING
        ).update(status=self.Status.READY, progress=100, error="", heartbeat_at=None)
        if updated:
            self.refresh_from_db()
        return updated == 1

    def fail(self, error: str) -> bool:
        """building -> failed, saying why, if this worker still holds the build (no worker: a
        build whose task could not be sent)."""
        updated = Release.objects.filter(
            pk=self.pk, worker=self.worker, status=self.Status.BUILDING
        ).update(status=self.Status.FAILED, error=error[:4000], heartbeat_at=None)
        if updated:
            self.refresh_from_db()
        return updated == 1

    def retry(self) -> bool:
        """failed -> building again, held by no worker; the caller enqueues the build. False when
        it had not failed."""
        updated = Release.objects.filter(pk=self.pk, status=self.Status.FAILED).update(
            status=self.Status.BUILDING, worker="", heartbeat_at=None, progress=0, error=""
        )
        self.refresh_from_db()
        return updated == 1

    @classmethod
    def recover(cls, worker: str) -> list[int]:
        """At worker start: the builds to queue again. Those this worker name held before it
        restarted are orphans (it died holding them); so are those whose worker has been silent
        for a lease, and those no worker took (their message was lost)."""
        building = cls.objects.filter(status=cls.Status.BUILDING)
        building.filter(worker=worker).update(heartbeat_at=None)
        return list(building.filter(cls._claimable()).values_list("pk", flat=True))

    @classmethod
    def leases_left(cls) -> dict[int, float]:
        """The builds live workers hold: seconds until each one's lease would run out."""
        held = cls.objects.filter(status=cls.Status.BUILDING).exclude(cls._claimable())
        lease = timedelta(seconds=settings.RELEASE_LEASE_SECONDS)
        now = timezone.now()
        return {
            pk: max(0.0, (beat + lease - now).total_seconds())
            for pk, beat in held.values_list("pk", "heartbeat_at")
            if beat is not None
        }


class ReleaseDialogue(models.Model):
    """One dialogue as it was when the release was made: text, final labels, candidates, provenance."""

    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="items")
    dialogue_id = (
        models.PositiveIntegerField()
    )  # no foreign key: deleting a dialogue keeps releases
    split = models.CharField(max_length=5)
    snapshot = models.JSONField()

    class Meta:
        ordering = ["release", "dialogue_id"]
        constraints = [
            models.UniqueConstraint(fields=["release", "dialogue_id"], name="release_item_once"),
        ]

    def __str__(self) -> str:
        return f"{self.release_id}:{self.dialogue_id}"


class FigureSnapshot(models.Model):
    """The last figures computed for a lead page (the agreement report), kept so that the page
    answers at once on a large studio: a worker computes new ones when the data has changed
    since, and the page shows these, with their time, until they are there
    (curation.lead.insights.agreement_figures).

    `version` is the data version the figures were computed from, read before computing: a
    label that lands while they are computed makes them stale again. `payload` is the pickled
    report; it is written only by this code, from the database's own rows.
    """

    name = models.CharField(max_length=40, unique=True)
    version = models.CharField(max_length=64, blank=True)
    computed_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)  # how long computing them took
    payload = models.BinaryField(null=True, blank=True)
    # When a worker was last asked for new figures, and for which version: asked again only
    # once those figures are in or REFRESH_RETRY has passed (a lost message, a killed worker).
    requested_at = models.DateTimeField(null=True, blank=True)
    requested_version = models.CharField(max_length=64, blank=True)

    REFRESH_RETRY = timedelta(minutes=2)

    def __str__(self) -> str:
        return f"{self.name} figures of {self.computed_at}"

    @classmethod
    def of(cls, name: str) -> FigureSnapshot:
        snapshot, _ = cls.objects.get_or_create(name=name)
        return snapshot

    def ask(self, version: str, now: Any = None) -> bool:
        """Note that new figures are wanted for `version`; True when the caller should send a
        worker the request (nobody has for this version, or the last request is older than
        REFRESH_RETRY), False when one is on its way already."""
        now = now or timezone.now()
        asked = (
            FigureSnapshot.objects.filter(pk=self.pk)
            .filter(
                ~Q(requested_version=version)
                | Q(requested_at__isnull=True)
                | Q(requested_at__lt=now - self.REFRESH_RETRY)
            )
            .update(requested_at=now, requested_version=version)
        )
        return asked == 1

    def store(self, version: str, payload: bytes, started: Any, seconds: float) -> bool:
        """Keep figures computed from `version` since `started`, unless newer ones (computed
        from a later start) are there already; True when they were kept."""
        kept = (
            FigureSnapshot.objects.filter(pk=self.pk)
            .filter(Q(computed_at__isnull=True) | Q(computed_at__lt=started))
            .update(version=version, payload=payload, computed_at=started, seconds=seconds)
        )
        self.refresh_from_db()
        return kept == 1
