"""The crisis gate's exemplar layer (generation.crisis_semantic), with a hand-made embedder: its
thresholds come from the bank alone, and a unit is flagged only when it is closer to a positive
exemplar than to every hard negative. The bank that ships is well formed."""

from __future__ import annotations

import numpy as np

from generation import crisis_semantic as cs

# Three directions: risk, look-alikes, everything else.
AXES = {"risk": [1.0, 0.0, 0.0], "idiom": [0.0, 1.0, 0.0], "plain": [0.0, 0.0, 1.0]}


class Embedder:
    """Each text points along the axis its first word names, with a little of the others."""

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            word = text.split()[0].lower().strip(".,")
            vector = np.array(AXES.get(word, AXES["plain"])) + 0.05
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows, dtype=np.float32)


BANK = [
    *({"text": f"risk {i}", "label": "suicide"} for i in range(5)),
    *({"text": f"risk harm {i}", "label": "self_harm"} for i in range(5)),
    *({"text": f"idiom {i}", "label": "none"} for i in range(5)),
    *({"text": f"plain {i}", "label": "none"} for i in range(5)),
]


def test_units_are_sentences_and_pairs_of_them() -> None:
    assert cs.units("One. Two! Three?") == ["One.", "Two!", "Three?", "One. Two!", "Two! Three?"]
    assert cs.units("") == []


def test_a_unit_near_a_positive_and_far_from_look_alikes_is_flagged() -> None:
    gate = cs.SemanticGate(Embedder(), BANK)
    assert 0 < gate.thresholds.similarity <= 1 and gate.thresholds.f2 == 1.0
    [[hit], none, also_none] = gate.check(["Risk again tonight.", "Idiom only.", "plain day"])
    assert hit.category in ("suicide", "self_harm") and hit.exemplar.startswith("risk")
    assert hit.similarity > hit.negative_similarity and "like “risk" in hit.reason()
    assert none == [] and also_none == []
    assert gate.check([]) == []


def test_calibration_keeps_the_pair_with_the_best_f2_on_the_bank() -> None:
    vectors = Embedder().embed([row["text"] for row in BANK])
    labels = np.array([row["label"] for row in BANK])
    chosen = cs.calibrate(vectors, labels)
    # The bank separates perfectly: the loosest such pair of the grid comes first.
    assert (chosen.similarity, chosen.margin, chosen.f2) == (float(cs.SIMILARITIES[0]), 0.0, 1.0)
    assert cs.flags(0.99, 0.10, chosen) and not cs.flags(0.2, 0.0, chosen)
    assert not cs.flags(0.5, 0.6, chosen)  # closer to a look-alike than to any positive


def test_the_shipped_bank_is_well_formed() -> None:
    bank = cs.read_bank()
    labels = [row["label"] for row in bank]
    assert all(labels.count(c) >= 60 for c in cs.CATEGORIES) and labels.count("none") >= 160
    assert len({row["text"] for row in bank}) == len(bank)
