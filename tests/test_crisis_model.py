"""The crisis gate's classifier layer (generation.crisis_model) and how the gate combines layers
(generation.crisis_gate)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generation import crisis_gate, crisis_model
from generation.crisis_model import MODEL_DIR, NONE, sha256, training_files, units

ROOT = crisis_model.HERE.parent


def test_the_shipped_classifier_was_trained_on_todays_files():
    """A training file changed without retraining would leave the gate answering for data it
    never saw: the checksums recorded at training time must match the files."""
    meta = json.loads((MODEL_DIR / "meta.json").read_text(encoding="utf-8"))
    recorded = meta["files"]
    current = {p.relative_to(ROOT).as_posix(): sha256(p) for p in training_files()}
    assert recorded == current, "retrain: python -m generation.crisis_model train"
    assert meta["dev"]["sha256"] == sha256(ROOT / meta["dev"]["file"])
    assert meta["labels"] == ["none", *crisis_gate.CATEGORIES]
    assert 0 < meta["threshold"] < 1
    adapter = json.loads((MODEL_DIR / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == crisis_model.BASE_MODEL  # no machine's path
    # Written by different hands for different purposes: no snippet in two of the sets.
    train = {t.lower() for p in training_files() for t, _ in crisis_model.read_labelled(p)}
    for name in ("crisis_dev.jsonl", "crisis_heldout.jsonl"):
        other = {t.lower() for t, _ in crisis_model.read_labelled(ROOT / "tests" / "data" / name)}
        assert not train & other, name


def test_the_training_files_hold_every_label():
    for path in training_files():
        labels = {label for _, label in crisis_model.read_labelled(path)}
        assert labels <= {NONE, *crisis_gate.CATEGORIES}, path


def test_units_are_the_text_or_windows_of_three_sentences():
    assert units("") == []
    assert units("  I am fine.  ") == ["I am fine."]
    long = " ".join(f"Sentence number {i} is here with some words in it." for i in range(12))
    windows = units(long)
    assert len(windows) == 6
    assert windows[0].startswith("Sentence number 0") and "number 2 " in windows[0]
    assert windows[1].startswith("Sentence number 2")  # overlapping by one sentence
    assert all(f"number {i} " in long for i in range(12))
    assert any("number 11 " in w for w in windows)


def test_the_threshold_keeps_the_target_recall():
    risks = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.2])
    positive = np.array([True, True, True, True, False, False, True])
    # Five positives; 0.8 of them is four: the fourth highest positive risk is 0.6.
    assert crisis_model._threshold(risks, positive, 0.8) == pytest.approx(0.6)
    assert crisis_model._threshold(risks, positive, 1.0) == pytest.approx(0.2)


class _FakeClassifier:
    """Flags any text with "bridge" in it (a unit test of the combination only)."""

    rules_decide = False

    def check(self, texts):
        return [
            [crisis_model.Verdict(t, "suicide", 0.9, True, "an exemplar")] if "bridge" in t else []
            for t in texts
        ]


def test_with_both_layers_the_classifier_decides_and_rule_matches_are_reasons(monkeypatch):
    monkeypatch.setattr(crisis_model, "get_classifier", lambda: _FakeClassifier())
    negation, paraphrase = "I am not suicidal, just tired.", "I keep looking at the bridge."
    rules_only = crisis_gate.check([negation], layers=("rules",))
    assert rules_only.flagged and rules_only.categories == ("suicide",)
    both = crisis_gate.check([negation], layers=crisis_gate.LAYERS)
    assert not both.flagged and both.by_layer("rules")  # a reason, not a flag
    flagged = crisis_gate.check([negation, paraphrase], layers=crisis_gate.LAYERS)
    assert flagged.flagged and flagged.categories == ("suicide",)
    notes = flagged.notes("import gate")
    assert [r["layer"] for r in notes["reasons"]] == ["rules", "model"]
    assert notes["reasons"][1]["detail"] == "classifier 0.90; like “an exemplar”"
    with pytest.raises(ValueError):
        crisis_gate.check(["x"], layers=("oracle",))
    # Calibrated so that the rules keep a vote (they caught dev snippets the classifier missed).
    voting = _FakeClassifier()
    voting.rules_decide = True
    monkeypatch.setattr(crisis_model, "get_classifier", lambda: voting)
    assert crisis_gate.check([negation], layers=crisis_gate.LAYERS).flagged
