from __future__ import annotations

from django.contrib import admin

from generation.models import DialogueVector, GenerationFailure, GenerationJob, GenerationUnit


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "mode",
        "status",
        "current_round",
        "rounds",
        "created_by",
        "created_at",
    ]
    list_filter = ["kind", "mode", "status"]
    search_fields = ["error", "prompt_version"]
    readonly_fields = [
        "teacher",
        "sampling",
        "prompt_version",
        "quality_gates",
        "request_token",
        "started_at",
        "finished_at",
    ]
    filter_horizontal = ["scenarios"]


@admin.register(GenerationUnit)
class GenerationUnitAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "job",
        "round",
        "scenario",
        "slot",
        "turn",
        "status",
        "attempts",
        "claimed_by",
    ]
    list_filter = ["status", "job__kind"]
    search_fields = ["error", "claimed_by"]
    raw_id_fields = ["job", "turn", "dialogue"]
    list_select_related = ["job", "scenario", "turn"]


@admin.register(GenerationFailure)
class GenerationFailureAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "unit", "attempt", "failure_class", "created_at"]
    list_filter = ["failure_class"]
    search_fields = ["detail", "raw_output"]
    raw_id_fields = ["job", "unit"]


@admin.register(DialogueVector)
class DialogueVectorAdmin(admin.ModelAdmin):
    """Computed from the dialogue's text: looked at, never edited (a stale one is recomputed)."""

    list_display = ["dialogue", "model", "content_hash"]
    list_filter = ["model"]
    raw_id_fields = ["dialogue"]
    readonly_fields = ["dialogue", "model", "content_hash", "vector"]

    def has_add_permission(self, request: object) -> bool:
        return False
