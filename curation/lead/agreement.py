"""Inter-annotator agreement: kappas for strategy labels, percent agreement for accept/reject,
Kendall's tau and W for candidate rankings, confusion tables. Plain data in, plain data out.

Labels come as `items`: item key (a turn) -> {rater name -> label}. A missing rater or a None label
means "not labelled" and is skipped; every other string, the empty one included, is a category.
The rater named `TEACHER` is the teacher model. Wherever a function takes `raters`, None means every
human rater found in the items (all but the teacher); name the teacher to bring it in.

Choices made where the textbooks differ:
- Fleiss' kappa with a varying number of raters per item is computed by hand, not by subsampling.
  Observed agreement is the mean over items of the share of agreeing ordered rater pairs within the
  item; chance agreement uses, for each category, the mean over items of its share of the item's
  labels. Both weigh items equally; with equal raters per item this is Fleiss (1971) exactly.
- Category kappa (`per_category`) is Fleiss' kappa_j, which equals Fleiss' kappa of the two-category
  table "this strategy" against "any other", computed the same way as above.
- A kappa whose chance agreement is 1 (every label in one category) is 0/0: its value is None.

Reading the figures: `KAPPA_SCALE` is the one scale every kappa is read on (`describe_kappa`), and
a figure computed on fewer than `MIN_ITEMS` items is flagged as not reliable (`few_items`).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

TEACHER = "teacher"
# Below this many items (turns, dialogues, ranked turns) a figure is shown with a warning: with so
# few items one disagreement moves a kappa by tenths, and a kappa's confidence interval spans
# several bands of the scale.
MIN_ITEMS = 30

Items = Mapping[Hashable, Mapping[str, str | None]]


@dataclass(frozen=True)
class Kappa:
    value: float | None  # None when undefined (no items, or a single category)
    n: int  # items the value rests on
    observed: float | None  # observed agreement p_o
    expected: float | None  # agreement expected by chance p_e

    @property
    def description(self) -> str:
        return describe_kappa(self.value)


@dataclass(frozen=True, kw_only=True)
class PairKappa(Kappa):
    a: str
    b: str


@dataclass(frozen=True, kw_only=True)
class TeacherKappa(Kappa):
    """Teacher against the human majority label; `per_human` holds the teacher against each human."""

    ties: int  # items skipped because the humans' top labels were tied
    per_human: tuple[PairKappa, ...]
    mean_per_human: float | None


@dataclass(frozen=True)
class CategoryAgreement:
    label: str
    kappa: float | None  # Fleiss' kappa_j (this label against the rest)
    specific: float | None  # proportion of specific (positive) agreement
    support: int  # labels with this category, over the items used
    share: float  # mean share of this category among an item's labels (p_j)


@dataclass(frozen=True)
class Agreement:
    all_agree: float | None  # share of items on which every rater decided the same
    pairwise: float | None  # share of agreeing pairs among all rater pairs on the same item
    n: int  # items with two or more decisions
    pairs: int
    raters: int = 0  # raters who decided one of those items


@dataclass(frozen=True)
class RankingAgreement:
    mean_tau: float | None  # mean Kendall tau-b over rater pairs within a group
    tau_pairs: int
    mean_w: float | None  # mean Kendall W over groups ranked by three or more raters
    w_groups: int
    groups: int  # groups with two or more rankings
    # The fewest and the most rankings of one of those groups (groups carry no rater names).
    raters: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Confusion:
    labels: tuple[str, ...]
    matrix: list[list[int]]  # matrix[row][column], in `labels` order
    rows: str  # who gave the row labels, for captions
    columns: str
    left_out: int  # pairs with a label outside `labels`

    @property
    def total(self) -> int:
        return sum(map(sum, self.matrix))


@dataclass(frozen=True)
class Band:
    upper: float  # the band holds values up to this one (the last band has no upper bound)
    span: str  # the values it holds, in words, for the legend
    name: str


# Landis & Koch (1977), with their "poor" band named for what it means. The bounds belong to the
# band below them: 0.2 is slight, 0.21 fair.
KAPPA_SCALE = (
    Band(0.0, "< 0", "worse than chance"),
    Band(0.2, "0-0.20", "slight"),
    Band(0.4, "0.21-0.40", "fair"),
    Band(0.6, "0.41-0.60", "moderate"),
    Band(0.8, "0.61-0.80", "substantial"),
    Band(math.inf, "0.81-1", "almost perfect"),
)


def describe_kappa(value: float | None) -> str:
    """The band of `KAPPA_SCALE` a kappa falls in; "undefined" for None or NaN."""
    if value is None or math.isnan(value):
        return "undefined"
    if value < 0:
        return KAPPA_SCALE[0].name
    return next(band.name for band in KAPPA_SCALE[1:] if value <= band.upper)


def few_items(n: int) -> bool:
    """Whether a figure computed on `n` items is too small a sample to be read (`MIN_ITEMS`)."""
    return n < MIN_ITEMS


def _chosen(items: Items, raters: Iterable[str] | None) -> list[str]:
    if raters is not None:
        return list(dict.fromkeys(raters))
    found = {r for ratings in items.values() for r, label in ratings.items() if label is not None}
    return sorted(found - {TEACHER})


def _tables(items: Items, raters: Iterable[str] | None, min_raters: int) -> list[Counter[str]]:
    """Label counts per item, for items with at least `min_raters` labels from `raters`."""
    if min_raters < 2:
        raise ValueError("agreement needs at least two raters per item")
    chosen = _chosen(items, raters)
    tables = []
    for ratings in items.values():
        counts = Counter(label for r in chosen if (label := ratings.get(r)) is not None)
        if counts.total() >= min_raters:
            tables.append(counts)
    return tables


def _cohen(first: Sequence[str], second: Sequence[str]) -> Kappa:
    return cohen_from_pairs(Counter(zip(first, second, strict=True)))


def cohen_from_pairs(pairs: Mapping[tuple[str, str], int]) -> Kappa:
    """Cohen's kappa from counts of (first rater's label, second rater's label): what a
    streaming tally can keep (the release card's teacher vs final label)."""
    n = sum(pairs.values())
    if n == 0:
        return Kappa(None, 0, None, None)
    observed = sum(c for (x, y), c in pairs.items() if x == y) / n
    count_a: Counter[str] = Counter()
    count_b: Counter[str] = Counter()
    for (x, y), c in pairs.items():
        count_a[x] += c
        count_b[y] += c
    expected = sum(count_a[k] * count_b[k] for k in count_a) / n**2
    if len(count_a.keys() | count_b.keys()) < 2:
        return Kappa(None, n, observed, expected)
    # (p_o - p_e) / (1 - p_e), from the tallies already made: the same figure as scikit-learn's
    # cohen_kappa_score on the expanded labels (tests/test_agreement_stats.py checks), without
    # its input validation, which cost 11 ms a pair and most of the agreement page at 40 people.
    return Kappa((observed - expected) / (1 - expected), n, observed, expected)


def cohen_kappa(items: Items, a: str, b: str, labels: Collection[str] | None = None) -> Kappa:
    """Cohen's kappa of raters a and b over the items both labelled. With `labels`, only items
    where both labels are among them count (n too)."""
    first: list[str] = []
    second: list[str] = []
    for ratings in items.values():
        la, lb = ratings.get(a), ratings.get(b)
        if la is None or lb is None:
            continue
        if labels is not None and (la not in labels or lb not in labels):
            continue
        first.append(la)
        second.append(lb)
    return _cohen(first, second)


def _pair(items: Items, a: str, b: str) -> PairKappa:
    k = cohen_kappa(items, a, b)
    return PairKappa(k.value, k.n, k.observed, k.expected, a=a, b=b)


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values; None when there are none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def pairwise_cohen(items: Items, raters: Iterable[str] | None = None) -> list[PairKappa]:
    """Cohen's kappa of every pair of raters that share at least one item.

    One pass over the items gathers each pair's shared labels, so many annotators each labelling
    a part of the data cost no more than a few.
    """
    chosen = _chosen(items, raters)
    order = {name: i for i, name in enumerate(chosen)}
    shared: defaultdict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(
        lambda: ([], [])
    )
    for ratings in items.values():
        present = sorted(
            ((r, label) for r, label in ratings.items() if r in order and label is not None),
            key=lambda rl: order[rl[0]],
        )
        for (a, la), (b, lb) in combinations(present, 2):
            first, second = shared[(a, b)]
            first.append(la)
            second.append(lb)
    result = []
    for a, b in combinations(chosen, 2):
        if (a, b) in shared:
            k = _cohen(*shared[(a, b)])
            result.append(PairKappa(k.value, k.n, k.observed, k.expected, a=a, b=b))
    return result


def mean_pairwise_cohen(items: Items, raters: Iterable[str] | None = None) -> float | None:
    """Light's kappa: the plain mean of the defined pairwise Cohen kappas."""
    return mean_kappa(pairwise_cohen(items, raters))


def mean_kappa(pairs: Iterable[PairKappa]) -> float | None:
    """Light's kappa of pairs already computed (pairwise_cohen)."""
    return _mean(p.value for p in pairs)


def fleiss_kappa(items: Items, min_raters: int = 2, raters: Iterable[str] | None = None) -> Kappa:
    """Fleiss' kappa over the items with at least `min_raters` labels, raters per item allowed to
    vary (see the module docstring). n is the number of items used."""
    fleiss = FleissTally()
    for counts in _tables(items, raters, min_raters):
        fleiss.add(counts)
    return fleiss.kappa()


class FleissTally:
    """Fleiss' kappa (varying raters per item) kept as running sums, one item's label counts at a
    time: the items need not be held in memory (the release card adds them as it streams)."""

    def __init__(self) -> None:
        self.items = 0
        self.agreeing = 0.0  # sum over items of the share of agreeing rater pairs
        self.shares: defaultdict[str, float] = defaultdict(float)  # per label, of its share

    def add(self, counts: Mapping[str, int]) -> None:
        """One item's counts per label; items with fewer than two labels are skipped."""
        m = sum(counts.values())
        if m < 2:
            return
        self.items += 1
        self.agreeing += sum(c * (c - 1) for c in counts.values()) / (m * (m - 1))
        for label, c in counts.items():
            self.shares[label] += c / m

    def kappa(self) -> Kappa:
        n = self.items
        if n == 0:
            return Kappa(None, 0, None, None)
        observed = self.agreeing / n
        expected = sum((share / n) ** 2 for share in self.shares.values())
        if len(self.shares) < 2:
            return Kappa(None, n, observed, expected)
        return Kappa((observed - expected) / (1 - expected), n, observed, expected)


def per_category(items: Items, raters: Iterable[str] | None = None) -> dict[str, CategoryAgreement]:
    """Agreement on each label over the items with two or more labels, most used first.

    For label j, with r_i of the n_i labels of item i being j and N items:
    - share p_j = mean_i r_i / n_i;
    - kappa_j = 1 - D_j / (p_j (1 - p_j)), D_j = mean_i r_i (n_i - r_i) / (n_i (n_i - 1)), which is
      Fleiss' kappa of "j" against "not j"; None when every or no label is j;
    - specific agreement = sum_i r_i (r_i - 1) / sum_i r_i (n_i - 1): given that one rater said j,
      how often another rater of the same item said j too (2a / (2a + b + c) for two raters).
    """
    tables = _tables(items, raters, 2)
    n = len(tables)
    labels = Counter[str]()
    for counts in tables:
        labels.update(counts)
    result = {}
    for label, support in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])):
        share = disagree = 0.0
        same = chances = 0
        for counts in tables:
            m, r = counts.total(), counts[label]
            share += r / m / n
            disagree += r * (m - r) / (m * (m - 1)) / n
            same += r * (r - 1)
            chances += r * (m - 1)
        spread = share * (1 - share)
        result[label] = CategoryAgreement(
            label=label,
            kappa=1 - disagree / spread if spread > 1e-12 else None,
            specific=same / chances if chances else None,
            support=support,
            share=share,
        )
    return result


def humans_vs_teacher(items: Items, min_humans: int = 1) -> TeacherKappa:
    """Cohen's kappa of the teacher's label against the humans' majority label, over the items
    with a teacher label and at least `min_humans` human labels. An item whose most frequent human
    labels are tied is skipped and counted in `ties`."""
    humans = _chosen(items, None)
    teacher: list[str] = []
    majority: list[str] = []
    ties = 0
    for ratings in items.values():
        own = ratings.get(TEACHER)
        counts = Counter(label for h in humans if (label := ratings.get(h)) is not None)
        if own is None or counts.total() < min_humans:
            continue
        top = counts.most_common(2)
        if len(top) == 2 and top[0][1] == top[1][1]:
            ties += 1
            continue
        teacher.append(own)
        majority.append(top[0][0])
    k = _cohen(teacher, majority)
    per_human = tuple(p for h in humans if (p := _pair(items, TEACHER, h)).n)
    return TeacherKappa(
        k.value,
        k.n,
        k.observed,
        k.expected,
        ties=ties,
        per_human=per_human,
        mean_per_human=_mean(p.value for p in per_human),
    )


def percent_agreement(decisions: Mapping[Hashable, Mapping[str, str]]) -> Agreement:
    """Raw agreement on per-dialogue decisions (accept/reject), over dialogues with two or more
    decisions. `pairwise` pools every pair of raters of the same dialogue, each pair counted once."""
    n = unanimous = pairs = agreeing = 0
    raters: set[str] = set()
    for given in decisions.values():
        values = [v for v in given.values() if v is not None]
        if len(values) < 2:
            continue
        n += 1
        raters.update(r for r, v in given.items() if v is not None)
        unanimous += len(set(values)) == 1
        for x, y in combinations(values, 2):
            pairs += 1
            agreeing += x == y
    return Agreement(
        all_agree=unanimous / n if n else None,
        pairwise=agreeing / pairs if pairs else None,
        n=n,
        pairs=pairs,
        raters=len(raters),
    )


def kendall_tau(rank_a: Mapping[str, float], rank_b: Mapping[str, float]) -> float | None:
    """Kendall's tau-b between two rankings (1 = best, ties allowed) of their shared candidates;
    None with fewer than two shared candidates or when one side ties them all."""
    shared = [c for c in rank_a if c in rank_b]
    x = [rank_a[c] for c in shared]
    y = [rank_b[c] for c in shared]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import kendalltau

    return float(kendalltau(x, y, variant="b").statistic)


def kendall_w(rankings: Sequence[Mapping[str, float]]) -> float | None:
    """Kendall's coefficient of concordance W, corrected for ties, of m >= 2 rankings over the
    candidates that all of them ranked.

    Each ranking is re-ranked 1..n over those candidates (ties get their mean rank). With R_j the
    rank sum of candidate j and t the sizes of each rater's tie groups:
    W = 12 S / (m^2 (n^3 - n) - m sum(t^3 - t)), S = sum_j (R_j - m (n + 1) / 2)^2.
    None with fewer than two shared candidates or when every rater ties them all.
    """
    if len(rankings) < 2:
        return None
    shared = sorted(set.intersection(*(set(r) for r in rankings)))
    m, n = len(rankings), len(shared)
    if n < 2:
        return None
    from scipy.stats import rankdata

    sums = [0.0] * n
    tie_term = 0
    for ranking in rankings:
        values = [ranking[c] for c in shared]
        for j, rank in enumerate(rankdata(values)):
            sums[j] += float(rank)
        tie_term += sum(t**3 - t for t in Counter(values).values())
    spread = sum((s - m * (n + 1) / 2) ** 2 for s in sums)
    denominator = m * m * (n**3 - n) - m * tie_term
    return 12 * spread / denominator if denominator else None


def ranking_agreement(groups: Iterable[Sequence[Mapping[str, float]]]) -> RankingAgreement:
    """Average agreement over groups, a group being the rankings of one turn's candidates by
    several raters: tau-b over every rater pair of a group, W over groups of three or more."""
    taus: list[float | None] = []
    ws: list[float | None] = []
    used = 0
    sizes: list[int] = []
    for group in groups:
        if len(group) < 2:
            continue
        used += 1
        sizes.append(len(group))
        taus += [kendall_tau(x, y) for x, y in combinations(group, 2)]
        if len(group) >= 3:
            ws.append(kendall_w(group))
    return RankingAgreement(
        mean_tau=_mean(taus),
        tau_pairs=sum(t is not None for t in taus),
        mean_w=_mean(ws),
        w_groups=sum(w is not None for w in ws),
        groups=used,
        raters=(min(sizes), max(sizes)) if sizes else (0, 0),
    )


def confusion(
    items: Items,
    a_raters: Iterable[str] | None = None,
    b_raters: Iterable[str] | None = None,
    labels: Sequence[str] | None = None,
) -> Confusion:
    """Counts of (row rater's label, column rater's label) over every ordered pair of two different
    raters on the same item, rows from `a_raters` and columns from `b_raters`.

    With the same set on both sides (the default: humans against humans) the table is symmetric:
    an agreeing pair adds 2 to its diagonal cell, a disagreeing pair 1 to each mirror cell.
    `confusion(items, a_raters=[TEACHER])` gives the teacher (rows) against each human (columns).
    Labels default to those seen, sorted; pairs with a label outside `labels` go to `left_out`.
    """
    rows, columns = _chosen(items, a_raters), _chosen(items, b_raters)
    pairs = Counter[tuple[str, str]]()
    for ratings in items.values():
        for ra in rows:
            if (la := ratings.get(ra)) is None:
                continue
            for rb in columns:
                if rb != ra and (lb := ratings.get(rb)) is not None:
                    pairs[la, lb] += 1
    order = tuple(labels) if labels is not None else tuple(sorted({x for p in pairs for x in p}))
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    left_out = 0
    for (la, lb), count in pairs.items():
        if la in index and lb in index:
            matrix[index[la]][index[lb]] += count
        else:
            left_out += count
    return Confusion(
        labels=order,
        matrix=matrix,
        rows="humans" if a_raters is None else ", ".join(rows),
        columns="humans" if b_raters is None else ", ".join(columns),
        left_out=left_out,
    )


def confusion_csv(table: Confusion) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f"{table.rows} \\ {table.columns}", *table.labels])
    for label, row in zip(table.labels, table.matrix, strict=True):
        writer.writerow([label, *row])
    return out.getvalue()
