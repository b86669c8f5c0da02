from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        checks.register(check_gate_thresholds)


def check_gate_thresholds(**kwargs: Any) -> list[checks.CheckMessage]:
    """EXTES_GENERATION_GATE_THRESHOLDS names only thresholds that exist, with values of their
    kind: a typo would otherwise leave a gate at its default unnoticed."""
    from django.conf import settings

    from generation.quality import thresholds_from

    try:
        thresholds_from(settings.GENERATION_GATE_THRESHOLDS)
    except (ValueError, TypeError, AttributeError) as error:
        return [checks.Error(f"EXTES_GENERATION_GATE_THRESHOLDS: {error}", id="generation.E001")]
    return []
