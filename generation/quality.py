"""The degenerate-text gates (generation/degenerate.py) as a job runs them.

A job fixes, when it is created, which gates it runs and every threshold (the settings
EXTES_GENERATION_GATES and EXTES_GENERATION_GATE_THRESHOLDS), so that its page and its
dialogues' provenance say what they were held to even after the settings change. Each gate
refuses a dialogue with a failure of its own class (repetition, role_confusion, prompt_leakage:
the instructions copied into the dialogue or a template placeholder left in it, off_scenario),
before it is stored: no reviewer ever sees it.

The off-scenario gate compares a dialogue with one centroid per scenario, made of that
scenario's seed and accepted dialogues (the humans' idea of the scenario). A scenario without
any has no centroid and is not judged; vectors are kept per process and topped up with
dialogues accepted since, once a minute.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from curation.parsing import ParsedDialogue
from generation import degenerate, inpainting
from generation.selfchat import Failure

GATES = ("repetition", "role_confusion", "prompt_leakage", "off_scenario")
CENTROID_TTL = 60.0  # seconds between looks for newly accepted dialogues


def thresholds_from(overrides: Mapping[str, Any]) -> degenerate.Thresholds:
    """The default thresholds with `overrides` applied; ValueError names an unknown one."""
    defaults = degenerate.Thresholds()
    known = {field.name for field in dataclasses.fields(defaults)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown gate threshold(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in overrides.items():
        kind = type(getattr(defaults, name))
        try:
            values[name] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"gate threshold {name} must be a {kind.__name__}, not {value!r}"
            ) from None
    return dataclasses.replace(defaults, **values)


def job_settings() -> dict[str, Any]:
    """What a new job records: its gates and all their thresholds, from the settings."""
    from django.conf import settings

    thresholds = thresholds_from(settings.GENERATION_GATE_THRESHOLDS)
    return {"gates": list(settings.GENERATION_GATES), "thresholds": dataclasses.asdict(thresholds)}


def shown(recorded: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(gate, its main limits in words) for the job page."""
    t = thresholds_from(recorded.get("thresholds") or {})
    words = {
        "repetition": (
            f"a turn of {t.turn_min_words}+ words with over {t.turn_dup_5gram:.0%} of its "
            f"characters in repeated 5-grams; over {t.dialogue_dup_5gram:.0%} across the "
            f"dialogue; {t.max_duplicate_turns} repeated turns allowed; a {t.loop_phrase_words}"
            f"-word phrase in {t.loop_fraction:.0%} of the supporter's turns"
        ),
        "role_confusion": "the seeker offering help or speaking as the supporter, role labels",
        "prompt_leakage": (
            f"{inpainting.LEAK_WORDS} words in a row of our instructions, or a template "
            "placeholder such as [insert …] or {name}, in any turn or the description"
        ),
        "off_scenario": (
            f"own scenario's similarity under {t.scenario_floor:.2f}, or another's higher by "
            f"over {t.scenario_margin:.2f}"
        ),
    }
    return [(gate, words[gate]) for gate in recorded.get("gates") or [] if gate in words]


def turns_of(dialogue: ParsedDialogue) -> list[degenerate.Turn]:
    return [(turn.role, turn.text) for turn in dialogue.turns]


def gate_for(
    recorded: Mapping[str, Any],
    scenario: str,
    vector_of: Callable[[ParsedDialogue], np.ndarray] | None = None,
) -> Callable[[ParsedDialogue], None]:
    """The job's gates as one, raising Failure(<gate>, reason). `vector_of` gives a dialogue's
    embedding (shared with the near-duplicate filter, so it is computed once)."""
    gates = [g for g in recorded.get("gates") or [] if g in GATES]
    t = thresholds_from(recorded.get("thresholds") or {})

    def gate(dialogue: ParsedDialogue) -> None:
        turns = turns_of(dialogue)
        if "repetition" in gates:
            reason = degenerate.repetition(turns, t)
            if reason:
                raise Failure("repetition", reason)
        if "role_confusion" in gates:
            # The patterns only: the embedding part missed every paraphrase we tried.
            reason = degenerate.role_confusion(turns, t)
            if reason:
                raise Failure("role_confusion", reason)
        if "prompt_leakage" in gates:
            reason = leakage(dialogue.description, [text for _, text in turns])
            if reason:
                raise Failure("prompt_leakage", reason)
        if "off_scenario" in gates:
            known = scenario_centroids()
            if scenario in known and len(known) >= 2:
                vector = vector_of(dialogue) if vector_of else _embed(dialogue)
                stats = degenerate.off_scenario_statistics(vector, scenario, known)
                reason = degenerate.off_scenario_reason(stats, scenario, t)
                if reason:
                    raise Failure("off_scenario", reason)

    return gate


def leakage(description: str, texts: Sequence[str]) -> str | None:
    """Why a dialogue shows its prompt (our instructions copied, a template placeholder left in),
    or None."""
    for index, text in [(-1, description), *enumerate(texts)]:
        where = "the description" if index < 0 else f"turn {index}"
        words = inpainting.shared_instructions(text, inpainting.DIALOGUE_INSTRUCTIONS)
        if words:
            return f"{where} repeats our instructions (“{words}”)"
        slot = inpainting.placeholder(text)
        if slot:
            return f"{where} holds a template placeholder (“{slot}”)"
    return None


def _embed(dialogue: ParsedDialogue) -> np.ndarray:
    from generation.embeddings import get_embedder

    return degenerate.dialogue_vector(dialogue.description, turns_of(dialogue), get_embedder())


class _Centroids:
    """Per scenario name, the centroid of its seed and accepted dialogues."""

    def __init__(self) -> None:
        self.vectors: dict[int, tuple[str, np.ndarray]] = {}  # dialogue id -> (scenario, vector)
        self.centroids: dict[str, np.ndarray] = {}
        self.checked_at = -CENTROID_TTL
        self.lock = threading.Lock()

    def get(self) -> dict[str, np.ndarray]:
        with self.lock:
            if time.monotonic() - self.checked_at >= CENTROID_TTL:
                self._refresh()
                self.checked_at = time.monotonic()
            return self.centroids

    def _refresh(self) -> None:
        from curation.models import Dialogue
        from generation import vectors

        rows = dict(Dialogue.objects.reference_for_scenarios().values_list("pk", "scenario__name"))
        for gone in set(self.vectors) - set(rows):  # no longer a reference
            del self.vectors[gone]
        todo = [pk for pk in rows if pk not in self.vectors]
        for pk, vector in vectors.vectors_for(todo).items():
            self.vectors[pk] = (rows[pk], vector)
        by_scenario: dict[str, list[np.ndarray]] = {}
        for name, vector in self.vectors.values():
            by_scenario.setdefault(name, []).append(vector)
        self.centroids = {
            name: degenerate.centroid(np.stack(group)) for name, group in by_scenario.items()
        }


_centroids = _Centroids()


def scenario_centroids() -> dict[str, np.ndarray]:
    return _centroids.get()


def clear_caches() -> None:
    global _centroids
    _centroids = _Centroids()
