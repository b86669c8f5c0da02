"""Releases: freeze the chosen dialogues, split them, and write every file a trainer wants.

A release is made in two steps. `create_release` snapshots each included dialogue as it is now
(text, final labels, acceptable DRI candidates, rankings, edits, provenance) and assigns its split;
after that, nothing done to the dialogues changes the release. `write_files` turns the snapshots
into files, streaming them in id order, so the same release always gives byte-identical files and
memory does not grow with its size.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from django.db import transaction
from django.db.models import QuerySet

from curation.models import (
    Candidate,
    Dialogue,
    Ranking,
    Release,
    ReleaseDialogue,
    Review,
    Strategy,
    Turn,
    TurnEdit,
    TurnLabel,
)

SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT = {"train": 80, "valid": 10, "test": 10}
SYSTEM_PROMPT = (
    "You are a warm, careful emotional-support listener. You listen first, reflect what you hear, "
    "never judge or diagnose, and gently point to crisis help when someone may be in danger."
)
CHUNK = 500


@dataclass
class Filters:
    statuses: list[str] = field(default_factory=lambda: [Dialogue.Status.ACCEPTED])
    scenarios: list[str] = field(default_factory=list)  # names; empty means all
    min_agreeing_reviews: int = 0  # submitted reviews whose decision matches the status
    include_crisis: bool = False  # crisis-flagged dialogues stay out unless asked for
    dri: bool = True  # include DRI candidates ranked acceptable


def select(filters: Filters) -> QuerySet[Dialogue]:
    dialogues = Dialogue.objects.filter(status__in=filters.statuses)
    if filters.scenarios:
        dialogues = dialogues.filter(scenario__name__in=filters.scenarios)
    if not filters.include_crisis:
        dialogues = dialogues.filter(crisis_flag=False)
    if filters.min_agreeing_reviews:
        agreeing = Review.objects.filter(
            submitted_at__isnull=False, decision=Review.Decision.ACCEPT
        )
        counts = Counter(agreeing.values_list("dialogue_id", flat=True))
        dialogues = dialogues.filter(
            pk__in=[pk for pk, n in counts.items() if n >= filters.min_agreeing_reviews]
        )
    return dialogues.order_by("id")


def assign_splits(by_scenario: dict[str, list[int]], shares: dict[str, int]) -> dict[int, str]:
    """Deterministic and stratified by scenario.

    Each scenario gets its share of valid and test places (largest remainders across scenarios, so
    the totals match the shares even when every scenario is small), and within a scenario the
    places go to dialogues in the order of a hash of their id.
    """
    total_share = sum(shares[s] for s in SPLITS)
    sizes = {name: len(ids) for name, ids in by_scenario.items()}
    total = sum(sizes.values())
    places: dict[str, dict[str, int]] = {name: {} for name in sizes}
    for split in ("valid", "test"):
        exact = {name: n * shares[split] / total_share for name, n in sizes.items()}
        given = {name: int(x) for name, x in exact.items()}
        spare = round(total * shares[split] / total_share) - sum(given.values())
        by_remainder = sorted(exact, key=lambda n: (given[n] - exact[n], _key(n)))
        for name in by_remainder[: max(0, spare)]:
            given[name] += 1
        for name in sizes:
            room = sizes[name] - sum(places[name].values())
            places[name][split] = min(given[name], room)
    result: dict[int, str] = {}
    for name, ids in by_scenario.items():
        ordered = sorted(ids, key=lambda pk: _key(f"dialogue-{pk}"))
        test_start = len(ordered) - places[name]["test"]
        valid_start = test_start - places[name]["valid"]
        for position, pk in enumerate(ordered):
            result[pk] = (
                "train" if position < valid_start else "valid" if position < test_start else "test"
            )
    return result


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_release(
    name: str,
    filters: Filters | None = None,
    split: dict[str, int] | None = None,
    *,
    licence: str = "CC BY-NC 4.0",
    notes: str = "",
    user: Any = None,
) -> Release:
    """The release row, still empty (status "building"); `freeze` fills it."""
    return Release.objects.create(
        name=name,
        licence=licence,
        notes=notes,
        filters=asdict(filters or Filters()),
        split=split or dict(DEFAULT_SPLIT),
        previous=Release.objects.filter(status=Release.Status.READY).order_by("-id").first(),
        created_by=user,
    )


def freeze(release: Release) -> None:
    """Snapshot the chosen dialogues into the release, in one transaction, and checksum them."""
    filters = Filters(**release.filters)
    with transaction.atomic():
        if release.items.exists():
            return
        by_scenario: dict[str, list[int]] = defaultdict(list)
        for pk, scenario in select(filters).values_list("pk", "scenario__name"):
            by_scenario[scenario].append(pk)
        splits = assign_splits(by_scenario, release.split)
        ids = sorted(splits)
        digest = hashlib.sha256()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            snapshots = _snapshots(chunk, include_dri=filters.dri)
            ReleaseDialogue.objects.bulk_create(
                ReleaseDialogue(
                    release=release, dialogue_id=pk, split=splits[pk], snapshot=snapshots[pk]
                )
                for pk in chunk
            )
            for pk in chunk:
                digest.update(_canonical([pk, splits[pk], snapshots[pk]]))
        release.checksum = digest.hexdigest()
        release.counts = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
        release.save(update_fields=["checksum", "counts"])


def create_release(name: str, *args: Any, **kwargs: Any) -> Release:
    """A frozen, ready release (the command line's way; the web builds it in a worker).
    Takes the arguments of `new_release`."""
    with transaction.atomic():
        release = new_release(name, *args, **kwargs)
        freeze(release)
        release.status = Release.Status.READY
        release.save(update_fields=["status"])
    return release


def _canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _snapshots(ids: list[int], include_dri: bool) -> dict[int, dict[str, Any]]:
    """The frozen form of each dialogue, built with a fixed number of queries per chunk."""
    dialogues = {d.pk: d for d in Dialogue.objects.filter(pk__in=ids).select_related("scenario")}
    # Plain rows, not model instances: a release reads every turn of every dialogue.
    turns: dict[int, list[_TurnRow]] = defaultdict(list)
    for row in (
        Turn.objects.filter(dialogue_id__in=ids)
        .order_by("dialogue_id", "index")
        .values_list("pk", "dialogue_id", "index", "role", "text", "strategy__name")
    ):
        turns[row[1]].append(_TurnRow(row[0], row[2], row[3], row[4], row[5]))
    votes: dict[int, Counter[str | None]] = defaultdict(Counter)
    for turn_id, name in TurnLabel.objects.filter(
        turn__dialogue_id__in=ids, review__submitted_at__isnull=False
    ).values_list("turn_id", "strategy__name"):
        votes[turn_id][name] += 1
    reviews = Counter(
        Review.objects.filter(dialogue_id__in=ids, submitted_at__isnull=False).values_list(
            "dialogue_id", flat=True
        )
    )
    candidates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    rankings: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if include_dri:
        ranked = defaultdict(list)
        for ranking in (
            Ranking.objects.filter(turn__dialogue_id__in=ids).select_related("turn").order_by("id")
        ):
            ranked[ranking.turn_id].append(ranking)
        for candidate in (
            Candidate.objects.filter(turn__dialogue_id__in=ids)
            .select_related("strategy", "turn")
            .order_by("id")
        ):
            of_turn = ranked.get(candidate.turn_id, [])
            key = f"c{candidate.pk}"
            # Acceptable: ranked by someone, and marked unacceptable by no one.
            acceptable = bool(of_turn) and not any(key in r.unacceptable for r in of_turn)
            candidates[candidate.turn.dialogue_id].append(
                {
                    "key": key,
                    "turn_index": candidate.turn.index,
                    "text": candidate.text,
                    "strategy": candidate.strategy.name if candidate.strategy else None,
                    "acceptable": acceptable,
                    "provenance": candidate.provenance,
                }
            )
        for turn_id, of_turn in ranked.items():
            for ranking in of_turn:
                rankings[ranking.turn.dialogue_id].append(
                    {
                        "turn_index": ranking.turn.index,
                        "original": f"t{turn_id}",
                        "order": ranking.order,
                        "unacceptable": ranking.unacceptable,
                    }
                )
    edits: dict[int, dict[int, dict[str, str]]] = defaultdict(dict)
    for edit in (
        TurnEdit.objects.filter(turn__dialogue_id__in=ids).select_related("turn").order_by("id")
    ):
        first = edits[edit.turn.dialogue_id].setdefault(edit.turn.index, {"before": edit.before})
        first["after"] = edit.after

    result = {}
    for pk in ids:
        dialogue = dialogues[pk]
        result[pk] = {
            "id": pk,
            "scene": dialogue.scenario.name,
            "description": dialogue.description,
            "origin": dialogue.origin,
            "source": dialogue.source_label,
            "provenance": dialogue.provenance,
            "reviews": reviews.get(pk, 0),
            "turns": [
                {
                    "index": t.index,
                    "role": t.role,
                    "text": t.text,
                    "strategy": _final_label(t.strategy, votes.get(t.pk))
                    if t.role == Turn.Role.SUPPORTER
                    else None,
                    "teacher_strategy": t.strategy,
                }
                for t in turns[pk]
            ],
            "candidates": candidates.get(pk, []),
            "rankings": rankings.get(pk, []),
            "edits": [{"turn_index": i, **e} for i, e in sorted(edits.get(pk, {}).items())],
            "label_votes": {
                str(t.index): {
                    name or "": n
                    for name, n in sorted(votes[t.pk].items(), key=lambda x: x[0] or "")
                }
                for t in turns[pk]
                if votes.get(t.pk)
            },
        }
    return result


@dataclass(frozen=True)
class _TurnRow:
    pk: int
    index: int
    role: str
    text: str
    strategy: str | None  # the teacher's (or importer's) label


def _final_label(teacher: str | None, votes: Counter[str | None] | None) -> str | None:
    """The annotators' majority label; on a tie, the teacher's label if it is among the tied."""
    if not votes:
        return teacher
    top = max(votes.values())
    tied = sorted((name for name, n in votes.items() if n == top), key=lambda n: n or "")
    return teacher if teacher in tied else tied[0]


# ---- files ----------------------------------------------------------------------------------


@dataclass
class FileOptions:
    strategy_tags: bool = False  # prefix assistant texts with "[Strategy] "
    dpo_pairs: str = "best_vs_rest"  # or "all_pairs"
    dpo_min_margin: float = 1.0  # all_pairs: minimum difference of mean rank


def snapshots(release: Release) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, snapshot) in dialogue id order, a chunk at a time."""
    items = release.items.order_by("dialogue_id").values_list("split", "snapshot")
    yield from items.iterator(chunk_size=CHUNK)


def write_files(
    release: Release,
    out: Path,
    options: FileOptions | None = None,
    progress: Callable[[int], None] = lambda percent: None,
) -> dict[str, Any]:
    """Write every file of the release into `out`; returns the manifest (also written)."""
    options = options or FileOptions()
    out.mkdir(parents=True, exist_ok=True)
    esconv_names = dict(
        Strategy.objects.filter(taxonomy="extes").values_list("name", "esconv_equivalent__name")
    )
    from curation.release_card import Tally, write_card

    total = max(1, release.items.count())
    gathered = Tally()
    with _Files(out) as files:
        files.open("extes.json").write("[")
        first = True
        for done, (split, snap) in enumerate(snapshots(release), start=1):
            gathered.add(snap)
            record = extes_record(snap)
            files["extes.json"].write(
                ("\n  " if first else ",\n  ")
                + json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")
            )
            first = False
            base = sft_example(snap, options.strategy_tags)
            files.line(f"sft/{split}.jsonl", base)
            files.line(f"sft_dri/{split}.jsonl", base)
            for example in dri_examples(snap, options.strategy_tags):
                files.line(f"sft_dri/{split}.jsonl", example)
            for pair in dpo_pairs(snap, options):
                files.line(f"dpo/{split}.jsonl", pair)
            files.line("esconv.jsonl", esconv_record(snap, esconv_names))
            if done % CHUNK == 0:
                progress(min(99, 100 * done // total))
        files["extes.json"].write("\n]\n" if not first else "]\n")
        for split in SPLITS:  # every split file exists, even when empty
            for folder in ("sft", "sft_dri", "dpo"):
                files.open(f"{folder}/{split}.jsonl")
    progress(90)
    write_parquet(out)
    write_card(release, out, gathered)
    manifest = _manifest(release, out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    progress(100)
    return manifest


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    sft = pa.schema(
        [
            ("messages", message),
            ("strategies", pa.list_(pa.string())),
            ("scenario", pa.string()),
            ("id", pa.string()),
            ("source", pa.string()),
        ]
    )
    dpo = pa.schema(
        [
            ("prompt", message),
            ("chosen", message),
            ("rejected", message),
            ("scenario", pa.string()),
            ("id", pa.string()),
        ]
    )
    return {"sft": sft, "sft_dri": sft, "dpo": dpo}


def write_parquet(out: Path, batch: int = 2000) -> None:
    """parquet/<kind>/<split>.parquet from the JSON Lines files, a batch of rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for kind, schema in _schemas().items():
        for split in SPLITS:
            target = out / "parquet" / kind / f"{split}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            with (
                pq.ParquetWriter(target, schema) as writer,
                (out / kind / f"{split}.jsonl").open(encoding="utf-8") as rows,
            ):
                chunk: list[dict[str, Any]] = []
                for line in rows:
                    chunk.append(json.loads(line))
                    if len(chunk) >= batch:
                        writer.write_table(pa.Table.from_pylist(chunk, schema))
                        chunk = []
                writer.write_table(pa.Table.from_pylist(chunk, schema))


class _Files:
    """Output files opened on first use and all closed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handles: dict[str, IO[str]] = {}

    def open(self, name: str) -> IO[str]:
        if name not in self.handles:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles[name] = path.open("w", encoding="utf-8", newline="\n")
        return self.handles[name]

    def __getitem__(self, name: str) -> IO[str]:
        return self.handles[name]

    def line(self, name: str, value: dict[str, Any]) -> None:
        self.open(name).write(json.dumps(value, ensure_ascii=False) + "\n")

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles.values():
            handle.close()


def _manifest(release: Release, out: Path) -> dict[str, Any]:
    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files.append(
            {
                "path": path.relative_to(out).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": digest.hexdigest(),
            }
        )
    return {
        "release": release.name,
        "checksum": release.checksum,
        "licence": release.licence,
        "counts": release.counts,
        "split": release.split,
        "files": files,
    }


def extes_record(snap: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, str]] = []
    for turn in snap["turns"]:
        if turn["role"] == "seeker":
            content.append({"User": turn["text"]})
        else:
            content.append({"AI Strategy": turn["strategy"] or "", "AI": turn["text"]})
    return {"scene": snap["scene"], "description": snap["description"], "content": content}


def _messages(turns: list[dict[str, Any]], tags: bool) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn in turns:
        if turn["role"] == "seeker":
            messages.append({"role": "user", "content": turn["text"]})
        else:
            messages.append(
                {"role": "assistant", "content": _tagged(turn["text"], turn["strategy"], tags)}
            )
    return messages


def _tagged(text: str, strategy: str | None, tags: bool) -> str:
    return f"[{strategy or 'Others'}] {text}" if tags else text


def sft_example(snap: dict[str, Any], tags: bool = False) -> dict[str, Any]:
    return {
        "messages": _messages(snap["turns"], tags),
        "strategies": [t["strategy"] for t in snap["turns"] if t["role"] == "supporter"],
        "scenario": snap["scene"],
        "id": str(snap["id"]),
        "source": "dialogue",
    }


def dri_examples(snap: dict[str, Any], tags: bool = False) -> Iterator[dict[str, Any]]:
    """One example per acceptable candidate: the context up to the masked turn, then the candidate."""
    for candidate in snap["candidates"]:
        if not candidate["acceptable"]:
            continue
        context = [t for t in snap["turns"] if t["index"] < candidate["turn_index"]]
        messages = _messages(context, tags)
        messages.append(
            {
                "role": "assistant",
                "content": _tagged(candidate["text"], candidate["strategy"], tags),
            }
        )
        yield {
            "messages": messages,
            "strategies": [candidate["strategy"]],
            "scenario": snap["scene"],
            "id": f"{snap['id']}-{candidate['key']}",
            "source": "dri",
        }


def dpo_pairs(snap: dict[str, Any], options: FileOptions) -> Iterator[dict[str, Any]]:
    """Preference pairs from rankings (annotators combined by mean rank; ties never pair) and
    from edits (the edited text is chosen over the original)."""
    texts = {c["key"]: c["text"] for c in snap["candidates"]}
    by_turn: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ranking in snap["rankings"]:
        by_turn[ranking["turn_index"]].append(ranking)
    edits = {e["turn_index"]: e for e in snap["edits"]}
    for turn in snap["turns"]:
        if turn["role"] != "supporter":
            continue
        prompt = _messages([t for t in snap["turns"] if t["index"] < turn["index"]], False)
        rankings = by_turn.get(turn["index"], [])
        if rankings:
            original = rankings[0]["original"]
            texts[original] = edits.get(turn["index"], {}).get("before", turn["text"])
            for better, worse in rank_pairs(rankings, options):
                if better in texts and worse in texts:
                    yield _pair(prompt, texts[better], texts[worse], snap, f"rank-{turn['index']}")
        edit = edits.get(turn["index"])
        if edit and edit["before"].strip() != edit["after"].strip():
            yield _pair(prompt, edit["after"], edit["before"], snap, f"edit-{turn['index']}")


def rank_pairs(rankings: list[dict[str, Any]], options: FileOptions) -> list[tuple[str, str]]:
    """(better, worse) keys. Each annotator's position of an item is the index of its group;
    unacceptable items go after every acceptable one; the mean over annotators decides."""
    positions: dict[str, list[float]] = defaultdict(list)
    for ranking in rankings:
        last = len(ranking["order"])
        for place, group in enumerate(ranking["order"]):
            for key in group:
                positions[key].append(place + (last if key in ranking["unacceptable"] else 0))
    mean = {key: sum(p) / len(p) for key, p in positions.items()}
    ordered = sorted(mean, key=lambda k: (mean[k], k))
    if not ordered:
        return []
    if options.dpo_pairs == "all_pairs":
        return [
            (a, b)
            for i, a in enumerate(ordered)
            for b in ordered[i + 1 :]
            if mean[b] - mean[a] >= options.dpo_min_margin
        ]
    best = ordered[0]
    return [(best, other) for other in ordered[1:] if mean[other] > mean[best]]


def _pair(
    prompt: list[dict[str, str]], chosen: str, rejected: str, snap: dict[str, Any], origin: str
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "scenario": snap["scene"],
        "id": f"{snap['id']}-{origin}",
    }


def esconv_record(snap: dict[str, Any], esconv_names: Mapping[str, str | None]) -> dict[str, Any]:
    dialog = []
    for turn in snap["turns"]:
        if turn["role"] == "seeker":
            dialog.append({"text": turn["text"], "speaker": "usr"})
        else:
            label = turn["strategy"]
            dialog.append(
                {
                    "text": turn["text"],
                    "speaker": "sys",
                    "strategy": esconv_names.get(label, label) if label else "Others",
                }
            )
    return {
        "experience_type": "",
        "emotion_type": "",
        "problem_type": snap["scene"],
        "situation": snap["description"],
        "dialog": dialog,
        "id": snap["id"],
    }
