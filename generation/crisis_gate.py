"""The crisis gate, all layers: what every way into the studio runs on the seeker's words.

Layers, each giving its own reasons to the lead:

* ``rules``  - generation.safety's patterns: explainable, instant.
* ``teacher`` - optional (EXTES_SAFETY_TEACHER_CHECK=1 with a real endpoint): the teacher's
  verdict in JSON with the evidence sentence, one request per dialogue, cached per text
  (generation.crisis_teacher). Its verdict flags.
* ``model``  - generation.crisis_model's classifier (the sentence-embedding model fine-tuned on
  written snippets): recognises paraphrases the rules do not name. It needs the model loaded
  (seconds, once per process) and some CPU per text, so imports leave it to a worker
  (curation.screening) while generation, DRI and edits, which are few texts at a time, run it
  where they are.

Who decides: the rules alone when the classifier is off. With both, the classifier, and the rules
too only where, on the development set, they catch crisis snippets the classifier misses at its
threshold (chosen when it is calibrated, generation.crisis_model.calibrate, and recorded in its
meta.json); otherwise a rule match is a reason shown to the lead beside the classifier's.

    check(texts, layers=("rules", "model")) -> GateResult
    check_many([texts, ...], layers) -> [GateResult, ...]   (one batch through the model)

Which layers run is the setting EXTES_SAFETY_SCREEN: ``worker`` (default) and ``inline`` run both
(they differ in where imports are screened, curation.screening); ``off`` runs the rules alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from generation import safety

CATEGORIES = safety.CATEGORIES
LAYERS: tuple[str, ...] = ("rules", "model")
# The teacher's check (generation.crisis_teacher) joins when EXTES_SAFETY_TEACHER_CHECK is on.
ALL_LAYERS: tuple[str, ...] = (*LAYERS, "teacher")
LAYER_NAMES = {"rules": "rule", "model": "classifier", "teacher": "teacher"}
SCREEN_MODES = ("worker", "inline", "off")


def screen_mode() -> str:
    """EXTES_SAFETY_SCREEN, read from Django's settings when they are configured."""
    try:
        from django.conf import settings

        if settings.configured:
            return str(getattr(settings, "SAFETY_SCREEN", "worker"))
    except ImportError:  # pragma: no cover - Django is a dependency
        pass
    return os.environ.get("EXTES_SAFETY_SCREEN", "worker")


def default_layers() -> tuple[str, ...]:
    """The layers the studio runs where text arrives: the rules alone when the screen is off."""
    return ("rules",) if screen_mode() == "off" else screen_layers()


def screen_layers() -> tuple[str, ...]:
    """Rules and classifier, and the teacher's check when it is on."""
    from generation import crisis_teacher

    return (*LAYERS, "teacher") if crisis_teacher.enabled() else LAYERS


@dataclass(frozen=True)
class Reason:
    """Why one layer flagged one sentence or passage."""

    layer: str  # "rules" | "model"
    category: str
    text: str  # the words that were seen, as written
    detail: str = ""  # the classifier's probability and nearest exemplar; empty for rules

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "category": self.category, "text": self.text,
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True)
class GateResult:
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    layers: tuple[str, ...] = LAYERS

    rules_decide: bool = False  # with the classifier on: do rule matches flag on their own?

    @property
    def deciders(self) -> tuple[str, ...]:
        """The layers whose reasons flag: the teacher's verdict always does."""
        if "model" not in self.layers:
            found: tuple[str, ...] = ("rules",)
        else:
            found = ("rules", "model") if self.rules_decide else ("model",)
        return (*found, "teacher") if "teacher" in self.layers else found

    @property
    def flagged(self) -> bool:
        return any(r.layer in self.deciders for r in self.reasons)

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories the deciding layer saw."""
        seen = {r.category for r in self.reasons if r.layer in self.deciders}
        return tuple(c for c in CATEGORIES if c in seen)

    @property
    def matches(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.text for r in self.reasons))

    def by_layer(self, layer: str) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.layer == layer)

    def notes(self, source: str) -> dict[str, object]:
        """What a flagged dialogue keeps in `safety_notes`: why, per layer, for the lead."""
        return {
            "source": source,
            "categories": list(self.categories),
            "matches": list(self.matches),
            "reasons": [r.as_dict() for r in self.reasons],
            "layers": list(self.layers),
        }


def _rule_reasons(texts: Sequence[str]) -> list[Reason]:
    reasons = []
    for text in texts:
        for sentence in safety._sentences(text):
            for category in sorted(safety.sentence_categories(sentence)):
                reasons.append(Reason("rules", category, sentence))
    return reasons


def check(texts: Sequence[str], layers: Sequence[str] | None = None) -> GateResult:
    return check_many([texts], layers)[0]


def check_many(
    groups: Sequence[Sequence[str]], layers: Sequence[str] | None = None
) -> list[GateResult]:
    """The gate on several groups of texts (e.g. dialogues: description and seeker turns), the
    model's share in one batch."""
    chosen = tuple(layers) if layers is not None else default_layers()
    unknown = set(chosen) - set(ALL_LAYERS)
    if unknown:
        raise ValueError(f"unknown gate layers: {sorted(unknown)}")
    reasons: list[list[Reason]] = [
        _rule_reasons(texts) if "rules" in chosen else [] for texts in groups
    ]
    rules_decide = False
    if "model" in chosen:
        from generation.crisis_model import get_classifier

        classifier = get_classifier()
        rules_decide = classifier.rules_decide
        flat = [(g, text) for g, texts in enumerate(groups) for text in texts if text.strip()]
        verdicts = classifier.check([text for _, text in flat])
        for (g, _), found in zip(flat, verdicts, strict=True):
            reasons[g].extend(Reason("model", v.category, v.unit, v.reason()) for v in found)
    if "teacher" in chosen:
        from generation import crisis_teacher

        for g, said in enumerate(crisis_teacher.verdicts(groups)):
            if said is not None:
                words = said.evidence or "(the teacher named no sentence)"
                reasons[g].append(Reason("teacher", said.category, words, said.detail()))
    return [GateResult(tuple(r), chosen, rules_decide) for r in reasons]
