"""The dataset card of a release (README.md), its charts, and the changelog against the previous one."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from curation.models import Release
from curation.vocabulary import EXTES_STRATEGIES


def _digest(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def _fingerprints(release: Release) -> dict[int, tuple[str, str, str]]:
    """dialogue id -> (scene, digest of the texts, digest of the labels)."""
    from curation.releases import snapshots

    result = {}
    for _split, snap in snapshots(release):
        texts = [snap["description"], *[t["text"] for t in snap["turns"]]]
        labels = [t["strategy"] for t in snap["turns"]]
        result[snap["id"]] = (snap["scene"], _digest(texts), _digest(labels))
    return result


def changelog(release: Release) -> dict[str, Any] | None:
    previous = release.previous
    if previous is None:
        return None
    old, new = _fingerprints(previous), _fingerprints(release)
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


def statistics(release: Release) -> dict[str, Any]:
    from curation.releases import snapshots

    scenes: Counter[str] = Counter()
    strategies: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    teachers: Counter[str] = Counter()
    prompts: Counter[str] = Counter()
    rounds: Counter[str] = Counter()
    agree_sum = agree_n = teacher_same = teacher_n = 0
    supporter_turns = candidates = 0
    for _split, snap in snapshots(release):
        scenes[snap["scene"]] += 1
        origins[snap["origin"]] += 1
        provenance = snap.get("provenance") or {}
        if provenance.get("teacher"):
            teachers[
                f"{provenance['teacher'].get('backend')}:{provenance['teacher'].get('model')}"
            ] += 1
            prompts[provenance.get("prompt_version", "")] += 1
            rounds[str(provenance.get("round", ""))] += 1
        for turn in snap["turns"]:
            if turn["role"] != "supporter":
                continue
            supporter_turns += 1
            strategies[turn["strategy"] or "(none)"] += 1
            votes = snap.get("label_votes", {}).get(str(turn["index"]))
            if votes:
                total = sum(votes.values())
                if total >= 2:
                    agree_sum += max(votes.values()) / total
                    agree_n += 1
                teacher_n += 1
                teacher_same += turn["strategy"] == turn["teacher_strategy"]
        candidates += sum(1 for c in snap["candidates"] if c["acceptable"])
    return {
        "dialogues": sum(scenes.values()),
        "supporter_turns": supporter_turns,
        "dri_candidates": candidates,
        "scenarios": dict(scenes.most_common()),
        "strategies": dict(strategies.most_common()),
        "origins": dict(origins.most_common()),
        "teachers": dict(teachers.most_common()),
        "prompt_versions": dict(prompts.most_common()),
        "rounds": dict(sorted(rounds.items())),
        "label_agreement": round(agree_sum / agree_n, 3) if agree_n else None,
        "label_agreement_turns": agree_n,
        "teacher_agreement": round(teacher_same / teacher_n, 3) if teacher_n else None,
        "teacher_agreement_turns": teacher_n,
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


def write_card(release: Release, out: Path) -> dict[str, Any]:
    stats = statistics(release)
    changes = changelog(release)
    _charts(stats, out)
    (out / "stats.json").write_text(
        json.dumps({"statistics": stats, "changelog": changes}, indent=2, ensure_ascii=False) + "\n"
    )
    lines = [
        f"# {release.name}",
        "",
        "Emotional-support dialogues between a seeker and a supporter, every supporter turn labelled "
        "with a support strategy, curated by human annotators in ExTES Studio. Made by the method of "
        "Zheng et al. (ACL 2024): a teacher LLM writes dialogues from seed examples in rounds, and "
        "diverse replies for masked supporter turns (DRI); people accept, reject, relabel and rank them.",
        "",
        f"- Licence: **{release.licence}**. Check the provenance below before use: imported data keeps "
        "the licence of its source (ESConv: CC BY-NC 4.0).",
        f"- Checksum (sha256 of the frozen contents): `{release.checksum}`",
        f"- Selection: `{json.dumps(release.filters, sort_keys=True)}`",
        f"- Split (stratified by scenario, by a hash of the dialogue id): {release.split}",
        "",
        "## Counts",
        "",
        "| split | dialogues |",
        "|---|---|",
        *[f"| {s} | {release.counts.get(s, 0)} |" for s in ("train", "valid", "test")],
        "",
        f"{stats['supporter_turns']} supporter turns; {stats['dri_candidates']} DRI candidates "
        "ranked acceptable (one extra example each in `sft_dri/`).",
        "",
        "## Files",
        "",
        "- `extes.json`: the ExTES format (`scene`, `description`, `content`).",
        "- `sft/`, `sft_dri/`: chat `messages` for TRL and `datasets`, with `strategies` per assistant turn.",
        "- `dpo/`: `prompt`, `chosen`, `rejected` from rankings and edits.",
        "- `parquet/`: the same splits as Parquet; `esconv.jsonl`: the ESConv JSON Lines format.",
        "- `manifest.json`: every file with its size and sha256.",
        "",
        "## Scenarios",
        "",
        "![Dialogues per scenario](scenarios.png)",
        "",
        "| scenario | dialogues |",
        "|---|---|",
        *[f"| {name} | {n} |" for name, n in stats["scenarios"].items()],
        "",
        "## Strategies",
        "",
        "![Strategies against the ExTES shares](strategies.png)",
        "",
        "| strategy | turns |",
        "|---|---|",
        *[f"| {name} | {n} |" for name, n in stats["strategies"].items()],
        "",
        "## Agreement",
        "",
        f"- Annotators' label agreement (share agreeing with the majority, turns with 2+ labels): "
        f"{stats['label_agreement'] if stats['label_agreement'] is not None else 'n/a'} "
        f"over {stats['label_agreement_turns']} turns.",
        f"- Teacher vs final label: {stats['teacher_agreement'] if stats['teacher_agreement'] is not None else 'n/a'} "
        f"over {stats['teacher_agreement_turns']} labelled turns.",
        "",
        "## Provenance",
        "",
        f"- Origins: {stats['origins']}",
        f"- Teachers: {stats['teachers'] or 'none (seeds and imports only)'}",
        f"- Prompt versions: {stats['prompt_versions'] or 'none'}",
        f"- Generation rounds: {stats['rounds'] or 'none'}",
        "",
        "## Intended use, limits and safety",
        "",
        "For research on training and evaluating small emotional-support chatbots. Not a clinical "
        "resource: the supporter is not a therapist. Generated text can be repetitive or miss risk "
        "signals. Dialogues flagged for crisis or self-harm are left out unless a lead chose "
        "otherwise (see Selection). A model trained on this data must point people at risk to "
        "crisis services and must not give method detail.",
        "",
        "## Changes since the previous release",
        "",
    ]
    if changes is None:
        lines.append("This is the first release.")
    else:
        lines += [
            f"Against `{changes['previous']}`: {len(changes['added'])} added, "
            f"{len(changes['removed'])} removed, {len(changes['edited'])} edited, "
            f"{len(changes['relabelled'])} relabelled.",
            "",
            *[f"- {scene}: {delta:+d}" for scene, delta in changes["scenario_shift"].items()],
        ]
    if release.notes:
        lines += ["", "## Notes", "", release.notes]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"statistics": stats, "changelog": changes}
