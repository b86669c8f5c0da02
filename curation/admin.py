from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from curation.models import (
    Adjudication,
    Assignment,
    Candidate,
    Dialogue,
    Event,
    FigureSnapshot,
    RankHold,
    Ranking,
    RankRound,
    Release,
    ReleaseDialogue,
    Review,
    Scenario,
    Strategy,
    Turn,
    TurnEdit,
    TurnLabel,
)


class ReadOnly:
    """Decisions and content change only through the studio's own versioned, logged paths
    (reviews, adjudication, re-opening): the admin shows them, and changes nothing."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Scenario)
class ScenarioAdmin(admin.ModelAdmin):
    list_display = ["name", "is_official", "extes_count"]
    list_filter = ["is_official"]
    search_fields = ["name", "key"]


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    list_display = ["name", "taxonomy", "esconv_equivalent", "extes_share"]
    list_filter = ["taxonomy"]
    search_fields = ["name", "key", "definition"]


class TurnInline(ReadOnly, admin.TabularInline):
    model = Turn
    fields = ["index", "role", "text", "strategy", "final_text", "final_strategy"]
    extra = 0
    autocomplete_fields = ["strategy"]


@admin.register(Dialogue)
class DialogueAdmin(ReadOnly, admin.ModelAdmin):
    list_display = [
        "id",
        "scenario",
        "status",
        "origin",
        "source_file",
        "source_record",
        "created_at",
    ]
    list_filter = [
        "status",
        "safety_status",
        "origin",
        "source_format",
        "scenario__is_official",
        "scenario",
    ]
    search_fields = ["description", "content_hash", "source_file"]
    readonly_fields = [
        "content_hash",
        "raw",
        "repairs",
        "provenance",
        "created_at",
        "updated_at",
        "version",
    ]
    list_select_related = ["scenario"]
    show_full_result_count = False
    inlines = [TurnInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dialogue]:
        return super().get_queryset(request).select_related("scenario")


@admin.register(Turn)
class TurnAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["dialogue", "index", "role", "strategy"]
    list_filter = ["role", "strategy__taxonomy", "strategy"]
    search_fields = ["text"]
    raw_id_fields = ["dialogue"]
    list_select_related = ["dialogue__scenario", "strategy"]
    show_full_result_count = False


@admin.register(Candidate)
class CandidateAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "turn", "author", "strategy", "created_at"]
    list_filter = ["author", "strategy"]
    search_fields = ["text"]
    raw_id_fields = ["turn"]
    readonly_fields = ["provenance"]


@admin.register(RankRound)
class RankRoundAdmin(ReadOnly, admin.ModelAdmin):
    """Later ranking rounds of a masked turn (a student's reply sent back): where they came
    from and whether they wait for the teacher's candidates."""

    list_display = ["id", "turn", "number", "status", "training_job_id", "dri_job_id", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["turn"]
    readonly_fields = ["keys", "source"]


class TurnLabelInline(ReadOnly, admin.TabularInline):
    model = TurnLabel
    extra = 0
    raw_id_fields = ["turn"]


@admin.register(Review)
class ReviewAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "dialogue", "annotator", "decision", "submitted_at"]
    list_filter = ["decision", "submitted_at"]
    search_fields = ["notes", "annotator__username"]
    raw_id_fields = ["dialogue"]
    inlines = [TurnLabelInline]


@admin.register(TurnEdit)
class TurnEditAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "turn", "editor", "version", "created_at"]
    search_fields = ["before", "after", "reason"]
    raw_id_fields = ["turn", "review"]


@admin.register(Assignment)
class AssignmentAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "dialogue", "annotator", "expires_at", "released_at", "skipped"]
    list_filter = ["skipped"]
    raw_id_fields = ["dialogue"]


@admin.register(RankHold)
class RankHoldAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "turn", "annotator", "expires_at", "released_at"]
    raw_id_fields = ["turn"]


@admin.register(FigureSnapshot)
class FigureSnapshotAdmin(ReadOnly, admin.ModelAdmin):
    """The lead pages' stored figures: when they were computed, how long it took, and whether a
    worker has been asked for new ones (the payload itself is the agreement page)."""

    list_display = ["name", "computed_at", "seconds", "requested_at", "version"]
    exclude = ["payload"]


@admin.register(Event)
class EventAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "dialogue", "actor", "action", "target", "created_at"]
    list_filter = ["action"]
    raw_id_fields = ["dialogue"]


@admin.register(Ranking)
class RankingAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "turn", "round", "annotator", "adjudicated", "submitted_at"]
    list_filter = ["adjudicated"]
    raw_id_fields = ["turn"]


@admin.register(Adjudication)
class AdjudicationAdmin(ReadOnly, admin.ModelAdmin):
    list_display = [
        "id",
        "dialogue",
        "reasons",
        "opened_at",
        "resolved_at",
        "resolved_by",
        "decision",
    ]
    list_filter = ["decision", "resolved_at"]
    raw_id_fields = ["dialogue"]
    readonly_fields = ["opened_at"]


@admin.register(TurnLabel)
class TurnLabelAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "review", "turn", "strategy", "updated_at"]
    list_filter = ["strategy"]
    raw_id_fields = ["review", "turn"]


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "progress", "licence", "created_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "notes", "checksum"]
    readonly_fields = ["checksum", "counts", "filters", "split", "previous", "progress", "error"]


@admin.register(ReleaseDialogue)
class ReleaseDialogueAdmin(admin.ModelAdmin):
    """Read-only: a release never changes."""

    list_display = ["release", "dialogue_id", "split"]
    list_filter = ["split", "release"]
    readonly_fields = ["release", "dialogue_id", "split", "snapshot"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
