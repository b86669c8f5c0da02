"""How often the degenerate-dialogue gates (generation.degenerate) reject healthy dialogues, with
their default thresholds, and whether they catch hand-made degenerate ones.

    python bench/degenerate_gates.py [--limit N] [--no-embeddings]

Corpora, read in place (ESConv is never copied into the project):
    seeds   curation/seeds/seed_dialogues.json (48 ExTES-format dialogues)
    esconv  $EXTES_ESCONV_DIR/{train,valid,test}.txt (default ../shared/data/esconv beside the
            repository): 1,300 dialogues. Consecutive utterances of one speaker are merged into
            one turn; an utterance that repeats the previous one of the same speaker word for
            word (a double post) is dropped first, and counted.

Gates and how each is calibrated:
    repetition, role_confusion  every dialogue of both corpora
    off_scenario                seeds: leave one out (each seed is left out of its scenario's
                                centroid; a seed alone in its scenario has none and is not
                                judged); esconv: problem types as scenarios, centroids from
                                train.txt, evaluated on test.txt

Prints one line per gate and corpus:
    gate name=repetition corpus=seeds rejected=0 of=48 rate=0.000
then the quantiles of every statistic the gate compares with a threshold, up to 3 sample
reasons where something was rejected, the hand-made degenerate dialogues and whether each is
caught, and the time taken.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generation import degenerate  # noqa: E402
from generation.degenerate import Thresholds, Turn  # noqa: E402

QUANTILES = (0.5, 0.9, 0.99, 0.995, 1.0)
LOW = (0.0, 0.005, 0.01, 0.1, 0.5)  # for a statistic whose small values reject
_KEY = re.compile(r"[a-z0-9']+")


@dataclass
class Dialogue:
    scenario: str
    description: str
    turns: list[Turn]
    split: str = ""


@dataclass
class Corpus:
    name: str
    dialogues: list[Dialogue]
    notes: list[str] = field(default_factory=list)


# ---- corpora -----------------------------------------------------------------------------


def _text(value: object) -> str:
    """An ExTES utterance: a string, or (drift) an object holding the text under some key."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key, inner in value.items():
            if str(key).lower() in {"text", "response", "content", "utterance"}:
                return _text(inner)
    return ""


def read_seeds() -> Corpus:
    records = json.loads(
        (ROOT / "curation" / "seeds" / "seed_dialogues.json").read_text(encoding="utf-8")
    )
    dialogues = []
    for record in records:
        turns: list[Turn] = []
        for item in record["content"]:
            for key, role in (("User", "seeker"), ("AI", "supporter")):
                text = _text(item.get(key)).strip()
                if text:
                    turns.append((role, text))
        dialogues.append(Dialogue(record["scene"], record.get("description") or "", turns))
    return Corpus("seeds", dialogues)


def esconv_dir() -> Path:
    return Path(os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))


def merge_turns(utterances: Sequence[tuple[str, str]]) -> tuple[list[Turn], int]:
    """Consecutive utterances of one speaker as one turn, and how many double posts (the same
    words as the speaker's previous utterance) were dropped on the way."""
    turns: list[Turn] = []
    last_key = ""
    dropped = 0
    for role, raw in utterances:
        text = (raw or "").strip()
        if not text:
            continue
        key = " ".join(_KEY.findall(text.lower()))
        if turns and turns[-1][0] == role:
            if key == last_key:
                dropped += 1
                continue
            turns[-1] = (role, f"{turns[-1][1]} {text}")
        else:
            turns.append((role, text))
        last_key = key
    return turns, dropped


def read_esconv(folder: Path) -> Corpus:
    dialogues = []
    dropped = with_double_posts = 0
    for split in ("train", "valid", "test"):
        for line in (folder / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            turns, gone = merge_turns(
                [
                    ("seeker" if u["speaker"] == "usr" else "supporter", u["text"])
                    for u in record["dialog"]
                ]
            )
            dropped += gone
            with_double_posts += bool(gone)
            dialogues.append(
                Dialogue(
                    " ".join(record["problem_type"].lower().split()),
                    record.get("situation") or "",
                    turns,
                    split,
                )
            )
    note = (
        f"note corpus=esconv double_posts_dropped={dropped} "
        f"dialogues_with_double_posts={with_double_posts}"
    )
    return Corpus("esconv", dialogues, [note])


# ---- hand-made degenerate dialogues (the project's own wording) ---------------------------

LOOPING: list[Turn] = [
    ("seeker", "I finished my degree in May and I still have no idea what to do with it."),
    ("supporter", "That uncertainty is hard. Let's find your perfect path together."),
    ("seeker", "Everyone else seems to have a plan already."),
    ("supporter", "Comparing is natural, but you can find your perfect path in your own time."),
    ("seeker", "I applied to a few places and heard nothing back."),
    ("supporter", "Silence is discouraging. Keep going and you will find your perfect path."),
    ("seeker", "Maybe I picked the wrong major."),
    ("supporter", "Every major can lead somewhere. Trust that you will find your perfect path."),
]
ROLE_SWAPPED: list[Turn] = [
    ("supporter", "Hi there, what's on your mind today?"),
    (
        "seeker",
        "Hello! I'm Dana, a business coach, and I'm here to help you grow. "
        "How can I support you this week?",
    ),
    ("supporter", "I've been stressed about my shop's sales dropping."),
    ("seeker", "It sounds like you're feeling a lot of pressure. Your feelings are valid."),
]
LABEL_LEAK: list[Turn] = [
    ("seeker", "My sister stopped talking to me after the wedding."),
    (
        "supporter",
        "That sounds painful. Do you know what upset her? Seeker: I think it was my speech.",
    ),
]
OFF_TOPIC = Dialogue(
    "Dealing with the Loss of a Pet",
    "I want to learn to bake sourdough bread at home.",
    [
        ("seeker", "What flour should I use for a sourdough starter?"),
        ("supporter", "Whole wheat or rye flour gets a starter going faster than white flour."),
        ("seeker", "How often do I feed it?"),
        ("supporter", "Once or twice a day at room temperature, discarding half each time."),
        ("seeker", "And how long should the dough rise before baking?"),
        ("supporter", "Usually four to six hours, or overnight in the fridge for more flavour."),
    ],
)


# ---- figures -----------------------------------------------------------------------------


def quantile_line(
    gate: str,
    corpus: str,
    stat: str,
    values: Sequence[float],
    limit: str,
    quantiles: Sequence[float] = QUANTILES,
) -> str:
    if not values:
        return f"quantiles gate={gate} corpus={corpus} stat={stat} n=0"
    qs = np.quantile(np.asarray(values, dtype=float), quantiles)
    names = {0.0: "min", 1.0: "max"}
    parts = " ".join(
        f"{names.get(q, f'q{q * 100:g}')}={v:.3f}" for q, v in zip(quantiles, qs, strict=True)
    )
    return (
        f"quantiles gate={gate} corpus={corpus} stat={stat} n={len(values)} {parts} limit={limit}"
    )


def report(
    gate: str, corpus: str, reasons: Sequence[str | None], judged: int | None = None
) -> None:
    rejected = [r for r in reasons if r]
    of = len(reasons) if judged is None else judged
    print(
        f"gate name={gate} corpus={corpus} rejected={len(rejected)} of={of} "
        f"rate={len(rejected) / max(1, of):.3f}"
    )
    for reason in rejected[:3]:
        print(f"  sample gate={gate} corpus={corpus} reason={reason}")


def repetition_figures(corpus: Corpus, t: Thresholds) -> None:
    started = time.perf_counter()
    reasons = [degenerate.repetition(d.turns, t) for d in corpus.dialogues]
    ms = 1000 * (time.perf_counter() - started) / max(1, len(corpus.dialogues))
    report("repetition", corpus.name, reasons)
    stats = [
        degenerate.repetition_statistics(d.turns, t.loop_phrase_words) for d in corpus.dialogues
    ]
    for scope in ("turn", "dialogue"):
        for n in (*degenerate.TOP_NS, *degenerate.DUP_NS):
            kind = "top" if n in degenerate.TOP_NS else "dup"
            name = f"{scope}_{kind}_{n}gram"
            if scope == "turn":
                values = [
                    max(
                        [
                            (s.top if kind == "top" else s.dup)[n]
                            for s in st.turns
                            if s.words >= t.turn_min_words
                        ]
                        or [0.0]
                    )
                    for st in stats
                ]
            else:
                values = [
                    (st.dialogue.top if kind == "top" else st.dialogue.dup)[n] for st in stats
                ]
            print(
                quantile_line(
                    "repetition", corpus.name, name + "_max", values, f"{getattr(t, name):.2f}"
                )
            )
    duplicates = [
        sum(1 for d in st.duplicate_turns if d[2] >= t.duplicate_turn_min_words) for st in stats
    ]
    print(
        quantile_line(
            "repetition", corpus.name, "duplicate_turns", duplicates, str(t.max_duplicate_turns)
        )
    )
    loops = [len(st.loop_turns) / max(1, st.supporter_turns) for st in stats]
    print(
        quantile_line("repetition", corpus.name, "loop_fraction", loops, f"{t.loop_fraction:.2f}")
    )
    print(f"time gate=repetition corpus={corpus.name} ms_per_dialogue={ms:.2f}")


def role_figures(corpus: Corpus, t: Thresholds, embedder: degenerate.Embeds | None) -> None:
    started = time.perf_counter()
    patterns = [degenerate.role_confusion(d.turns, t) for d in corpus.dialogues]
    ms = 1000 * (time.perf_counter() - started) / max(1, len(corpus.dialogues))
    report("role_confusion_patterns", corpus.name, patterns)
    print(f"time gate=role_confusion_patterns corpus={corpus.name} ms_per_dialogue={ms:.2f}")
    if embedder is None:
        return
    started = time.perf_counter()
    # One embedding call for the whole corpus (the gate embeds one dialogue's turns at a time).
    index = [
        (k, i)
        for k, d in enumerate(corpus.dialogues)
        for i, (role, text) in enumerate(d.turns)
        if role == degenerate.SEEKER and text
    ]
    scores = degenerate.voice_scores([corpus.dialogues[k].turns[i][1] for k, i in index], embedder)
    seconds = time.perf_counter() - started
    best: dict[int, tuple[float, float]] = {}
    reasons: list[str | None] = list(patterns)
    for (k, i), (sim, example, other) in zip(index, scores, strict=True):
        margin = sim - other
        if sim > best.get(k, (-1.0, 0.0))[0]:
            best[k] = (sim, margin)
        if reasons[k] is None and sim >= t.role_similarity and margin >= t.role_margin:
            reasons[k] = (
                f"turn {i} (seeker) sounds like the supporter: closest to "
                f"“{degenerate.SUPPORTER_STYLE[example]}” (similarity {sim:.2f}, {margin:.2f} "
                f"above the nearest seeker-style example)"
            )
    report("role_confusion", corpus.name, reasons)
    sims = [best.get(k, (0.0, 0.0))[0] for k in range(len(corpus.dialogues))]
    margins = [best.get(k, (0.0, 0.0))[1] for k in range(len(corpus.dialogues))]
    similar = sum(1 for s, _, _ in scores if s >= t.role_similarity)
    print(
        quantile_line(
            "role_confusion",
            corpus.name,
            "seeker_supporter_similarity_max",
            sims,
            f"{t.role_similarity:.2f}",
        )
    )
    print(
        quantile_line(
            "role_confusion",
            corpus.name,
            "margin_of_that_turn",
            margins,
            f"{t.role_margin:.2f}",
        )
    )
    print(
        f"  note gate=role_confusion corpus={corpus.name} seeker_turns={len(scores)} "
        f"at_or_above_similarity={similar}"
    )
    print(
        f"time gate=role_confusion_embeddings corpus={corpus.name} "
        f"ms_per_dialogue={1000 * seconds / max(1, len(corpus.dialogues)):.1f}"
    )


def leakage_figures(corpus: Corpus) -> None:
    """The prompt_leakage gate: our instructions copied, or a template placeholder left in."""
    from generation import quality

    report(
        "prompt_leakage",
        corpus.name,
        [quality.leakage(d.description, [text for _, text in d.turns]) for d in corpus.dialogues],
    )


def _texts(dialogues: Sequence[Dialogue]) -> list[str]:
    from generation.embeddings import dialogue_text

    return [dialogue_text(d.description, [text for _, text in d.turns]) for d in dialogues]


def scenario_figures(
    corpus: str,
    judged: Sequence[Dialogue],
    vectors: np.ndarray,
    centroids_for: Callable[[int], dict[str, np.ndarray]],
    t: Thresholds,
) -> None:
    reasons: list[str | None] = []
    gaps: list[float] = []
    owns: list[float] = []
    count = 0
    for k, d in enumerate(judged):
        stats = degenerate.off_scenario_statistics(vectors[k], d.scenario, centroids_for(k))
        if stats is None:
            continue
        count += 1
        owns.append(stats[0])
        gaps.append(stats[2] - stats[0])
        reasons.append(degenerate.off_scenario_reason(stats, d.scenario, t))
    report("off_scenario", corpus, reasons, judged=count)
    if count < len(judged):
        print(
            f"  note gate=off_scenario corpus={corpus} not_judged={len(judged) - count} "
            f"(no other dialogue of their scenario to build its centroid)"
        )
    print(
        quantile_line(
            "off_scenario", corpus, "best_other_minus_own", gaps, f"{t.scenario_margin:.2f}"
        )
    )
    print(
        quantile_line(
            "off_scenario", corpus, "own_similarity", owns, f"{t.scenario_floor:.2f}", LOW
        )
    )


def seeds_off_scenario(seeds: Corpus, t: Thresholds, embedder: degenerate.Embeds) -> None:
    vectors = embedder.embed(_texts(seeds.dialogues))
    by_scenario: dict[str, list[int]] = {}
    for k, d in enumerate(seeds.dialogues):
        by_scenario.setdefault(d.scenario, []).append(k)

    def left_out(k: int) -> dict[str, np.ndarray]:
        own = seeds.dialogues[k].scenario
        out = {
            name: degenerate.centroid(vectors[ks])
            for name, ks in by_scenario.items()
            if name != own
        }
        rest = [j for j in by_scenario[own] if j != k]
        if rest:
            out[own] = degenerate.centroid(vectors[rest])
        return out

    scenario_figures("seeds", seeds.dialogues, vectors, left_out, t)


def esconv_off_scenario(esconv: Corpus, t: Thresholds, embedder: degenerate.Embeds) -> None:
    train = [d for d in esconv.dialogues if d.split == "train"]
    test = [d for d in esconv.dialogues if d.split == "test"]
    texts_by: dict[str, list[str]] = {}
    for d, text in zip(train, _texts(train), strict=True):
        texts_by.setdefault(d.scenario, []).append(text)
    cents = degenerate.centroids(texts_by, embedder)
    vectors = embedder.embed(_texts(test))
    scenario_figures("esconv_test", test, vectors, lambda _k: cents, t)


def handmade(t: Thresholds, embedder: degenerate.Embeds | None) -> None:
    cases: list[tuple[str, str, str | None]] = [
        ("looping_supporter", "repetition", degenerate.repetition(LOOPING, t)),
        ("seeker_as_business_coach", "role_confusion", degenerate.role_confusion(ROLE_SWAPPED, t)),
        ("label_inside_turn", "role_confusion", degenerate.role_confusion(LABEL_LEAK, t)),
    ]
    for name, gate, reason in cases:
        print(
            f"handmade case={name} gate={gate} caught={'yes' if reason else 'NO'} reason={reason}"
        )
    if embedder is None:
        return
    seeds = read_seeds()
    texts_by: dict[str, list[str]] = {}
    for d, text in zip(seeds.dialogues, _texts(seeds.dialogues), strict=True):
        texts_by.setdefault(d.scenario, []).append(text)
    cents = degenerate.centroids(texts_by, embedder)
    reason = degenerate.off_scenario(
        OFF_TOPIC.description, OFF_TOPIC.turns, OFF_TOPIC.scenario, cents, t, embedder
    )
    print(
        f"handmade case=bread_baking_filed_under_pet_loss gate=off_scenario "
        f"caught={'yes' if reason else 'NO'} reason={reason}"
    )


def main(limit: int | None, embeddings: bool) -> None:
    started = time.perf_counter()
    t = Thresholds()
    seeds = read_seeds()
    folder = esconv_dir()
    corpora = [seeds]
    if (folder / "train.txt").is_file():
        corpora.append(read_esconv(folder))
    else:
        print(f"note ESConv not found ({folder.name}/train.txt): seeds only")
    if limit:
        for corpus in corpora:
            corpus.dialogues = corpus.dialogues[:limit]
    for corpus in corpora:
        for note in corpus.notes:
            print(note)
    embedder = None
    if embeddings:
        from generation.embeddings import get_embedder

        embedder = get_embedder()
    for corpus in corpora:
        repetition_figures(corpus, t)
    for corpus in corpora:
        role_figures(corpus, t, embedder)
    for corpus in corpora:
        leakage_figures(corpus)
    if embedder is not None:
        seeds_off_scenario(seeds, t, embedder)
        if len(corpora) > 1:
            esconv_off_scenario(corpora[1], t, embedder)
    handmade(t, embedder)
    print(f"time total_seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many dialogues a corpus"
    )
    parser.add_argument(
        "--no-embeddings", action="store_true", help="patterns and repetition only (no model)"
    )
    args = parser.parse_args()
    main(args.limit, not args.no_embeddings)
