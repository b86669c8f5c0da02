"""Gates against degenerate generated dialogues, each with its own failure class.

A teacher LLM writing a whole dialogue can fail in ways no reviewer should have to read:

``repetition``
    The text loops. Statistics in the manner of the Gopher quality rules (Rae et al. 2021,
    "Scaling Language Models", appendix A): for n = 2..4 the fraction of characters taken by the
    most frequent n-gram, for n = 5..10 the fraction of characters inside n-grams that occur more
    than once. Both are computed within each turn (long enough turns only) and across the whole
    dialogue (n-grams never span two turns, but are counted over all of them). Added for
    dialogues: a turn whose text (normalised) repeats an earlier turn's, and supporter turns that
    keep coming back to one phrase ("find your perfect path" in half of them).
``role_confusion``
    The two sides swap or merge: a role label inside a turn ("Supporter: ...", "AI: ..."), the
    seeker offering help or speaking in the supporter's reflective, validating voice, the
    supporter asking for help or thanking for support as a seeker would. Named patterns first;
    optionally, each seeker turn is compared by sentence embedding with written examples of
    supporter phrasing and of seeker phrasing, and flagged when it is much closer to the first.
``off_scenario``
    The dialogue is about another scenario than the one it is filed under: its embedding
    (``embeddings.dialogue_text``: the description and the turns, first 256 tokens) is compared
    with one centroid per scenario, built from reference dialogues of that scenario.

Each gate returns a human-readable reason naming the turn and the statistic, or None. The
thresholds are the fields of `Thresholds`; their defaults are calibrated so that at most 2% of
the seed dialogues and at most 2% of ESConv's dialogues are rejected (bench/degenerate_gates.py
prints the figures). The statistics are exposed (`repetition_statistics`,
`role_confusion_statistics`, `off_scenario_statistics`) so that the distributions can be
computed without thresholds.

What they cannot catch: repetition counts surface words only, so a supporter that says the
same thing in new words every turn passes, and a loop shorter than `loop_phrase_words` words
or in under half the supporter turns passes. Role confusion knows the phrasings its patterns
name; the embedding part adds lines close to its written examples, but sentence embeddings of
this model encode topic far more than voice, so a paraphrase in the supporter's voice that
shares no pattern is usually missed (measured: ESConv's own seeker turns reach similarity 0.74
with supporter-style examples). A supporter telling its own story as a seeker would is caught
only when it asks for help or thanks for support. Off scenario sees the first 256 tokens of the
dialogue (description and opening turns): a dialogue that drifts off later passes; and with
near-synonym scenarios and centroids from few dialogues its margin has to be wide, so only a
clear mismatch is rejected.

The repetition and role-confusion patterns are pure Python (2-4 ms together for a 30-turn
dialogue); only the optional embedding part of `role_confusion` and `off_scenario` call the
model. Nothing here imports Django.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from generation.embeddings import dialogue_text

Turn = tuple[str, str]  # (role, text); role is "seeker" or "supporter"
SEEKER = "seeker"
SUPPORTER = "supporter"
TOP_NS = (2, 3, 4)
DUP_NS = (5, 6, 7, 8, 9, 10)


class Embeds(Protocol):
    """What the gates need of `generation.embeddings.Embedder`: unit rows, one per text."""

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the three gates. A statistic above its limit (below, for the
    off-scenario similarities) rejects the dialogue.

    The calibration figures are those of bench/degenerate_gates.py on the 48 seed dialogues
    and on ESConv (1,300 dialogues; test split for off_scenario), with consecutive utterances of
    one speaker merged into one turn. "q99" is the 99th percentile of the statistic there.
    """

    # ---- repetition, within one turn -------------------------------------------------------
    # Turns with fewer words are not measured alone: in a short turn, one repeated pair of
    # words is already a large fraction (they are still counted in the dialogue-wide figures).
    # At 20 words the seeds' own turns reach 0.38 (dup 5-gram); at 30 they stay under 0.14.
    turn_min_words: int = 30
    # Fraction of a turn's characters taken by its most frequent 2-, 3-, 4-gram (one that occurs
    # at least twice). Gopher's document limits are 0.20 / 0.18 / 0.16; a turn is far shorter
    # than a document. Seeds max 0.14 / 0.13 / 0.00; ESConv q99 0.19 / 0.22 / 0.22, max 0.28 /
    # 0.27 / 0.32.
    turn_top_2gram: float = 0.35
    turn_top_3gram: float = 0.35
    turn_top_4gram: float = 0.35
    # Fraction of a turn's characters inside 5..10-grams that occur more than once in the turn
    # (every occurrence counted). Gopher's limits are 0.15 .. 0.10. Seeds: 0 for every n.
    # ESConv q99.5 0.36 / 0.34 / 0.25 / 0 / 0 / 0; its few turns above the limits say one
    # sentence twice. A looping turn scores near 1.0.
    turn_dup_5gram: float = 0.50
    turn_dup_6gram: float = 0.48
    turn_dup_7gram: float = 0.46
    turn_dup_8gram: float = 0.44
    turn_dup_9gram: float = 0.42
    turn_dup_10gram: float = 0.40

    # ---- repetition, across the dialogue ---------------------------------------------------
    # Dialogues with fewer words are not measured as a whole (Gopher, too, leaves out short
    # documents): in four turns of some 35 words, one phrase said twice is already 9-11% of the
    # text (real SmolLM2 dialogues of 2 exchanges). The seeds have 273 words or more. The
    # per-turn, repeated-turn and looping-supporter checks still apply to short dialogues.
    dialogue_min_words: int = 200
    # The same statistics over all turns together (an n-gram counted wherever it occurs).
    # Top n-gram: seeds max 0.03 / 0.04 / 0.02, ESConv max 0.06 / 0.05 / 0.06 (Gopher's
    # 0.20 / 0.18 / 0.16 would never fire on a dialogue). Duplicated n-grams: seeds max 0.04 ..
    # 0.00, ESConv q99.5 0.09 / 0.08 / 0.06 / 0.05 / 0.05 / 0.03, max 0.24 .. 0.21 (1 dialogue).
    dialogue_top_2gram: float = 0.10
    dialogue_top_3gram: float = 0.09
    dialogue_top_4gram: float = 0.08
    dialogue_dup_5gram: float = 0.25
    dialogue_dup_6gram: float = 0.24
    dialogue_dup_7gram: float = 0.23
    dialogue_dup_8gram: float = 0.22
    dialogue_dup_9gram: float = 0.21
    dialogue_dup_10gram: float = 0.20

    # ---- repetition, duplicate turns and looping supporter ---------------------------------
    # A turn whose normalised text (lower case, words only) equals an earlier turn's, when it
    # has at least this many words ("thank you" twice is normal), is a duplicate turn.
    duplicate_turn_min_words: int = 5
    # Duplicate turns a dialogue may hold. Seeds: none; ESConv: 1 dialogue (an 11-word turn).
    max_duplicate_turns: int = 0
    # A phrase of `loop_phrase_words` words found in at least `loop_min_turns` supporter turns
    # and in at least `loop_fraction` of them is a loop. Seeds: at most 2 turns, 0.29; ESConv:
    # at most 4 turns, 0.36 (3+ turns and 0.50: none).
    loop_phrase_words: int = 4
    loop_min_turns: int = 3
    loop_fraction: float = 0.5

    # ---- role confusion --------------------------------------------------------------------
    # Embedding part (only when an embedder is given): a seeker turn whose nearest
    # supporter-style example is at least `role_similarity` close (cosine) and closer than its
    # nearest seeker-style example by at least `role_margin` speaks as the supporter. Seeds'
    # seeker turns reach 0.51, ESConv's q99 0.66, max 0.74; with the margin, none of either is
    # flagged. Only lines close to the written examples are caught (see role_confusion).
    role_similarity: float = 0.65
    role_margin: float = 0.15

    # ---- off scenario ----------------------------------------------------------------------
    # Rejected when the dialogue's similarity to its own scenario's centroid is below the best
    # other scenario's by more than `scenario_margin`, or below `scenario_floor`. Best other
    # minus own: seeds (leave one out, 22 judged) max 0.33, near-synonym scenarios such as
    # "Communication Challenges" and "Conflicts or Communication Problems"; ESConv test (train
    # centroids per problem type) q99 0.21, max 0.26. Own similarity: seeds min 0.20, ESConv
    # test min 0.26; an off-topic dialogue (bread baking filed under pet loss) scores 0.05.
    scenario_margin: float = 0.35
    scenario_floor: float = 0.15


# ---- words and n-grams -------------------------------------------------------------------

_WORD = re.compile(r"[0-9a-z]+(?:'[0-9a-z]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits, inner apostrophes kept), punctuation dropped."""
    return _WORD.findall((text or "").lower().translate(_APOSTROPHES))


def _grams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(ws[i:] for i in range(n)), strict=False))


@dataclass(frozen=True)
class NgramStats:
    """Gopher-style repetition fractions of one text (or of a dialogue's turns together)."""

    words: int
    top: dict[int, float]  # n (2..4) -> fraction of characters in the most frequent n-gram
    dup: dict[int, float]  # n (5..10) -> fraction of characters inside repeated n-grams
    top_gram: dict[int, str] = field(default_factory=dict)  # n -> that most frequent n-gram


def _ngram_stats_all(
    texts: Sequence[list[str]], min_words: int = 0
) -> tuple[list[NgramStats], NgramStats]:
    """The fractions of each word list alone (zeros for lists under `min_words` words), and of
    all of them counted together (n-grams never span two lists), in one pass over the n-grams."""
    alone = [len(ws) >= min_words for ws in texts]
    lengths = [[len(w) for w in ws] for ws in texts]
    prefix = []
    for ls in lengths:
        acc = [0]
        for length in ls:
            acc.append(acc[-1] + length)
        prefix.append(acc)
    totals = [acc[-1] for acc in prefix]
    total = sum(totals)
    tops: list[dict[int, float]] = [{} for _ in texts]
    top_grams: list[dict[int, str]] = [{} for _ in texts]
    dups: list[dict[int, float]] = [{} for _ in texts]
    all_top: dict[int, float] = {}
    all_top_gram: dict[int, str] = {}
    all_dup: dict[int, float] = {}
    for n in (*TOP_NS, *DUP_NS):
        per_text = [list(zip(*(ws[i:] for i in range(n)), strict=False)) for ws in texts]
        empty: Counter[tuple[str, ...]] = Counter()
        per_counts = [Counter(g) if a else empty for g, a in zip(per_text, alone, strict=True)]
        counts = Counter(itertools.chain.from_iterable(per_text))
        repeats_across = len(counts) < sum(len(grams) for grams in per_text)
        if n in TOP_NS:
            for k, c in enumerate(per_counts):
                tops[k][n], shown = _top(c, totals[k]) if alone[k] else (0.0, "")
                if shown:
                    top_grams[k][n] = shown
            all_top[n], shown = _top(counts, total)
            if shown:
                all_top_gram[n] = shown
            continue
        covered_all = 0
        for k, grams in enumerate(per_text):
            if not grams:
                dups[k][n] = 0.0
                continue
            acc = prefix[k]
            mine = per_counts[k]
            covered = covered_all_here = 0
            end = end_all = 0
            if alone[k] and len(mine) < len(grams):  # something repeats within this text
                for i, gram in enumerate(grams):
                    if mine[gram] > 1:
                        covered += acc[i + n] - acc[i if i > end else end]
                        end = i + n
            if repeats_across:
                for i, gram in enumerate(grams):
                    if counts[gram] > 1:
                        covered_all_here += acc[i + n] - acc[i if i > end_all else end_all]
                        end_all = i + n
            dups[k][n] = covered / totals[k] if totals[k] else 0.0
            covered_all += covered_all_here
        all_dup[n] = covered_all / total if total else 0.0
    per = [NgramStats(len(ws), tops[k], dups[k], top_grams[k]) for k, ws in enumerate(texts)]
    return per, NgramStats(sum(len(ws) for ws in texts), all_top, all_dup, all_top_gram)


def _top(counts: Counter[tuple[str, ...]], total: int) -> tuple[float, str]:
    """Fraction of `total` characters in the most frequent n-gram (when it occurs twice or
    more), and that n-gram."""
    best = counts.most_common(1)
    if not best or best[0][1] < 2 or total == 0:
        return 0.0, ""
    gram, times = best[0]
    return min(1.0, times * sum(len(w) for w in gram) / total), " ".join(gram)


def _ngram_stats(texts: Sequence[list[str]]) -> NgramStats:
    """The fractions over several word lists counted together (n-grams never span two)."""
    return _ngram_stats_all(texts)[1]


def ngram_stats(text: str) -> NgramStats:
    """Repetition fractions of one text."""
    return _ngram_stats([words(text)])


# ---- repetition --------------------------------------------------------------------------


@dataclass(frozen=True)
class RepetitionStats:
    turns: list[NgramStats]  # one per turn, whatever its length
    dialogue: NgramStats
    duplicate_turns: list[tuple[int, int, int]]  # (turn, earlier turn it repeats, its words)
    loop_phrase: str  # the phrase found in the most supporter turns ("" when none repeats)
    loop_turns: list[int]  # the supporter turns holding it
    supporter_turns: int


def repetition_statistics(
    turns: Sequence[Turn],
    loop_phrase_words: int = Thresholds.loop_phrase_words,
    turn_min_words: int = 0,
) -> RepetitionStats:
    """Every repetition statistic of a dialogue, without thresholds. The fractions of a turn
    alone are left at 0 for turns under `turn_min_words` words (the gate does not look at them)."""
    tokenised = [words(text) for _, text in turns]
    per_turn, dialogue = _ngram_stats_all(tokenised, turn_min_words)
    seen: dict[str, int] = {}
    duplicates: list[tuple[int, int, int]] = []
    for index, ws in enumerate(tokenised):
        key = " ".join(ws)
        if not key:
            continue
        if key in seen:
            duplicates.append((index, seen[key], len(ws)))
        else:
            seen[key] = index
    holders: dict[tuple[str, ...], list[int]] = {}
    supporter_turns = 0
    for index, ((role, _), ws) in enumerate(zip(turns, tokenised, strict=True)):
        if role != SUPPORTER:
            continue
        supporter_turns += 1
        for gram in set(_grams(ws, loop_phrase_words)):
            holders.setdefault(gram, []).append(index)
    phrase, loop_turns = "", []
    if holders:
        gram, held = max(holders.items(), key=lambda item: (len(item[1]), -item[1][0]))
        if len(held) >= 2:
            phrase, loop_turns = " ".join(gram), held
    return RepetitionStats(per_turn, dialogue, duplicates, phrase, loop_turns, supporter_turns)


def _over(stats: NgramStats, t: Thresholds, scope: str) -> str | None:
    """The first statistic above its limit, described, or None."""
    for n in TOP_NS:
        limit = float(getattr(t, f"{scope}_top_{n}gram"))
        if stats.top[n] > limit:
            return (
                f"{stats.top[n]:.0%} of its characters are in its most frequent {n}-gram "
                f"(“{stats.top_gram.get(n, '')}”, limit {limit:.0%})"
            )
    for n in DUP_NS:
        limit = float(getattr(t, f"{scope}_dup_{n}gram"))
        if stats.dup[n] > limit:
            return (
                f"{stats.dup[n]:.0%} of its characters are in duplicated {n}-grams "
                f"(limit {limit:.0%})"
            )
    return None


def repetition(turns: Sequence[Turn], t: Thresholds) -> str | None:
    """Why the dialogue repeats itself, or None. Turn indices count from 0."""
    stats = repetition_statistics(turns, t.loop_phrase_words, t.turn_min_words)
    for index, turn in enumerate(stats.turns):
        if turn.words >= t.turn_min_words:
            why = _over(turn, t, "turn")
            if why:
                return f"turn {index} repeats itself: {why}"
    duplicates = [d for d in stats.duplicate_turns if d[2] >= t.duplicate_turn_min_words]
    if len(duplicates) > t.max_duplicate_turns:
        index, earlier, _ = duplicates[0]
        return (
            f"turn {index} repeats turn {earlier} word for word "
            f"({len(duplicates)} duplicate turns, limit {t.max_duplicate_turns})"
        )
    held = len(stats.loop_turns)
    if (
        held >= t.loop_min_turns
        and stats.supporter_turns
        and held / stats.supporter_turns >= t.loop_fraction
    ):
        return (
            f"the supporter loops on “{stats.loop_phrase}”: it is in {held} of "
            f"{stats.supporter_turns} supporter turns (turns "
            f"{', '.join(map(str, stats.loop_turns))}; limit {t.loop_fraction:.0%})"
        )
    if stats.dialogue.words >= t.dialogue_min_words:
        why = _over(stats.dialogue, t, "dialogue")
        if why:
            return f"the dialogue repeats itself: {why}"
    return None


# ---- role confusion ----------------------------------------------------------------------

# (what it shows, pattern) for seeker turns: the seeker speaking as the supporter.
_SEEKER_AS_SUPPORTER: tuple[tuple[str, str], ...] = (
    ("offers help", r"\bhow (?:can|may|could|might) i (?:help|support|assist) you\b"),
    (
        "offers help",
        r"\bi(?:'m| am) (?:here|happy|glad|always here) to (?:help|support|assist) you\b",
    ),
    ("offers help", r"\bi(?:'m| am) here (?:to listen|for you)\b(?! too)"),
    ("offers help", r"\b(?:let me|allow me to) (?:help|support|assist) you\b"),
    ("offers help", r"\bi(?:'d| would) (?:be happy|love|like) to (?:help|support|assist) you\b"),
    ("offers help", r"\bwhat (?:brings|brought) you here\b"),
    ("offers help", r"\bwhat would you like to (?:talk|chat) about\b"),
    (
        "offers help",
        r"\bis there anything (?:else )?i can (?:do for you|do to help you|help you with)\b",
    ),
    (
        "introduces itself as a helper",
        r"\bas your (?:supporter|therapist|counsell?or|coach|assistant|helper|listener)\b",
    ),
    (
        "introduces itself as a helper",
        r"(?:^|[.!?]\s*)as an? (?:supporter|therapist|counsell?or|coach|assistant|helper|listener)"
        r",? i\b",
    ),
    (
        "introduces itself as a helper",
        r"\bi(?:'m| am) (?:a|an|your) (?:(?:\w+ ){0,2})(?:coach|therapist|counsell?or|consultant"
        r"|supporter|assistant|ai|chatbot|listener)\b(?:[^.!?]{0,60})\b(?:help|support|assist|offer)",
    ),
    (
        "introduces itself as a helper",
        r"\bi(?:'m| am) (?:an ai|a chatbot|a language model|an assistant|your assistant)\b",
    ),
    (
        "validates the other side",
        r"\byour feelings are (?:completely |totally |perfectly )?(?:valid|understandable|normal)\b",
    ),
    (
        "validates the other side",
        r"\bit(?:'s| is) (?:completely |totally |perfectly )?(?:understandable|normal|okay|ok|natural)"
        r" (?:that you|for you to) feel\b",
    ),
    (
        "reflects the other side's feelings",
        r"\bit (?:sounds|seems) like you(?:'re| are) (?:feeling|going through|dealing with)\b",
    ),
    (
        "reflects the other side's feelings",
        r"\bthat must be (?:really |so )?(?:hard|difficult|tough) for you\b",
    ),
    ("reflects the other side's feelings", r"\bhow (?:does|did) that make you feel\b"),
    (
        "reflects the other side's feelings",
        r"\bthat sounds (?:\w+ )?(?:hard|difficult|draining|exhausting|painful|tough) for you\b",
    ),
    (
        "validates the other side",
        r"\b(?:it|that) (?:makes|would make) (?:a lot of |perfect |complete )?sense that you"
        r"(?:'d| would)? (?:feel|be)\b",
    ),
    (
        "validates the other side",
        r"\byou don't have to (?:carry|go through|face|deal with) (?:all )?(?:of )?(?:this|it|that)"
        r" (?:alone|on your own|by yourself)\b",
    ),
    ("validates the other side", r"\bthere(?:'s| is) nothing wrong with you\b"),
    (
        "validates the other side",
        r"\byou(?:'ve| have) been (?:really |so |very )?(?:brave|strong)\b",
    ),
    (
        "suggests as a supporter would",
        r"\bhave you (?:thought about|considered|tried) (?:talking|reaching out|speaking|leaning)\b",
    ),
    ("suggests as a supporter would", r"\bwhat do you think (?:might|would|could) help you\b"),
)
# For supporter turns: the supporter speaking as the seeker.
_SUPPORTER_AS_SEEKER: tuple[tuple[str, str], ...] = (
    (
        "asks for help",
        r"\b(?:can|could|would) you (?:please )?(?:help|support|advise) me\b(?! (?:to )?understand)",
    ),
    ("asks for help", r"\bi (?:really )?need (?:your|some) (?:help|advice|support)\b"),
    ("asks for help", r"\bwhat (?:should|do) i do\?"),
    (
        "thanks for support",
        r"\bthanks?(?: you)? (?:so much |very much |a lot )?for (?:listening(?! to (?:my|the) (?:suggestion|advice|idea))|being there for me"
        r"|your (?:help|support|advice)|helping me|the advice|supporting me)\b",
    ),
    ("thanks for support", r"\byou(?:'ve| have) (?:really )?helped me\b"),
)

# Each pattern with a word it cannot match without ("you"), to skip it cheaply.
_COMPILED: dict[str, tuple[tuple[str, re.Pattern[str], str], ...]] = {
    role: tuple((why, re.compile(p), "you" if "you" in p else "") for why, p in patterns)
    for role, patterns in ((SEEKER, _SEEKER_AS_SUPPORTER), (SUPPORTER, _SUPPORTER_AS_SEEKER))
}

# Role labels: the model writing both sides, or a label leaking into the text.
_SEEKER_LABELS = ("seeker", "user", "client", "human", "help-seeker")
_SUPPORTER_LABELS = ("supporter", "ai", "assistant", "therapist", "counselor", "counsellor", "bot")
_LABEL = re.compile(
    r"(?:^|[\n.!?\"]\s*|\s{2,})("
    + "|".join(map(re.escape, _SEEKER_LABELS + _SUPPORTER_LABELS))
    + r")\s*:",
    re.IGNORECASE,
)

# Written examples of the two voices, for the embedding part (the project's own wording).
SUPPORTER_STYLE: tuple[str, ...] = (
    "I'm here to listen and support you through this.",
    "How can I help you today?",
    "It sounds like you're feeling really overwhelmed right now.",
    "It seems like this has been weighing on you for a long time.",
    "Your feelings are completely valid.",
    "It's understandable that you would feel this way after everything.",
    "That must be so hard for you.",
    "Can you tell me more about what has been going on?",
    "Have you thought about talking to someone you trust about how you feel?",
    "You're not alone in this, and it's okay to ask for help.",
    "It's important to take care of yourself during this time.",
    "Let's think together about some steps you could take.",
    "Many people in your situation feel the same way.",
    "I can hear how much you care about them.",
    "What would help you feel a little more supported right now?",
    "I'm a coach and I'd love to help you find your way forward.",
    "I can tell how much pain you're carrying right now.",
    "It's completely understandable to feel overwhelmed by all of this.",
    "It takes a lot of courage to share what you're going through.",
    "You should be proud of how far you've come.",
    "What you're going through sounds really exhausting.",
    "I'm sorry you're dealing with this; nobody deserves to feel this way.",
)
SEEKER_STYLE: tuple[str, ...] = (
    "I've been feeling really down lately and I don't know what to do.",
    "I lost my job last month and I'm scared about money.",
    "My partner left me and I can't stop thinking about it.",
    "I just feel so alone and nobody seems to understand.",
    "Thank you, that really helps me a lot.",
    "I'm not sure, maybe I should try talking to her.",
    "Yes, that's exactly how I feel.",
    "I haven't been sleeping well because of the stress.",
    "I guess you're right, I'll think about it.",
    "I'm worried I'm going to fail my exams.",
    "My mom and I keep fighting about everything.",
    "Hi, I'm okay I guess, just a bit stressed.",
    "I feel like I'm failing at everything.",
    "I don't know, it's hard to explain.",
    # Seeker lines that share the supporter's topic words (support, advice, self-care): the
    # margin against these keeps thanks and agreement from looking like the supporter.
    "Thank you so much for listening and for your support.",
    "Take care, and thanks for chatting with me.",
    "Okay, I like that idea, I'll give it a try.",
    "Yes, I agree, that sounds like a good plan.",
    "What do you do when you feel overwhelmed like this?",
    "It feels good to finally talk to someone about it.",
    "Self care is something I need to work on.",
    "Yeah, it's been really hard.",
    "Has that worked for other people you've talked to?",
    "I have a hard time trusting people.",
)


@dataclass(frozen=True)
class RoleHit:
    turn: int
    role: str
    kind: str  # "label", a pattern's description, or "supporter-like phrasing"
    evidence: str  # the matched text or the nearest example
    similarity: float = 0.0  # embedding part only
    margin: float = 0.0


def _pattern_hits(turns: Sequence[Turn]) -> list[RoleHit]:
    hits: list[RoleHit] = []
    for index, (role, text) in enumerate(turns):
        own = _SEEKER_LABELS if role == SEEKER else _SUPPORTER_LABELS
        for match in _LABEL.finditer(text or ""):
            label = match.group(1).lower()
            at_start = match.start(1) == len(text) - len(text.lstrip())
            if at_start and label in own:
                continue  # the turn's own label in front of it
            hits.append(RoleHit(index, role, "label", f"{match.group(1)}:"))
            break
        if role not in _COMPILED:
            continue
        lowered = (text or "").lower().translate(_APOSTROPHES)
        for why, pattern, needs in _COMPILED[role]:
            if needs and needs not in lowered:
                continue
            found = pattern.search(lowered)
            if found:
                hits.append(RoleHit(index, role, why, found.group(0)))
                break
    return hits


_VOICES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _voices(embedder: Embeds) -> tuple[np.ndarray, np.ndarray]:
    key = id(embedder)
    if key not in _VOICES:
        _VOICES[key] = (
            embedder.embed(list(SUPPORTER_STYLE)),
            embedder.embed(list(SEEKER_STYLE)),
        )
    return _VOICES[key]


def voice_scores(texts: Sequence[str], embedder: Embeds) -> list[tuple[float, int, float]]:
    """For each text: (similarity to the nearest supporter-style example, that example's index,
    similarity to the nearest seeker-style example)."""
    if not texts:
        return []
    supporter, seeker = _voices(embedder)
    vectors = embedder.embed(list(texts))
    to_supporter = vectors @ supporter.T
    to_seeker = vectors @ seeker.T
    best = to_supporter.argmax(axis=1)
    return [
        (float(to_supporter[i, best[i]]), int(best[i]), float(to_seeker[i].max()))
        for i in range(len(texts))
    ]


def role_confusion_statistics(
    turns: Sequence[Turn], embedder: Embeds | None = None
) -> tuple[list[RoleHit], list[tuple[int, float, int, float]]]:
    """Pattern hits, and (when an embedder is given) for every seeker turn
    (turn, supporter-style similarity, nearest supporter example, seeker-style similarity)."""
    hits = _pattern_hits(turns)
    scores: list[tuple[int, float, int, float]] = []
    if embedder is not None:
        seeker_turns = [i for i, (role, text) in enumerate(turns) if role == SEEKER and text]
        for i, (sim, example, other) in zip(
            seeker_turns, voice_scores([turns[i][1] for i in seeker_turns], embedder), strict=True
        ):
            scores.append((i, sim, example, other))
    return hits, scores


def _describe(hit: RoleHit) -> str:
    other = SUPPORTER if hit.role == SEEKER else SEEKER
    if hit.kind == "label":
        return f"turn {hit.turn} ({hit.role}) holds a role label: “{hit.evidence}”"
    if hit.kind == "supporter-like phrasing":
        return (
            f"turn {hit.turn} (seeker) sounds like the supporter: closest to “{hit.evidence}” "
            f"(similarity {hit.similarity:.2f}, {hit.margin:.2f} above the nearest seeker-style "
            f"example)"
        )
    return f"turn {hit.turn} ({hit.role}) speaks as the {other}: it {hit.kind} (“{hit.evidence}”)"


def role_confusion(
    turns: Sequence[Turn], t: Thresholds, embedder: Embeds | None = None
) -> str | None:
    """Why one side speaks as the other, or None. Turn indices count from 0."""
    hits = _pattern_hits(turns)
    if hits:
        return _describe(hits[0])
    if embedder is None:
        return None
    for index, sim, example, other in role_confusion_statistics(turns, embedder)[1]:
        if sim >= t.role_similarity and sim - other >= t.role_margin:
            return _describe(
                RoleHit(
                    index,
                    SEEKER,
                    "supporter-like phrasing",
                    SUPPORTER_STYLE[example],
                    sim,
                    sim - other,
                )
            )
    return None


# ---- off scenario ------------------------------------------------------------------------


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def centroid(vectors: np.ndarray) -> np.ndarray:
    """The unit mean of unit rows."""
    return _unit(np.asarray(vectors, dtype=np.float32).mean(axis=0))


def centroids(texts_by_scenario: dict[str, list[str]], embedder: Embeds) -> dict[str, np.ndarray]:
    """One unit centroid per scenario with at least one text (dialogue_text of each dialogue)."""
    return {
        name: centroid(embedder.embed(list(texts)))
        for name, texts in texts_by_scenario.items()
        if texts
    }


def dialogue_vector(description: str, turns: Sequence[Turn], embedder: Embeds) -> np.ndarray:
    """The dialogue's embedding, as the centroids are made of (``embeddings.dialogue_text``)."""
    return embedder.embed([dialogue_text(description, [text for _, text in turns])])[0]


def off_scenario_statistics(
    vector: np.ndarray, scenario: str, centroids: dict[str, np.ndarray]
) -> tuple[float, str, float] | None:
    """(similarity to its own scenario's centroid, the closest other scenario, its similarity),
    or None when its scenario has no centroid or there is no other one."""
    if scenario not in centroids or len(centroids) < 2:
        return None
    own = float(np.dot(centroids[scenario], vector))
    best_name, best = "", -2.0
    for name, c in centroids.items():
        if name != scenario:
            sim = float(np.dot(c, vector))
            if sim > best:
                best_name, best = name, sim
    return own, best_name, best


def off_scenario_reason(
    stats: tuple[float, str, float] | None, scenario: str, t: Thresholds
) -> str | None:
    """The off-scenario verdict on precomputed statistics."""
    if stats is None:
        return None
    own, other, best = stats
    if best - own > t.scenario_margin:
        return (
            f"the dialogue is closer to “{other}” ({best:.2f}) than to its own scenario "
            f"“{scenario}” ({own:.2f}) by {best - own:.2f} (limit {t.scenario_margin:.2f})"
        )
    if own < t.scenario_floor:
        return (
            f"the dialogue is far from its own scenario “{scenario}”: similarity {own:.2f} "
            f"(floor {t.scenario_floor:.2f})"
        )
    return None


def off_scenario(
    description: str,
    turns: Sequence[Turn],
    scenario: str,
    centroids: dict[str, np.ndarray],
    t: Thresholds,
    embedder: Embeds,
) -> str | None:
    """Why the dialogue does not belong to `scenario`, or None (also when there are fewer than
    two centroids, or none for its scenario: nothing to compare)."""
    if scenario not in centroids or len(centroids) < 2:
        return None
    vector = dialogue_vector(description, turns, embedder)
    return off_scenario_reason(off_scenario_statistics(vector, scenario, centroids), scenario, t)
