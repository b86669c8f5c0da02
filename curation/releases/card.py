"""The dataset card of a release (README.md), its charts, and the changelog against the previous one.

Every value in the card that came from people or data (names, notes, scenarios, provenance) goes
through `literal`, which makes it plain Markdown text on one line; `card_html` renders the card
for the release's page with raw HTML off. Together, nothing a user typed can add HTML or Markdown
structure.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from markdown_it import MarkdownIt

from curation.lead.agreement import (
    KAPPA_SCALE,
    MIN_ITEMS,
    FleissTally,
    cohen_from_pairs,
    describe_kappa,
    few_items,
)
from curation.models import Release
from curation.releases.build import dri_candidates
from curation.vocabulary import EXTES_STRATEGIES

# Characters that start Markdown structure anywhere in a line (emphasis, code, links, images,
# raw HTML and autolinks, entities, table cells, strikethrough, headings), backslash-escaped;
# CommonMark allows a backslash before any ASCII punctuation.
_INLINE = re.compile(r"([\\`*_\[\]<>&|~#!])")
# What starts a block only at the start of a line: a list item ("-", "+", "1." or "1)") or a
# setext underline ("="); ">" and "#" are escaped above.
_BULLET = re.compile(r"^([-+=])")
_ORDERED = re.compile(r"^(\d+)([.)])")


def literal(value: Any) -> str:
    """`value` as literal Markdown text on one line: runs of whitespace, newlines included, become
    one space, and every character that could start Markdown structure is escaped."""
    flat = _INLINE.sub(r"\\\1", " ".join(str(value).split()))
    return _BULLET.sub(r"\\\1", _ORDERED.sub(r"\1\\\2", flat))


def _words(counts: Mapping[str, int]) -> str:
    """{"seed": 40, "generated": 8} as "seed 40, generated 8" (names escaped)."""
    return ", ".join(f"{literal(name)} {n}" for name, n in counts.items())


def _digest(value: Any) -> bytes:
    """Binary, not hex: a release's tally keeps two a dialogue (half the memory at 100,000)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).digest()


def _fingerprint(snap: dict[str, Any]) -> tuple[str, bytes, bytes]:
    """(scene, digest of the texts, digest of the labels) of one snapshot; the scene's name is
    interned, one string for all its dialogues."""
    texts = [snap["description"], *[t["text"] for t in snap["turns"]]]
    scene = sys.intern(snap["scene"])
    return scene, _digest(texts), _digest([t["strategy"] for t in snap["turns"]])


class Tally:
    """What the card says about a release, gathered while its files are written (one pass)."""

    def __init__(self, dri_policy: str = Release.DriPolicy.ACCEPTABLE) -> None:
        self.dri_policy = dri_policy
        self.dri_examples = 0  # the examples of sft_dri/: candidates the policy keeps
        self.scenes: Counter[str] = Counter()
        self.strategies: Counter[str] = Counter()
        self.origins: Counter[str] = Counter()
        self.teachers: Counter[str] = Counter()
        self.prompts: Counter[str] = Counter()
        self.rounds: Counter[str] = Counter()
        self.agree_sum = 0.0
        self.agree_n = self.teacher_same = self.teacher_n = 0
        self.supporter_turns = self.candidates = self.crisis_cleared = 0
        self.fingerprints: dict[int, tuple[str, bytes, bytes]] = {}
        self.fleiss = FleissTally()  # annotators' labels of turns with two or more
        # (teacher's label, final label) of supporter turns people labelled: Cohen's kappa.
        self.teacher_pairs: Counter[tuple[str, str]] = Counter()
        # DPO pairs by where they came from: rankings, rankings of a student's reply, edits.
        self.pairs: Counter[str] = Counter()

    def pair(self, pair: dict[str, Any]) -> None:
        origin = pair["id"].split("-")[1]
        self.pairs[{"rank": "rankings", "student": "student_rankings"}.get(origin, "edits")] += 1

    def add(self, snap: dict[str, Any]) -> None:
        self.fingerprints[snap["id"]] = _fingerprint(snap)
        self.scenes[snap["scene"]] += 1
        self.origins[snap["origin"]] += 1
        provenance = snap.get("provenance") or {}
        if provenance.get("teacher"):
            teacher = provenance["teacher"]
            self.teachers[f"{teacher.get('backend')}:{teacher.get('model')}"] += 1
            self.prompts[provenance.get("prompt_version", "")] += 1
            self.rounds[str(provenance.get("round", ""))] += 1
        for turn in snap["turns"]:
            if turn["role"] != "supporter":
                continue
            self.supporter_turns += 1
            self.strategies[turn["strategy"] or "(none)"] += 1
            votes = snap.get("label_votes", {}).get(str(turn["index"]))
            if votes:
                total = sum(votes.values())
                if total >= 2:
                    self.agree_sum += max(votes.values()) / total
                    self.agree_n += 1
                    self.fleiss.add(votes)
                self.teacher_n += 1
                self.teacher_same += turn["strategy"] == turn["teacher_strategy"]
                self.teacher_pairs[(turn["teacher_strategy"] or "", turn["strategy"] or "")] += 1
        self.candidates += sum(
            1 for c in snap["candidates"] if c["acceptable"] and c.get("author") != "student"
        )
        self.dri_examples += len(dri_candidates(snap, self.dri_policy))
        self.crisis_cleared += snap.get("safety_status") == "cleared"

    def fleiss_kappa(self) -> float | None:
        return self.fleiss.kappa().value

    def teacher_kappa(self) -> float | None:
        return cohen_from_pairs(self.teacher_pairs).value

    def statistics(self) -> dict[str, Any]:
        return {
            "dialogues": sum(self.scenes.values()),
            "supporter_turns": self.supporter_turns,
            "dri_candidates": self.candidates,
            "dri_policy": self.dri_policy,
            "dri_examples": self.dri_examples,
            "scenarios": dict(self.scenes.most_common()),
            "strategies": dict(self.strategies.most_common()),
            "origins": dict(self.origins.most_common()),
            "teachers": dict(self.teachers.most_common()),
            "prompt_versions": dict(self.prompts.most_common()),
            "rounds": dict(sorted(self.rounds.items())),
            "label_agreement": round(self.agree_sum / self.agree_n, 3) if self.agree_n else None,
            "label_agreement_turns": self.agree_n,
            "teacher_agreement": round(self.teacher_same / self.teacher_n, 3)
            if self.teacher_n
            else None,
            "teacher_agreement_turns": self.teacher_n,
            "fleiss_kappa": _rounded(self.fleiss_kappa()),
            "teacher_kappa": _rounded(self.teacher_kappa()),
            "crisis_cleared": self.crisis_cleared,
            "dpo_pairs": {k: self.pairs[k] for k in ("rankings", "student_rankings", "edits")},
        }


def _pairs(counts: dict[str, int] | None) -> str:
    if counts is None:  # a card of a release written before the counts were kept
        return "counts not recorded"
    return (
        f"{counts['rankings']} pairs from rankings of teacher replies, "
        f"{counts['student_rankings']} from rankings of a student's replies sent back to "
        f"annotators (its reply rejected), {counts['edits']} from edits"
    )


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def tally(release: Release) -> Tally:
    from curation.releases.build import FileOptions, dpo_pairs, snapshots

    result = Tally(release.dri_policy)
    options = FileOptions.from_dict(release.file_options)
    for _split, snap in snapshots(release):
        result.add(snap)
        for pair in dpo_pairs(snap, options):
            result.pair(pair)
    return result


def changelog(release: Release, current: Tally | None = None) -> dict[str, Any] | None:
    previous = release.previous
    if previous is None:
        return None
    old = tally(previous).fingerprints
    new = (current or tally(release)).fingerprints
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    common = sorted(new.keys() & old.keys())
    edited = [pk for pk in common if new[pk][1] != old[pk][1]]
    relabelled = [pk for pk in common if new[pk][2] != old[pk][2]]
    before = Counter(scene for scene, _, _ in old.values())
    after = Counter(scene for scene, _, _ in new.values())
    shift = {
        s: after[s] - before[s]
        for s in sorted(before.keys() | after.keys())
        if after[s] != before[s]
    }
    return {
        "previous": previous.name,
        "added": added,
        "removed": removed,
        "edited": edited,
        "relabelled": relabelled,
        "scenario_shift": shift,
    }


def _charts(stats: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = stats["scenarios"]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(scenes))))
    ax.barh(list(scenes)[::-1], list(scenes.values())[::-1], color="#2f6f5e")
    ax.set_xlabel("dialogues")
    ax.set_title("Dialogues per scenario")
    fig.tight_layout()
    fig.savefig(out / "scenarios.png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    names = [s.name for s in EXTES_STRATEGIES]
    total = sum(stats["strategies"].values()) or 1
    actual = [100 * stats["strategies"].get(n, 0) / total for n in names]
    target = [s.extes_share for s in EXTES_STRATEGIES]
    fig, ax = plt.subplots(figsize=(8, 6))
    rows = range(len(names))
    ax.barh([r + 0.2 for r in rows], actual, height=0.4, label="this release", color="#2f6f5e")
    ax.barh([r - 0.2 for r in rows], target, height=0.4, label="ExTES", color="#9ca3af")
    ax.set_yticks(list(rows), names)
    ax.invert_yaxis()
    ax.set_xlabel("% of labelled supporter turns")
    ax.legend()
    ax.set_title("Strategies")
    fig.tight_layout()
    fig.savefig(out / "strategies.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _kappa(value: float | None, n: int) -> str:
    """A kappa with its reading, and a warning when it rests on too few turns."""
    reading = f"{_or_na(value)} ({describe_kappa(value)})"
    if n and few_items(n):
        return f"{reading}; not reliable: fewer than {MIN_ITEMS} turns"
    return reading


def _shares(split: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {split.get(name, 0)}" for name in ("train", "valid", "test"))


def write_card(release: Release, out: Path, gathered: Tally | None = None) -> dict[str, Any]:
    from curation.releases.build import split_warnings

    policy = Release.DriPolicy(release.dri_policy)

    gathered = gathered or tally(release)
    stats = gathered.statistics()
    changes = changelog(release, gathered)
    _charts(stats, out)
    (out / "stats.json").write_text(
        json.dumps({"statistics": stats, "changelog": changes}, indent=2, ensure_ascii=False) + "\n"
    )
    lines = [
        f"# {literal(release.name)}",
        "",
        "Emotional-support dialogues between a seeker and a supporter, every supporter turn labelled "
        "with a support strategy, curated by human annotators in ExTES Studio. Made by the method of "
        "Zheng et al. (ACL 2024): a teacher LLM writes dialogues from seed examples in rounds, and "
        "diverse replies for masked supporter turns (DRI); people accept, reject, relabel and rank them.",
        "",
        f"- Licence: **{literal(release.licence)}**. Check the provenance below before use: imported data keeps "
        "the licence of its source (ESConv: CC BY-NC 4.0).",
        f"- Checksum (sha256 of the frozen contents): `{release.checksum}`",
        f"- Selection: {literal(release.selection)}.",
        f"- Split shares (stratified by scenario, by a hash of the dialogue id): "
        f"{_shares(release.split)}.",
        "",
        "## Counts",
        "",
        "| split | dialogues |",
        "|---|---|",
        *[f"| {s} | {release.counts.get(s, 0)} |" for s in ("train", "valid", "test")],
        "",
        *[f"**Warning: {warning}**\n" for warning in split_warnings(release.counts)],
        f"{stats['supporter_turns']} supporter turns; {stats['dri_candidates']} DRI candidates "
        "ranked acceptable.",
        "",
        f"DRI policy: `{policy.value}` ({policy.label.partition(': ')[2]}); "
        f"DRI examples in `sft_dri/`: {stats['dri_examples']}"
        + ("" if release.filters.get("dri", True) else " (DRI candidates were left out)")
        + ".",
        "",
        "## Files",
        "",
        "- `extes.json`: the ExTES format (`scene`, `description`, `content`).",
        "- `sft/`: the whole dialogues as chat `messages` for TRL and `datasets`, with "
        "`strategies` per assistant turn"
        + (
            "; assistant texts start with their strategy in brackets, e.g. `[Affirmation] …`."
            if release.file_options.get("strategy_tags")
            else "."
        ),
        "- `sft_dri/`: the DRI examples only, in TRL's conversational prompt-completion form: "
        "`prompt` is the chat up to a masked supporter turn, `completion` one reply for it (the "
        "loss goes on the completion alone). SFT + DRI is `sft/` and `sft_dri/` together.",
        "- `dpo/`: `prompt`, `chosen`, `rejected` from rankings and edits: "
        f"{_pairs(stats.get('dpo_pairs'))}.",
        "- `parquet/`: the same splits as Parquet; `esconv.jsonl`: the ESConv JSON Lines format.",
        "- `manifest.json`: every file with its size and sha256.",
        "",
        "## Scenarios",
        "",
        "![Dialogues per scenario](scenarios.png)",
        "",
        "| scenario | dialogues |",
        "|---|---|",
        *[f"| {literal(name)} | {n} |" for name, n in stats["scenarios"].items()],
        "",
        "## Strategies",
        "",
        "![Strategies against the ExTES shares](strategies.png)",
        "",
        "| strategy | turns |",
        "|---|---|",
        *[f"| {literal(name)} | {n} |" for name, n in stats["strategies"].items()],
        "",
        "## Agreement",
        "",
        f"- Annotators' label agreement (share agreeing with the majority, turns with 2+ labels): "
        f"{stats['label_agreement'] if stats['label_agreement'] is not None else 'n/a'} "
        f"over {stats['label_agreement_turns']} turns.",
        f"- Fleiss' kappa of annotators' strategy labels (turns with 2+ labels): "
        f"{_kappa(stats['fleiss_kappa'], stats['label_agreement_turns'])}, "
        f"over {stats['label_agreement_turns']} turns.",
        f"- Teacher vs final label: {_or_na(stats['teacher_agreement'])} agreement, Cohen's kappa "
        f"{_kappa(stats['teacher_kappa'], stats['teacher_agreement_turns'])}, "
        f"over {stats['teacher_agreement_turns']} labelled turns.",
        "- Kappas are read on the Landis & Koch scale: "
        + "; ".join(f"{band.span} {band.name}" for band in KAPPA_SCALE)
        + ".",
        "",
        "## Provenance",
        "",
        f"- Origins: {_words(stats['origins']) or 'none'}",
        f"- Teachers: {_words(stats['teachers']) or 'none (seeds and imports only)'}",
        f"- Prompt versions: {_words(stats['prompt_versions']) or 'none'}",
        f"- Generation rounds: {_words(stats['rounds']) or 'none'}",
        "",
        "## Intended use, limits and safety",
        "",
        "For research on training and evaluating small emotional-support chatbots. Not a clinical "
        "resource: the supporter is not a therapist. Generated text can be repetitive or miss risk "
        "signals. Dialogues flagged for crisis or self-harm are left out until a lead reads and "
        f"clears them: this release holds {stats['crisis_cleared']} cleared ones, and "
        f"{release.stats.get('crisis_left_out', 0)} flagged dialogues that matched the selection "
        "were left out (waiting for a lead, or excluded). A model trained on this data must "
        "point people at risk to crisis services and must not give method detail.",
        "",
        "## Changes since the previous release",
        "",
    ]
    if changes is None:
        lines.append("This is the first release.")
    else:
        lines += [
            f"Against {literal(changes['previous'])}: {len(changes['added'])} added, "
            f"{len(changes['removed'])} removed, {len(changes['edited'])} edited, "
            f"{len(changes['relabelled'])} relabelled.",
            "",
            *[
                f"- {literal(scene)}: {delta:+d}"
                for scene, delta in changes["scenario_shift"].items()
            ],
        ]
    if release.notes:
        lines += ["", "## Notes", "", literal(release.notes)]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"statistics": stats, "changelog": changes}


def card_html(markdown: str, files: Mapping[str, str]) -> str:
    """The card as HTML for the release's page, under the page's own title: raw HTML in the text
    stays text, the card's title is left out (the page has it), headings move one level down, and
    images show the release's own files (`files`: path in the release -> its URL); others are
    left out."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = renderer.parse(markdown)
    if tokens and tokens[0].type == "heading_open" and tokens[0].tag == "h1":
        tokens = tokens[3:]
    for token in tokens:
        if token.type in {"heading_open", "heading_close"}:
            token.tag = f"h{min(6, int(token.tag[1]) + 1)}"
        if token.type == "table_open":
            token.attrSet("class", "dialogues compact")  # the page's own table style
        for child in token.children or []:
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                if src in files:
                    child.attrSet("src", files[src])
                    child.attrSet("class", "chart")
                else:
                    child.type, child.content, child.children = "text", "", []
    return renderer.renderer.render(tokens, renderer.options, {})
