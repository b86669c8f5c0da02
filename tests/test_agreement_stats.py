"""The agreement statistics, each figure checked against a small example worked out by hand."""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET

import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from curation.lead.agreement import (
    KAPPA_SCALE,
    MIN_ITEMS,
    TEACHER,
    Confusion,
    cohen_kappa,
    confusion,
    confusion_csv,
    describe_kappa,
    few_items,
    fleiss_kappa,
    humans_vs_teacher,
    kendall_tau,
    kendall_w,
    mean_pairwise_cohen,
    pairwise_cohen,
    per_category,
    percent_agreement,
    ranking_agreement,
)
from curation.lead.charts import heatmap
from curation.vocabulary import EXTES_STRATEGIES


def _from_table(rows: list[tuple[str, str, int]]) -> dict[str, dict[str, str | None]]:
    """Items rated by "ana" and "ben" from (ana's label, ben's label, how many items)."""
    items: dict[str, dict[str, str | None]] = {}
    for a, b, count in rows:
        for _ in range(count):
            items[f"i{len(items)}"] = {"ana": a, "ben": b}
    return items


# Ana (rows) against Ben (columns), 10 items, categories X, Y, Z:
#        X  Y  Z | row
#    X   3  1  0 |  4
#    Y   0  2  1 |  3
#    Z   1  0  2 |  3
#  col   4  3  3 | 10
# p_o = (3 + 2 + 2) / 10 = 0.7
# p_e = (4*4 + 3*3 + 3*3) / 100 = 0.34
# kappa = (0.7 - 0.34) / (1 - 0.34) = 0.36 / 0.66 = 6/11
THREE_BY_THREE = [
    ("X", "X", 3),
    ("X", "Y", 1),
    ("Y", "Y", 2),
    ("Y", "Z", 1),
    ("Z", "X", 1),
    ("Z", "Z", 2),
]


def test_cohen_kappa_matches_the_hand_computed_table():
    k = cohen_kappa(_from_table(THREE_BY_THREE), "ana", "ben")
    assert k.n == 10
    assert k.observed == pytest.approx(0.7)
    assert k.expected == pytest.approx(0.34)
    assert k.value == pytest.approx(6 / 11)
    assert k.description == "moderate"


def test_cohen_kappa_matches_scikit_learn_on_random_data():
    rng = random.Random(11)
    labels = ["X", "Y", "Z", "W"]
    for size in (5, 40, 300):
        first = [rng.choice(labels) for _ in range(size)]
        # The second rater agrees more often than chance, and uses the labels unevenly.
        second = [a if rng.random() < 0.5 else rng.choice(labels[:3]) for a in first]
        items = {
            f"i{k}": {"ana": a, "ben": b}
            for k, (a, b) in enumerate(zip(first, second, strict=True))
        }
        assert cohen_kappa(items, "ana", "ben").value == pytest.approx(
            cohen_kappa_score(first, second), abs=1e-12
        )


def test_cohen_kappa_uses_only_items_both_labelled():
    items = _from_table(THREE_BY_THREE)
    # Neither of these is a shared item: Ben's label is None, or Ben is absent. Cai does not matter.
    items["none"] = {"ana": "X", "ben": None, "cai": "X"}
    items["absent"] = {"ana": "Z", "cai": "Y"}
    k = cohen_kappa(items, "ana", "ben")
    assert (k.n, k.value) == (10, pytest.approx(6 / 11))


def test_cohen_kappa_restricted_to_labels_drops_items_with_other_labels():
    # Keeping X and Y leaves the cells XX 3, XY 1, YY 2 (n = 6; the Y-Z and Z-X items go):
    # p_o = 5/6; Ana X 4, Y 2; Ben X 3, Y 3; p_e = (4*3 + 2*3) / 36 = 1/2
    # kappa = (5/6 - 1/2) / (1/2) = 2/3
    k = cohen_kappa(_from_table(THREE_BY_THREE), "ana", "ben", labels={"X", "Y"})
    assert (k.n, k.value) == (6, pytest.approx(2 / 3))


def test_cohen_kappa_without_shared_items_is_undefined_with_n_zero():
    items = {"a": {"ana": "X"}, "b": {"ben": "X"}, "c": {"ana": None, "ben": "Y"}}
    k = cohen_kappa(items, "ana", "ben")
    assert (k.value, k.n, k.observed) == (None, 0, None)
    assert k.description == "undefined"


def test_cohen_kappa_with_a_single_category_is_undefined_but_keeps_n():
    # Both always say X: p_o = p_e = 1, kappa = 0/0.
    k = cohen_kappa(_from_table([("X", "X", 4)]), "ana", "ben")
    assert (k.value, k.n, k.observed, k.expected) == (None, 4, 1.0, 1.0)


def test_cohen_kappa_when_raters_never_share_a_category_is_zero():
    # Ana always X, Ben always Y: p_o = 0, p_e = 0, kappa = 0 (defined, two categories in play).
    k = cohen_kappa(_from_table([("X", "Y", 3)]), "ana", "ben")
    assert k.value == pytest.approx(0.0)


def test_pairwise_cohen_lists_pairs_with_shared_items_and_leaves_out_the_teacher():
    items = _from_table(THREE_BY_THREE)
    # Cai shares three items with Ana only; Dan shares nothing with anyone.
    # Ana-Cai: (X,X) (Y,Y) (Z,Y): p_o = 2/3; Ana X1 Y1 Z1, Cai X1 Y2;
    # p_e = (1*1 + 1*2 + 1*0) / 9 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 1/2
    items["c1"] = {"ana": "X", "cai": "X", TEACHER: "X"}
    items["c2"] = {"ana": "Y", "cai": "Y", TEACHER: "Z"}
    items["c3"] = {"ana": "Z", "cai": "Y"}
    items["d1"] = {"dan": "X", TEACHER: "X"}
    pairs = pairwise_cohen(items)
    assert [(p.a, p.b, p.n) for p in pairs] == [("ana", "ben", 10), ("ana", "cai", 3)]
    assert pairs[0].value == pytest.approx(6 / 11)
    assert pairs[1].value == pytest.approx(1 / 2)
    # Light's kappa: (6/11 + 1/2) / 2 = 23/44
    assert mean_pairwise_cohen(items) == pytest.approx(23 / 44)
    with_teacher = pairwise_cohen(items, ["ana", TEACHER])
    assert [(p.a, p.b, p.n) for p in with_teacher] == [("ana", TEACHER, 2)]


def test_mean_pairwise_cohen_is_none_when_no_pair_is_defined():
    assert mean_pairwise_cohen({"a": {"ana": "X", "ben": "X"}}) is None
    assert mean_pairwise_cohen({}) is None


# Fleiss (1971)'s table: 10 items, 14 raters each, 5 categories; counts per category.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _items_from_counts(table: list[list[int]]) -> dict[int, dict[str, str | None]]:
    items: dict[int, dict[str, str | None]] = {}
    for i, row in enumerate(table):
        labels = [f"c{j + 1}" for j, count in enumerate(row) for _ in range(count)]
        items[i] = {f"r{k:02d}": label for k, label in enumerate(labels)}
    return items


def test_fleiss_kappa_on_the_classic_table_by_hand_and_by_statsmodels():
    # Per item, sum_j r_ij (r_ij - 1): 182, 46, 56, 80, 60, 84, 44, 32, 52, 52 -> 688.
    # Each item has 14 * 13 = 182 ordered pairs, so P_o = 688 / 1820 = 172/455 ~ 0.37802.
    # Column totals 20, 28, 39, 21, 32 of 140 labels; sum of squares 4170,
    # P_e = 4170 / 140^2 = 417/1960 ~ 0.21276.
    # kappa = (172/455 - 417/1960) / (1 - 417/1960) = 4211/20059 ~ 0.20993
    k = fleiss_kappa(_items_from_counts(FLEISS_TABLE))
    assert k.n == 10
    assert k.observed == pytest.approx(172 / 455)
    assert k.expected == pytest.approx(417 / 1960)
    assert k.value == pytest.approx(4211 / 20059)
    assert k.value == pytest.approx(statsmodels_fleiss(FLEISS_TABLE))
    assert k.description == "fair"


def test_fleiss_kappa_matches_statsmodels_on_random_equal_rater_data():
    rng = random.Random(7)
    for raters in (2, 3, 5):
        table = []
        for _ in range(40):
            row = [0, 0, 0, 0]
            for _ in range(raters):
                # Skewed towards category 0 so that agreement is above chance.
                row[min(int(rng.expovariate(1.2)), 3)] += 1
            table.append(row)
        ours = fleiss_kappa(_items_from_counts(table)).value
        assert ours == pytest.approx(statsmodels_fleiss(table), abs=1e-12)


# Raters per item vary: 3, 2, 4 and 2 labels.
#   v1: A A A    -> pairs agreeing 3*2 / (3*2) = 1        shares A 1
#   v2: A B      -> 0 / 2 = 0                             shares A 1/2, B 1/2
#   v3: B B C C  -> (2*1 + 2*1) / (4*3) = 1/3             shares B 1/2, C 1/2
#   v4: C C      -> 2 / 2 = 1                             shares C 1
# v5 and v6 hold one label each and are left out.
# P_o = (1 + 0 + 1/3 + 1) / 4 = 7/12
# p_A = (1 + 1/2) / 4 = 3/8, p_B = (1/2 + 1/2) / 4 = 1/4, p_C = (1/2 + 1) / 4 = 3/8
# P_e = 9/64 + 4/64 + 9/64 = 11/32
# kappa = (7/12 - 11/32) / (21/32) = (23/96) * (32/21) = 23/63
VARIABLE = {
    "v1": {"ana": "A", "ben": "A", "cai": "A"},
    "v2": {"ana": "A", "dan": "B"},
    "v3": {"ana": "B", "ben": "B", "cai": "C", "dan": "C", TEACHER: "A"},
    "v4": {"ben": "C", "cai": "C", "dan": None},
    "v5": {"ana": "A", "ben": None},
    "v6": {"cai": "B", TEACHER: "B"},
}


def test_fleiss_kappa_with_variable_raters_per_item_by_hand():
    k = fleiss_kappa(VARIABLE)
    assert k.n == 4
    assert k.observed == pytest.approx(7 / 12)
    assert k.expected == pytest.approx(11 / 32)
    assert k.value == pytest.approx(23 / 63)


def test_fleiss_kappa_min_raters_and_naming_the_teacher():
    # min_raters=3 keeps v1 (P 1, A 1) and v3 (P 1/3, B 1/2 C 1/2):
    # P_o = 2/3; p_A = 1/2, p_B = p_C = 1/4; P_e = 1/4 + 1/16 + 1/16 = 3/8
    # kappa = (2/3 - 3/8) / (5/8) = (7/24) * (8/5) = 7/15
    k = fleiss_kappa(VARIABLE, min_raters=3)
    assert (k.n, k.value) == (2, pytest.approx(7 / 15))
    # With the teacher, v6 (B B) joins and v3 becomes B B C C A:
    # P per item: v1 1, v2 0, v3 (2 + 2) / 20 = 1/5, v4 1, v6 1 -> P_o = 16/25
    # p_A = (1 + 1/2 + 1/5) / 5 = 17/50, p_B = (1/2 + 2/5 + 1) / 5 = 19/50,
    # p_C = (2/5 + 1) / 5 = 14/50; P_e = (289 + 361 + 196) / 2500 = 846/2500
    # kappa = (1600/2500 - 846/2500) / (1654/2500) = 754/1654 = 377/827
    everyone = fleiss_kappa(VARIABLE, raters=["ana", "ben", "cai", "dan", TEACHER])
    assert (everyone.n, everyone.value) == (5, pytest.approx(377 / 827))
    with pytest.raises(ValueError):
        fleiss_kappa(VARIABLE, min_raters=1)


def test_fleiss_kappa_edge_cases():
    assert fleiss_kappa({}).n == 0
    assert fleiss_kappa({"a": {"ana": "X", "ben": None}}).value is None
    single = fleiss_kappa({"a": {"ana": "X", "ben": "X"}, "b": {"ana": "X", "cai": "X"}})
    assert (single.value, single.n, single.observed, single.expected) == (None, 2, 1.0, 1.0)


def test_per_category_on_the_variable_raters_example():
    # kappa_j = 1 - D_j / (p_j (1 - p_j)), D_j = mean over items of r (n - r) / (n (n - 1)):
    #   A: v2 1*1/2 -> D = (1/2) / 4 = 1/8; p q = 3/8 * 5/8 = 15/64; kappa = 1 - 8/15 = 7/15
    #   B: v2 1/2, v3 2*2/12 = 1/3 -> D = (5/6) / 4 = 5/24; p q = 3/16; kappa = 1 - 10/9 = -1/9
    #   C: v3 1/3 -> D = 1/12; p q = 15/64; kappa = 1 - 16/45 = 29/45
    # specific = sum r (r - 1) / sum r (n - 1):
    #   A: (6 + 0) / (6 + 1) = 6/7;  B: (0 + 2) / (1 + 6) = 2/7;  C: (2 + 2) / (6 + 2) = 1/2
    # support (labels over the four items): A 3 + 1 = 4, B 1 + 2 = 3, C 2 + 2 = 4
    cats = per_category(VARIABLE)
    assert list(cats) == ["A", "C", "B"]  # most used first, ties by name
    expected = {
        "A": (7 / 15, 6 / 7, 4, 3 / 8),
        "B": (-1 / 9, 2 / 7, 3, 1 / 4),
        "C": (29 / 45, 1 / 2, 4, 3 / 8),
    }
    for label, (kappa, specific, support, share) in expected.items():
        got = cats[label]
        assert got.label == label
        assert got.kappa == pytest.approx(kappa)
        assert got.specific == pytest.approx(specific)
        assert got.support == support
        assert got.share == pytest.approx(share)
    # Fleiss' kappa is the p q weighted mean of the category kappas:
    # (15/64 * 7/15 - 3/16 * 1/9 + 15/64 * 29/45) / (42/64) = (46/192) / (126/192) = 23/63
    spread = {j: c.share * (1 - c.share) for j, c in cats.items()}
    weighted = sum(spread[j] * (cats[j].kappa or 0.0) for j in cats) / sum(spread.values())
    assert weighted == pytest.approx(fleiss_kappa(VARIABLE).value)


def test_per_category_specific_agreement_for_two_raters_is_2a_over_2a_b_c():
    # From the 3x3 table, category X: a = 3 agreeing items, b + c = 1 + 1 one-sided -> 6/8.
    # Y: a = 2, b + c = 1 + 1 -> 4/6. Z: a = 2, b + c = 1 + 1 -> 4/6.
    cats = per_category(_from_table(THREE_BY_THREE))
    assert cats["X"].specific == pytest.approx(6 / 8)
    assert cats["Y"].specific == pytest.approx(4 / 6)
    assert cats["Z"].specific == pytest.approx(4 / 6)


def test_per_category_kappa_is_undefined_for_a_label_everyone_used():
    cats = per_category({"a": {"ana": "X", "ben": "X"}, "b": {"ana": "X", "ben": "X"}})
    assert cats["X"].kappa is None
    assert cats["X"].specific == 1.0
    assert per_category({"a": {"ana": "X"}}) == {}


# Teacher against the human majority:
#   t1 teacher A, humans A A      -> majority A
#   t2 teacher A, humans B B A    -> majority B
#   t3 teacher B, humans B        -> majority B
#   t4 teacher C, humans A C      -> tie, skipped
#   t5 teacher B, no humans       -> skipped, not a tie
#   t6 teacher C, humans C C      -> majority C
#   t7 no teacher                 -> skipped
TEACHER_ITEMS: dict[str, dict[str, str | None]] = {
    "t1": {TEACHER: "A", "h1": "A", "h2": "A"},
    "t2": {TEACHER: "A", "h1": "B", "h2": "B", "h3": "A"},
    "t3": {TEACHER: "B", "h1": "B", "h2": None},
    "t4": {TEACHER: "C", "h1": "A", "h2": "C"},
    "t5": {TEACHER: "B"},
    "t6": {TEACHER: "C", "h2": "C", "h3": "C"},
    "t7": {TEACHER: None, "h1": "A", "h2": "A"},
}


def test_humans_vs_teacher_by_hand():
    # Majority: pairs (A,A) (A,B) (B,B) (C,C), n = 4, p_o = 3/4.
    # Teacher A2 B1 C1, majority A1 B2 C1: p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16
    # kappa = (12/16 - 5/16) / (11/16) = 7/11
    # Per human:
    #   h1 on t1 t2 t3 t4: (A,A) (A,B) (B,B) (C,A): p_o 1/2; T A2 B1 C1, h1 A2 B2;
    #      p_e = (4 + 2) / 16 = 3/8; kappa = (1/2 - 3/8) / (5/8) = 1/5
    #   h2 on t1 t2 t4 t6: (A,A) (A,B) (C,C) (C,C): p_o 3/4; T A2 C2, h2 A1 B1 C2;
    #      p_e = (2 + 4) / 16 = 3/8; kappa = (3/4 - 3/8) / (5/8) = 3/5
    #   h3 on t2 t6: (A,A) (C,C): p_o 1, p_e 1/2, kappa 1
    # mean = (1/5 + 3/5 + 1) / 3 = 3/5
    k = humans_vs_teacher(TEACHER_ITEMS)
    assert (k.n, k.ties) == (4, 1)
    assert k.observed == pytest.approx(3 / 4)
    assert k.expected == pytest.approx(5 / 16)
    assert k.value == pytest.approx(7 / 11)
    assert [(p.a, p.b, p.n) for p in k.per_human] == [
        (TEACHER, "h1", 4),
        (TEACHER, "h2", 4),
        (TEACHER, "h3", 2),
    ]
    assert [p.value for p in k.per_human] == pytest.approx([1 / 5, 3 / 5, 1.0])
    assert k.mean_per_human == pytest.approx(3 / 5)


def test_humans_vs_teacher_min_humans():
    # Two humans at least: t3 (one human) goes, leaving (A,A) (A,B) (C,C):
    # p_o = 2/3; teacher A2 C1, majority A1 B1 C1; p_e = (2 + 1) / 9 = 1/3; kappa = 1/2
    k = humans_vs_teacher(TEACHER_ITEMS, min_humans=2)
    assert (k.n, k.ties, k.value) == (3, 1, pytest.approx(1 / 2))


def test_humans_vs_teacher_without_teacher_labels():
    k = humans_vs_teacher({"a": {"h1": "A", "h2": "B"}})
    assert (k.value, k.n, k.ties, k.per_human, k.mean_per_human) == (None, 0, 0, (), None)


def test_percent_agreement_by_hand():
    decisions = {
        "d1": {"ana": "accept", "ben": "accept", "cai": "accept"},  # 3 of 3 pairs agree
        "d2": {"ana": "accept", "ben": "reject"},  # 0 of 1
        "d3": {"ana": "reject", "ben": "reject", "cai": "accept"},  # 1 of 3
        "d4": {"ana": "accept"},  # one decision: left out
    }
    # all agree: d1 only -> 1/3; pairwise: (3 + 0 + 1) / (3 + 1 + 3) = 4/7
    result = percent_agreement(decisions)
    assert (result.n, result.pairs) == (3, 7)
    assert result.all_agree == pytest.approx(1 / 3)
    assert result.pairwise == pytest.approx(4 / 7)
    empty = percent_agreement({"d4": {"ana": "accept"}})
    assert (empty.all_agree, empty.pairwise, empty.n, empty.pairs) == (None, None, 0, 0)


def test_kendall_tau_b_with_a_tie_by_hand():
    a = {"p": 1, "q": 2, "r": 3, "s": 4, "only_a": 5}
    b = {"p": 1, "q": 1, "r": 3, "s": 2, "only_b": 1}
    # Shared p q r s; pairs: pq tied in b; pr, ps, qr, qs concordant; rs discordant (3<4, 3>2).
    # C = 4, D = 1, n0 = 6, ties in a n1 = 0, ties in b n2 = 1
    # tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)) = 3 / sqrt(30)
    assert kendall_tau(a, b) == pytest.approx(3 / math.sqrt(30))
    assert kendall_tau(b, a) == pytest.approx(3 / math.sqrt(30))
    assert kendall_tau({"p": 1, "q": 2}, {"q": 1, "p": 2}) == pytest.approx(-1.0)


def test_kendall_tau_is_none_without_two_shared_or_with_all_tied():
    assert kendall_tau({"p": 1, "q": 2}, {"p": 1, "r": 2}) is None
    assert kendall_tau({"p": 1, "q": 2, "r": 3}, {"p": 1, "q": 1, "r": 1}) is None


# Three raters, four candidates, no ties.
NO_TIES = [
    {"a": 1, "b": 2, "c": 3, "d": 4},
    {"a": 1, "b": 3, "c": 2, "d": 4},
    {"a": 2, "b": 1, "c": 3, "d": 4, "e": 5},  # e is not ranked by all: ignored
]


def test_kendall_w_without_ties_by_hand():
    # m = 3, n = 4; rank sums a 4, b 6, c 8, d 12; mean m (n + 1) / 2 = 7.5
    # S = 3.5^2 + 1.5^2 + 0.5^2 + 4.5^2 = 35
    # W = 12 S / (m^2 (n^3 - n)) = 420 / (9 * 60) = 7/9
    assert kendall_w(NO_TIES) == pytest.approx(7 / 9)
    # Without ties W = ((m - 1) mean Spearman rho + 1) / m; the pairs' rho: 0.8, 0.8, 0.4.
    rhos = [spearmanr([x[c] for c in "abcd"], [y[c] for c in "abcd"])[0] for x, y in [
        (NO_TIES[0], NO_TIES[1]), (NO_TIES[0], NO_TIES[2]), (NO_TIES[1], NO_TIES[2])
    ]]  # fmt: skip
    assert rhos == pytest.approx([0.8, 0.8, 0.4])
    assert kendall_w(NO_TIES) == pytest.approx((2 * sum(rhos) / 3 + 1) / 3)


def test_kendall_w_with_ties_by_hand():
    rankings = [
        {"a": 1, "b": 2, "c": 3, "d": 4},
        {"a": 1, "b": 1, "c": 2, "d": 3},  # dense ranks: re-ranked a 1.5, b 1.5, c 3, d 4
        {"a": 2, "b": 1, "c": 3, "d": 3},  # re-ranked a 2, b 1, c 3.5, d 3.5
    ]
    # Rank sums a 4.5, b 4.5, c 9.5, d 11.5 (total 30 = m n (n + 1) / 2); mean 7.5
    # S = 9 + 9 + 4 + 16 = 38; tie groups: one pair in each of two raters, T = 6 + 6 = 12
    # W = 12 * 38 / (9 * 60 - 3 * 12) = 456 / 504 = 19/21
    assert kendall_w(rankings) == pytest.approx(19 / 21)


def test_kendall_w_edge_cases():
    assert kendall_w([NO_TIES[0]]) is None
    assert kendall_w([{"a": 1, "b": 2}, {"a": 1, "c": 2}]) is None
    assert kendall_w([{"a": 1, "b": 1}, {"a": 2, "b": 2}]) is None
    # Two raters in full agreement, and in full reversal (W = (rho + 1) / 2 = 0).
    assert kendall_w([{"a": 1, "b": 2, "c": 3}] * 2) == pytest.approx(1.0)
    assert kendall_w([{"a": 1, "b": 2, "c": 3}, {"a": 3, "b": 2, "c": 1}]) == pytest.approx(0.0)


def test_ranking_agreement_averages_tau_over_pairs_and_w_over_groups_of_three():
    pair = [{"p": 1, "q": 2, "r": 3, "s": 4}, {"p": 1, "q": 1, "r": 3, "s": 2}]
    lonely = [{"p": 1, "q": 2}]
    all_tied = [{"p": 1, "q": 1}, {"p": 1, "q": 2}]  # tau undefined: counts as a group only
    # Taus in NO_TIES: rater 1 vs 2 swap b c -> (5 - 1) / 6 = 2/3; 1 vs 3 swap a b -> 2/3;
    # 2 vs 3: ab and bc discordant, the other four concordant -> (4 - 2) / 6 = 1/3.
    # With the pair's 3 / sqrt(30): mean over four pairs. W only from NO_TIES: 7/9.
    result = ranking_agreement([NO_TIES, pair, lonely, all_tied])
    assert (result.tau_pairs, result.w_groups, result.groups) == (4, 1, 3)
    assert result.mean_tau == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 3 / math.sqrt(30)) / 4)
    assert result.mean_w == pytest.approx(7 / 9)
    nothing = ranking_agreement([lonely])
    assert (nothing.mean_tau, nothing.mean_w, nothing.groups) == (None, None, 0)


CONFUSION_ITEMS: dict[str, dict[str, str | None]] = {
    "i1": {"h1": "A", "h2": "A", TEACHER: "B"},
    "i2": {"h1": "A", "h2": "B", TEACHER: "A"},
    "i3": {"h1": "B", "h2": None, "h3": "B", TEACHER: "B"},
}


def test_confusion_between_humans_is_symmetric():
    # Ordered pairs of humans: i1 (A,A) twice; i2 (A,B) and (B,A); i3 (B,B) twice.
    table = confusion(CONFUSION_ITEMS)
    assert table.labels == ("A", "B")
    assert table.matrix == [[2, 1], [1, 2]]
    assert (table.rows, table.columns, table.total, table.left_out) == ("humans", "humans", 6, 0)


def test_confusion_teacher_rows_against_human_columns():
    # i1: teacher B against A, A; i2: teacher A against A and B; i3: teacher B against B, B.
    table = confusion(CONFUSION_ITEMS, a_raters=[TEACHER])
    assert table.matrix == [[1, 1], [2, 2]]
    assert (table.rows, table.columns) == (TEACHER, "humans")


def test_confusion_with_given_labels_orders_pads_and_counts_the_rest():
    items = {**CONFUSION_ITEMS, "i4": {"h1": "D", "h2": "A"}}
    table = confusion(items, labels=["B", "A", "C"])
    assert table.labels == ("B", "A", "C")
    assert table.matrix == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert table.left_out == 2  # (D,A) and (A,D)


def test_confusion_csv():
    table = confusion(CONFUSION_ITEMS, a_raters=[TEACHER])
    assert confusion_csv(table) == "teacher \\ humans,A,B\nA,1,1\nB,2,2\n"


SVG = "{http://www.w3.org/2000/svg}"


def _sixteen_by_sixteen() -> Confusion:
    names = tuple(s.name for s in EXTES_STRATEGIES)
    assert len(names) == 16
    matrix = [[(7 * i + 3 * j) % 5 for j in range(16)] for i in range(16)]
    for i in range(16):
        matrix[i][i] = 100 + i
    return Confusion(names, matrix, TEACHER, "humans", 0)


def _svg(table: Confusion, title: str) -> str:
    return heatmap(table.labels, table.matrix, title, table.rows, table.columns)


def test_the_heatmap_is_svg_with_counts_and_rotated_column_labels():
    table = _sixteen_by_sixteen()
    root = ET.fromstring(_svg(table, "Teacher against humans"))
    cells = {g.get("data-cell"): g for g in root.iter(f"{SVG}g")}
    for i, row in enumerate(table.matrix):
        for j, count in enumerate(row):
            texts = [t.text for t in cells[f"{i}-{j}"].iter(f"{SVG}text")]
            assert texts == [str(count)]
    labels = [t for t in root.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    for name in table.labels:
        of_name = [t for t in labels if t.find(f"{SVG}title").text == name]
        # Once under the columns, turned 45 degrees; once beside the rows, level.
        turned = sorted(t.get("transform", "").startswith("rotate(-45 ") for t in of_name)
        assert turned == [False, True]
    shown = {t.text for t in root.iter(f"{SVG}text")}
    assert {"Teacher against humans", TEACHER, "humans", "pairs of labels", "115"} <= shown


def test_the_heatmap_is_deterministic_and_escapes_labels():
    table = _sixteen_by_sixteen()
    first = _svg(table, "Teacher against humans")
    assert _svg(table, "Teacher against humans") == first
    assert _svg(table, "Another title") != first
    odd = Confusion(("<b>&", "B"), [[1, 0], [0, 1]], "humans", "humans", 0)
    svg = _svg(odd, "<script>")
    assert "<b>" not in svg and "<script>" not in svg
    ET.fromstring(svg)


def test_the_heatmap_of_an_empty_table():
    texts = {t.text for t in ET.fromstring(_svg(confusion({}), "Nothing yet")).iter(f"{SVG}text")}
    assert {"Nothing yet", "no labelled pairs"} <= texts


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (None, "undefined"),
        (float("nan"), "undefined"),
        (-1.0, "worse than chance"),
        (-0.1, "worse than chance"),
        (0.0, "slight"),
        (0.2, "slight"),
        (0.21, "fair"),
        (0.4, "fair"),
        (0.5, "moderate"),
        (0.61, "substantial"),
        (0.8, "substantial"),
        (0.81, "almost perfect"),
        (1.0, "almost perfect"),
    ],
)
def test_describe_kappa_uses_the_landis_koch_bands(value, band):
    assert describe_kappa(value) == band


def test_one_scale_for_every_kappa_with_a_band_below_zero():
    assert [band.name for band in KAPPA_SCALE] == [
        "worse than chance",
        "slight",
        "fair",
        "moderate",
        "substantial",
        "almost perfect",
    ]
    assert KAPPA_SCALE[0].span == "< 0"
    # Every band the function gives is on the scale (the legend), and every band is reachable.
    values = [-1.0, -0.01, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    assert {describe_kappa(v) for v in values} == {band.name for band in KAPPA_SCALE}


def test_small_samples_are_flagged_and_rater_counts_kept():
    assert few_items(1) and few_items(MIN_ITEMS - 1) and not few_items(MIN_ITEMS)
    decisions = {"d1": {"ana": "accept", "ben": "reject"}, "d2": {"ana": "accept", "cy": None}}
    assert percent_agreement(decisions).raters == 2  # d2 has one decision: not counted
    groups = [[{"a": 1, "b": 2}, {"a": 2, "b": 1}], [{"a": 1, "b": 2}] * 3, [{"a": 1}]]
    assert ranking_agreement(groups).raters == (2, 3)
