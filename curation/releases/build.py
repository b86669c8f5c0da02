"""Releases: freeze the chosen dialogues, split them, and write every file a trainer wants.

A release is made in two steps. `freeze` snapshots each included dialogue as it is now (text,
final labels, DRI candidates, rankings, edits, provenance) and assigns its split; after
that, nothing done to the dialogues changes the release. A `ReleaseWriter` turns snapshots into
files, streaming them in id order, so the same release always gives byte-identical files and memory
does not grow with its size. The worker does both in one pass (`freeze(release, sink=writer)`);
`write_files` rebuilds the same files later from the stored snapshots. `ensure_files` is the one
writer of a release's own folder (`release.folder`): never half-written, never written twice at
once; `build` is what a worker does with a release whose build it has claimed. A large release's
JSON and Parquet files are written by a second process (`ChildWriter`, the same bytes) while the
first reads and freezes: `writer_for` picks one by the release's size.

SFT + DRI is `sft/` and `sft_dri/` together. `sft/` holds the whole dialogues (`messages`, every
supporter turn trained); `sft_dri/` holds only the DRI examples, in TRL's conversational
prompt-completion form: `prompt` is the chat up to a masked supporter turn, `completion` one
candidate reply for it, so a trainer puts the loss on that reply alone and never trains the
replies before the gap a second time. Each file then has one format and one Parquet schema. Which
candidates become examples is the release's DRI policy (`Release.DriPolicy`, `dri_candidates`):
`acceptable` (ranked by someone, marked unacceptable by no one), `unrejected` (every candidate no
one marked unacceptable, unranked ones too: the paper's setting) or `best` (the reply with the
strictly lowest mean rank of its turn, by `mean_ranks` as for the DPO pairs, when it is a
candidate).

Speed: a release reads every turn of every dialogue and writes it about eight times, so the hot
paths avoid per-row ORM work (plain cursor rows, raw inserts) and encode JSON with orjson. Its
output is the standard library's (`indent=2` layout included) for the strings, integers and
lists of these files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import queue
import shutil
import tempfile
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import orjson
from django.db import connections, transaction
from django.db.models import QuerySet

from curation.models import (
    SAFETY_HELD,
    Candidate,
    Dialogue,
    Ranking,
    Release,
    ReleaseDialogue,
    Review,
    Strategy,
    Turn,
    TurnLabel,
)

SPLITS = ("train", "valid", "test")
KINDS = ("sft", "sft_dri", "dpo")  # a JSON Lines and a Parquet file per split of each
DEFAULT_SPLIT = {"train": 80, "valid": 10, "test": 10}
SYSTEM_PROMPT = (
    "You are a warm, careful emotional-support listener. You listen first, reflect what you hear, "
    "never judge or diagnose, and gently point to crisis help when someone may be in danger."
)
CHUNK = 500
SUPPORTER = Turn.Role.SUPPORTER.value

logger = logging.getLogger(__name__)


@dataclass
class Filters:
    statuses: list[str] = field(default_factory=lambda: [Dialogue.Status.ACCEPTED])
    scenarios: list[str] = field(default_factory=list)  # names; empty means all
    min_agreeing_reviews: int = 0  # submitted reviews whose decision matches the status
    dri: bool = True  # include DRI candidates (which ones: the release's DRI policy)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Filters:
        """From a release's stored filters; keys of older versions are ignored."""
        return cls(**_known(cls, stored))


def _known(cls: type, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The stored values that are fields of the dataclass `cls`."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in stored.items() if k in names}


def select(filters: Filters, safety: bool = True) -> QuerySet[Dialogue]:
    """The dialogues a release with these filters holds (`safety=False`: before the safety
    exclusion, to count what it leaves out)."""
    dialogues = Dialogue.objects.filter(status__in=filters.statuses)
    if filters.scenarios:
        dialogues = dialogues.filter(scenario__name__in=filters.scenarios)
    if safety:
        # Crisis-flagged dialogues stay out until a lead clears them; excluded ones for good.
        dialogues = dialogues.unflagged()
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


def _by_scenario(filters: Filters) -> dict[str, list[int]]:
    """The ids of the dialogues `select` chooses, per scenario name: what `assign_splits` takes."""
    by_scenario: dict[str, list[int]] = defaultdict(list)
    for pk, scenario in select(filters).values_list("pk", "scenario__name"):
        by_scenario[scenario].append(pk)
    return by_scenario


def _counted(splits: Mapping[int, str]) -> dict[str, int]:
    return {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}


def split_counts(filters: Filters, shares: Mapping[str, int]) -> dict[str, int]:
    """Dialogues per split that a release with these filters and shares would hold if it were
    frozen now: the selection and split rule of `freeze`, for the new-release form's preview."""
    return _counted(assign_splits(_by_scenario(filters), dict(shares)))


# Why each split matters to the student trained on a release (training.sft, training.evaluate).
SPLIT_USE = {
    "train": "there is nothing to train a student on",
    "valid": "training cannot report a validation loss",
    "test": "a student trained on this release cannot be evaluated",
}


def split_warnings(counts: Mapping[str, int]) -> list[str]:
    """A sentence for each split that `counts` leaves empty (none when every split has a
    dialogue): the new-release form, the release's page and its card all say these."""
    if not sum(counts.values()):
        return ["No dialogue matches this selection: every split is empty. Select more dialogues."]
    return [
        f"The {split} split is empty: {SPLIT_USE[split]}. "
        f"Select more dialogues or raise the {split} share."
        for split in SPLITS
        if not counts.get(split)
    ]


def new_release(
    name: str,
    filters: Filters | None = None,
    split: dict[str, int] | None = None,
    *,
    licence: str = "CC BY-NC 4.0",
    notes: str = "",
    user: Any = None,
    file_options: FileOptions | None = None,
    dri_policy: str = Release.DriPolicy.ACCEPTABLE,
) -> Release:
    """The release row, still empty (status "building"); `freeze` fills it."""
    return Release.objects.create(
        name=name,
        licence=licence,
        notes=notes,
        filters=asdict(filters or Filters()),
        file_options=asdict(file_options or FileOptions()),
        dri_policy=Release.DriPolicy(dri_policy),
        split=split or dict(DEFAULT_SPLIT),
        previous=Release.objects.filter(status=Release.Status.READY).order_by("-id").first(),
        created_by=user,
    )


def freeze(
    release: Release,
    sink: Writer | None = None,
    progress: Callable[[int], None] = lambda percent: None,
) -> bool:
    """Snapshot the chosen dialogues into the release, in one transaction, and checksum them.
    False, doing nothing, when the release is frozen already.

    With a `sink`, each snapshot is also handed to it as it is made, so the files are written in
    the same pass (the worker's way); `sink.finish` is then the caller's to call.
    """
    filters = Filters.from_dict(release.filters)
    with transaction.atomic():
        if release.items.exists():
            return False
        splits = assign_splits(_by_scenario(filters), release.split)
        ids = sorted(splits)
        digest = hashlib.sha256()
        store = _Store(release)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            snapshots = _snapshots(chunk, include_dri=filters.dri)
            rows = []
            for pk in chunk:
                # Encoded once, for the checksum and for storage.
                encoded = orjson.dumps(snapshots[pk], option=orjson.OPT_SORT_KEYS)
                digest.update(b'[%d,"%s",' % (pk, splits[pk].encode()) + encoded + b"]")
                rows.append((pk, splits[pk], encoded.decode()))
                if sink is not None:
                    sink.add(splits[pk], snapshots[pk], encoded)
            store.insert(rows)
            progress(min(89, 90 * (start + len(chunk)) // len(ids)))
        release.checksum = digest.hexdigest()
        release.counts = _counted(splits)
        release.stats = {
            "crisis_left_out": select(filters, safety=False)
            .filter(safety_status__in=SAFETY_HELD)
            .count()
        }
        release.save(update_fields=["checksum", "counts", "stats"])
    return True


class _Store:
    """Inserts snapshot rows with a plain `executemany`: the JSON is already encoded."""

    def __init__(self, release: Release) -> None:
        self.release_id = release.pk
        connection = connections[ReleaseDialogue.objects.db]
        self.connection = connection
        quote = connection.ops.quote_name
        value = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        self.sql = (
            f"INSERT INTO {quote(ReleaseDialogue._meta.db_table)} "
            f"({quote('release_id')}, {quote('dialogue_id')}, {quote('split')}, "
            f"{quote('snapshot')}) VALUES (%s, %s, %s, {value})"
        )

    def insert(self, rows: list[tuple[int, str, str]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(self.sql, [(self.release_id, *row) for row in rows])


def _rows(queryset: QuerySet[Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of a `values_list` query read straight off the cursor, without Django's per-row
    converters: for the integer and text columns read here they change nothing."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(2000):
            yield from batch


def _among(field: str, ids: list[int]) -> dict[str, Any]:
    """A filter for `field` in the sorted `ids`: a range when they are dense (a short, fast query
    that may bring a few rows more), else a list."""
    if ids and ids[-1] - ids[0] < 2 * len(ids):
        return {f"{field}__range": (ids[0], ids[-1])}
    return {f"{field}__in": ids}


def _json(value: Any) -> Any:
    """A JSON column read off a plain cursor: text on SQLite (and with Django's psycopg setup)."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def create_release(name: str, *args: Any, **kwargs: Any) -> Release:
    """A frozen, ready release (the command line's way; the web builds it in a worker).
    Takes the arguments of `new_release`."""
    with transaction.atomic():
        release = new_release(name, *args, **kwargs)
        freeze(release)
        release.status = Release.Status.READY
        release.save(update_fields=["status"])
    return release


def _snapshots(ids: list[int], include_dri: bool) -> dict[int, dict[str, Any]]:
    """The frozen form of each dialogue, built with a fixed number of queries per chunk."""
    # Plain rows, not model instances: a release reads every turn of every dialogue. Rows of
    # dialogues outside `ids` that a range brings along are read and ignored.
    dialogues = {
        row[0]: row
        for row in _rows(
            Dialogue.objects.filter(**_among("pk", ids)).values_list(
                "pk",
                "scenario__name",
                "description",
                "origin",
                "source_file",
                "source_record",
                "provenance",
                "safety_status",
            )
        )
    }
    # (pk, dialogue_id, index, role, text as written, the teacher's or importer's strategy,
    # final text, final strategy): the final state is stored on every turn when the dialogue
    # settles (curation.settlement; final text None before), else the turn is taken as written.
    turns: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in _rows(
        Turn.objects.filter(**_among("dialogue__pk", ids))
        .order_by("dialogue_id", "index")
        .values_list(
            "pk",
            "dialogue_id",
            "index",
            "role",
            "text",
            "strategy__name",
            "final_text",
            "final_strategy__name",
        )
    ):
        turns[row[1]].append(row)
    votes: dict[int, Counter[str | None]] = defaultdict(Counter)
    for turn_id, name in _rows(
        TurnLabel.objects.filter(
            **_among("turn__dialogue__pk", ids), review__submitted_at__isnull=False
        ).values_list("turn_id", "strategy__name")
    ):
        votes[turn_id][name] += 1
    reviews = Counter(
        Review.objects.filter(
            **_among("dialogue__pk", ids), submitted_at__isnull=False
        ).values_list("dialogue_id", flat=True)
    )
    candidates: dict[int, list[dict[str, Any]]] = defaultdict(list)
    rankings: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if include_dri:
        ranked = defaultdict(list)
        for ranking in (
            Ranking.objects.filter(**_among("turn__dialogue__pk", ids))
            .select_related("turn")
            .order_by("id")
        ):
            ranked[ranking.turn_id].append(ranking)
        for turn_id, of_turn in ranked.items():  # a lead's settling ranking stands alone
            kept = []
            for number in sorted({r.round for r in of_turn}):
                in_round = [r for r in of_turn if r.round == number]
                settled = [r for r in in_round if r.adjudicated]
                kept += settled[-1:] or in_round
            ranked[turn_id] = kept
        for candidate in (
            Candidate.objects.filter(**_among("turn__dialogue__pk", ids))
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
                    "author": candidate.author,
                    "acceptable": acceptable,
                    "provenance": candidate.provenance,
                }
            )
        for turn_id, of_turn in ranked.items():
            for ranking in of_turn:
                rankings[ranking.turn.dialogue_id].append(
                    {
                        "turn_index": ranking.turn.index,
                        "round": ranking.round,
                        "original": f"t{turn_id}",
                        "order": ranking.order,
                        "unacceptable": ranking.unacceptable,
                    }
                )
    result = {}
    for pk in ids:
        (
            _,
            scene,
            description,
            origin,
            source_file,
            source_record,
            provenance,
            safety_status,
        ) = dialogues[pk]
        result[pk] = {
            "id": pk,
            "scene": scene,
            "description": description,
            "origin": origin,
            "source": Dialogue.label_of_source(source_file, source_record),
            "provenance": _json(provenance),
            "safety_status": safety_status,
            "reviews": reviews.get(pk, 0),
            "turns": [
                {
                    "index": index,
                    "role": role,
                    "text": text if final_text is None else final_text,
                    "strategy": None
                    if role != SUPPORTER
                    else (strategy if final_text is None else final_strategy),
                    "teacher_strategy": strategy,
                }
                for _, _, index, role, text, strategy, final_text, final_strategy in turns[pk]
            ],
            "candidates": candidates.get(pk, []),
            "rankings": rankings.get(pk, []),
            "edits": [
                {"turn_index": index, "before": text, "after": final_text}
                for _, _, index, _, text, _, final_text, _ in turns[pk]
                if final_text is not None and final_text != text
            ],
            "label_votes": {
                str(row[2]): {
                    name or "": n
                    for name, n in sorted(votes[row[0]].items(), key=lambda x: x[0] or "")
                }
                for row in turns[pk]
                if row[0] in votes
            },
        }
    return result


# ---- files ----------------------------------------------------------------------------------


@dataclass
class FileOptions:
    strategy_tags: bool = False  # prefix assistant texts with "[Strategy] "
    dpo_pairs: str = "best_vs_rest"  # or "all_pairs"
    dpo_min_margin: float = 1.0  # all_pairs: minimum difference of mean rank

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> FileOptions:
        return cls(**_known(cls, stored))


def snapshots(release: Release) -> Iterator[tuple[str, dict[str, Any]]]:
    """(split, snapshot) in dialogue id order, a chunk at a time."""
    items = release.items.order_by("dialogue_id").values_list("split", "snapshot")
    for split, snapshot in _rows(items):
        yield split, _json(snapshot)


class Output:
    """The JSON files of a release, fed one snapshot at a time in dialogue id order, and the
    card's tally of them: the part of writing a release that needs no database, so that a child
    process can do it (`ChildWriter`)."""

    def __init__(
        self, out: Path, options: FileOptions, dri_policy: str, esconv_names: dict[str, Any]
    ) -> None:
        from curation.releases.card import Tally

        self.options = options
        self.dri_policy = dri_policy
        self.esconv_names = esconv_names
        self.tally = Tally(dri_policy)
        out.mkdir(parents=True, exist_ok=True)
        self.files = _Files(out)
        self.files.open("extes.json").write(b"[")
        self.first = True

    def add(self, split: str, snap: dict[str, Any]) -> None:
        self.tally.add(snap)
        files, tags = self.files, self.options.strategy_tags
        record = orjson.dumps(extes_record(snap), option=orjson.OPT_INDENT_2)
        files["extes.json"].write(
            (b"\n  " if self.first else b",\n  ") + record.replace(b"\n", b"\n  ")
        )
        self.first = False
        files.line(f"sft/{split}.jsonl", sft_example(snap, tags))
        for example in dri_examples(snap, self.dri_policy, tags):
            files.line(f"sft_dri/{split}.jsonl", example)
        for pair in dpo_pairs(snap, self.options):
            self.tally.pair(pair)
            files.line(f"dpo/{split}.jsonl", pair)
        files.line("esconv.jsonl", esconv_record(snap, self.esconv_names))

    def close(self) -> None:
        """The JSON array closed and every split's file there, even an empty one."""
        self.files["extes.json"].write(b"\n]\n" if not self.first else b"]\n")
        for split in SPLITS:
            for kind in KINDS:
                self.files.open(f"{kind}/{split}.jsonl")
        self.files.close()

    def abort(self) -> None:
        self.files.close()


def _esconv_names() -> dict[str, Any]:
    return dict(
        Strategy.objects.filter(taxonomy="extes").values_list("name", "esconv_equivalent__name")
    )


class Writer:
    """Every file of a release, fed one snapshot at a time in dialogue id order (`add`, or
    `add_stored` with the snapshot as its column holds it), then `finish`ed (or `abort`ed): a
    `ReleaseWriter` in this process, a `ChildWriter` with a second one (`writer_for` picks)."""

    def __init__(
        self,
        release: Release,
        out: Path,
        options: FileOptions | None = None,
        progress: Callable[[int], None] = lambda percent: None,
    ) -> None:
        self.release = release
        self.out = out
        self.options = options or FileOptions.from_dict(release.file_options)
        self.progress = progress
        out.mkdir(parents=True, exist_ok=True)
        self.open()

    def open(self) -> None:
        raise NotImplementedError

    def add(self, split: str, snap: dict[str, Any], encoded: bytes | None = None) -> None:
        raise NotImplementedError

    def add_stored(self, split: str, stored: Any) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class ReleaseWriter(Writer):
    """Every file of a release written in this process."""

    def open(self) -> None:
        self.output = Output(self.out, self.options, self.release.dri_policy, _esconv_names())

    def add(self, split: str, snap: dict[str, Any], encoded: bytes | None = None) -> None:
        """One snapshot; `encoded`, its JSON, is for writers that pass it on."""
        self.output.add(split, snap)

    def add_stored(self, split: str, stored: Any) -> None:
        """One snapshot as its column holds it (`snapshots` decodes the same way)."""
        self.output.add(split, _json(stored))

    def finish(self) -> dict[str, Any]:
        """Close the JSON files, then write Parquet, the card and the manifest; returns it."""
        self.output.close()
        self.progress(90)
        write_parquet(self.out)
        self.progress(95)
        _card(self.release, self.out, self.output.tally)
        return _finish(self.release, self.out, self.progress)

    def abort(self) -> None:
        self.output.abort()


def _card(release: Release, out: Path, tally: Any) -> None:
    from curation.releases.card import write_card

    # The checksum and counts that freeze wrote (the rest of the row is the caller's).
    release.refresh_from_db(fields=["checksum", "counts", "stats"])
    write_card(release, out, tally)


def _finish(
    release: Release, out: Path, progress: Callable[[int], None] = lambda percent: None
) -> dict[str, Any]:
    manifest = _manifest(release, out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    progress(100)
    return manifest


class ChildWriter(Writer):
    """`ReleaseWriter`'s work split over two processes: a child (`curation.releases.writer`)
    writes the JSON and Parquet files from the snapshots this process sends it down a pipe,
    already encoded (as `freeze` stores them), while this one reads and freezes the next; the
    card, which reads the database, is written here while the child writes Parquet.

    For large releases (settings.RELEASE_CHILD_WRITER_FROM): on two cores a release then takes
    about half as long again as its slower half instead of both halves together; the child's
    start (about a second) is more than a small release takes in all. The files are the same
    bytes either way. A child that fails or dies stops the build with what it said; a parent
    that dies closes the pipe, and the child stops, half-written files and all, in the
    temporary folder that `write_folder` removes.
    """

    def open(self) -> None:
        from curation.releases import writer

        self.child_peak_mib: float | None = None  # the child's own peak memory, once finished
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish or abort)
        self.child = writer.start(
            {
                "out": str(self.out),
                "options": asdict(self.options),
                "dri_policy": self.release.dri_policy,
                "esconv_names": _esconv_names(),
            },
            stderr=self.errors,
        )
        assert self.child.stdin is not None and self.child.stdout is not None
        self.answers = self.child.stdout
        # A thread writes to the pipe, so that this process goes on freezing while the child
        # starts (about a second) or falls behind, by up to `_QUEUED` blocks of frames.
        self.blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.broken = threading.Event()
        self.sender = threading.Thread(target=self._pour, args=(self.child.stdin,), daemon=True)
        self.sender.start()

    def add(self, split: str, snap: dict[str, Any], encoded: bytes | None = None) -> None:
        self._send(SPLITS.index(split), encoded if encoded is not None else orjson.dumps(snap))

    def add_stored(self, split: str, stored: Any) -> None:
        if isinstance(stored, str):
            stored = stored.encode()
        elif not isinstance(stored, bytes):  # a driver that decodes JSON columns itself
            stored = orjson.dumps(stored)
        self._send(SPLITS.index(split), stored)

    def _send(self, code: int, payload: bytes) -> None:
        from curation.releases import writer

        self.pending.append(writer.frame(code, payload))
        self.pending_bytes += len(payload)
        if self.pending_bytes >= _BLOCK:
            self._hand_over()

    def _hand_over(self) -> None:
        block, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
        self._queue(block)

    def _queue(self, block: bytes | None) -> None:
        """`block` (None: the end) to the sender, waiting while the queue is full; a child that
        stopped meanwhile fails the writer."""
        while not self.broken.is_set():
            try:
                self.blocks.put(block, timeout=0.5)
                return
            except queue.Full:
                continue
        raise self._failed()

    def _pour(self, pipe: IO[bytes]) -> None:
        try:
            while (block := self.blocks.get()) is not None:
                pipe.write(block)
            pipe.close()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed by `abort`
            self.broken.set()

    def finish(self) -> dict[str, Any]:
        from curation.releases import writer

        self._send(writer.END, b"")
        self._hand_over()
        self._queue(None)
        self.sender.join()
        if self.broken.is_set():
            raise self._failed()
        tally = writer.read_tally(self.answers)
        if tally is None:
            raise self._failed()
        self.progress(90)
        _card(self.release, self.out, tally)  # while the child writes Parquet
        self.progress(95)
        self.child_peak_mib = writer.read_peak(self.answers)
        if self.child.wait() != 0:
            raise self._failed()
        self.errors.close()
        return _finish(self.release, self.out, self.progress)

    def abort(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        self.broken.set()  # the sender, if it waits for a block, stops at its next write
        with contextlib.suppress(queue.Full):
            self.blocks.put_nowait(None)
        self.errors.close()

    def _failed(self) -> RuntimeError:
        code = self.child.wait()
        self.errors.seek(0)
        said = self.errors.read().decode("utf-8", "replace").strip().splitlines()[-5:]
        self.errors.close()
        return RuntimeError(
            f"the release's file writer stopped (exit status {code})"
            + (": " + " / ".join(said) if said else "")
        )


_BLOCK = 1 << 20  # bytes of snapshots the sender writes at once
_QUEUED = 64  # blocks waiting for the sender at most: 64 MiB


def writer_for(
    release: Release,
    out: Path,
    size: int,
    options: FileOptions | None = None,
    progress: Callable[[int], None] = lambda percent: None,
) -> Writer:
    """The writer for a release of `size` dialogues: a child process from the setting's size up
    (0 turns it off), this process below."""
    from django.conf import settings

    start = settings.RELEASE_CHILD_WRITER_FROM
    kind = ChildWriter if start and size >= start else ReleaseWriter
    return kind(release, out, options, progress)


def write_files(
    release: Release,
    out: Path,
    options: FileOptions | None = None,
    progress: Callable[[int], None] = lambda percent: None,
) -> dict[str, Any]:
    """Write every file of a frozen release into `out` from its stored snapshots; returns the
    manifest (also written)."""
    total = max(1, release.items.count())
    writer = writer_for(release, out, total, options, progress)
    try:
        items = release.items.order_by("dialogue_id").values_list("split", "snapshot")
        for done, (split, stored) in enumerate(_rows(items), start=1):
            writer.add_stored(split, stored)
            if done % CHUNK == 0:
                progress(min(89, 90 * done // total))
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def ensure_files(release: Release, progress: Callable[[int], None] = lambda percent: None) -> Path:
    """`release.folder` with every file of the release: the one writer of that folder (the build
    task and training both come here).

    Written when it is missing or not this release's (a namesake deleted since, an older layout);
    a release not frozen yet is frozen in the same pass (the worker's way). The files go to a
    temporary folder beside it that is renamed into place at the end (`write_folder`), so the
    folder is never half-written. Writers of one release take turns on a lock file beside it: one
    that finds the folder complete leaves it as it is.
    """
    folder = release.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(f".{folder.name}.lock")):
        if not _complete(release, folder):
            write_folder(release, folder, progress=progress)
    return folder


def write_folder(
    release: Release,
    target: Path,
    options: FileOptions | None = None,
    progress: Callable[[int], None] = lambda percent: None,
) -> dict[str, Any]:
    """Every file of the release into `target` (replaced, if it exists), by way of a temporary
    folder beside it renamed into place at the end; temporary folders an earlier attempt left
    there are removed first. Freezes a release not frozen yet in the same pass. Returns the
    manifest."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        if release.checksum:  # frozen (freeze sets it): the files come from the stored snapshots
            manifest = write_files(release, tmp, options, progress)
        else:
            size = select(Filters.from_dict(release.filters)).count()
            writer = writer_for(release, tmp, size, options, progress)
            try:
                frozen_now = freeze(release, sink=writer, progress=progress)
            except BaseException:
                writer.abort()
                raise
            if frozen_now:
                manifest = writer.finish()
            else:  # frozen meanwhile by someone else
                writer.abort()
                shutil.rmtree(tmp)
                manifest = write_files(release, tmp, options, progress)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _complete(release: Release, folder: Path) -> bool:
    """Whether `folder` holds this release's files: its manifest names the release's checksum
    and every file each release has, and every file it lists is there."""
    manifest = folder / "manifest.json"
    if not release.checksum or not manifest.is_file():
        return False
    written = json.loads(manifest.read_text(encoding="utf-8"))
    listed = {f["path"] for f in written.get("files", [])}
    expected = {f"{kind}/{split}.jsonl" for kind in KINDS for split in SPLITS}
    expected |= {f"parquet/{kind}/{split}.parquet" for kind in KINDS for split in SPLITS}
    return (
        written.get("checksum") == release.checksum
        # Folders written before the DRI policy held whole dialogues in sft_dri/: written again.
        and written.get("dri_policy") == release.dri_policy
        and expected <= listed
        and all((folder / path).is_file() for path in listed)
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` while the block runs; the system drops it when the
    process dies, so a killed writer never leaves it held."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class TakenOver(Exception):
    """Another worker holds the build now: this one was silent for a whole lease."""


def build(release: Release) -> None:
    """Freeze and write a release whose build this worker has claimed, then mark it ready; a
    failure marks it failed with the reason. Every progress report is a heartbeat: a worker that
    finds the build taken over stops there."""

    def progress(percent: int) -> None:
        if not release.beat(max(2, percent)):
            raise TakenOver(f"release {release.pk} is no longer built by {release.worker}")

    try:
        ensure_files(release, progress)
    except TakenOver:
        logger.warning("release %s: another worker took the build over", release.pk)
        return
    except Exception as exc:
        logger.exception("release %s failed", release.pk)
        release.fail(f"{type(exc).__name__}: {exc}")
        return
    release.finish()


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
    sft_dri = pa.schema(
        [
            ("prompt", message),
            ("completion", message),
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
    return {"sft": sft, "sft_dri": sft_dri, "dpo": dpo}


def write_parquet(out: Path, block_size: int = 4 << 20) -> None:
    """parquet/<kind>/<split>.parquet from the JSON Lines files, streamed a block at a time by
    Arrow's own JSON reader (no Python objects per row).

    An empty split is a file with the schema and no row group: readers see an empty table (a
    row group of 0 rows would make `datasets` read it in batches of 0 rows, which it refuses).
    """
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    for kind, schema in _schemas().items():
        for split in SPLITS:
            source = out / kind / f"{split}.jsonl"
            target = out / "parquet" / kind / f"{split}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            with pq.ParquetWriter(target, schema) as writer:
                if source.stat().st_size == 0:
                    continue
                reader = pj.open_json(
                    source,
                    read_options=pj.ReadOptions(block_size=block_size, use_threads=True),
                    parse_options=pj.ParseOptions(
                        explicit_schema=schema, unexpected_field_behavior="ignore"
                    ),
                )
                for batch in reader:
                    if batch.num_rows:
                        writer.write_batch(batch)


class _Files:
    """Output files (binary: the JSON comes encoded), opened on first use and closed together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handles: dict[str, IO[bytes]] = {}

    def open(self, name: str) -> IO[bytes]:
        if name not in self.handles:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handles[name] = path.open("wb", buffering=1 << 20)
        return self.handles[name]

    def __getitem__(self, name: str) -> IO[bytes]:
        return self.handles[name]

    def line(self, name: str, value: dict[str, Any]) -> None:
        self.open(name).write(orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
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
        "dri_policy": release.dri_policy,
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


def dri_candidates(snap: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    """The candidates of a snapshot that the DRI policy makes examples of, in snapshot order.

    The rankings counted are the snapshot's (a lead's settling ranking alone where there is one).
    `acceptable` keeps the flag `freeze` stored; `unrejected` keeps every candidate no ranking
    marks unacceptable; `best` keeps a candidate whose mean rank (`mean_ranks`) is strictly lower
    than that of every other reply of its turn, the original included, and that no one marked
    unacceptable: a tie at the top, or an original ranked best, gives none.
    """
    teacher = [c for c in snap["candidates"] if c.get("author", "teacher") == "teacher"]
    if policy == Release.DriPolicy.ACCEPTABLE:
        return [c for c in teacher if c["acceptable"]]
    rejected = {(r["turn_index"], key) for r in snap["rankings"] for key in r["unacceptable"]}
    fine = [c for c in teacher if (c["turn_index"], c["key"]) not in rejected]
    if policy == Release.DriPolicy.UNREJECTED:
        return fine
    if policy != Release.DriPolicy.BEST:
        raise ValueError(f"unknown DRI policy {policy!r}")
    best: set[tuple[int, str]] = set()
    for (index, _), rankings in _by_round(snap).items():
        mean = mean_ranks(rankings)
        ordered = sorted(mean, key=lambda key: mean[key])
        if ordered and (len(ordered) == 1 or mean[ordered[0]] < mean[ordered[1]]):
            best.add((index, ordered[0]))
    return [c for c in fine if (c["turn_index"], c["key"]) in best]


def _by_round(snap: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """The snapshot's rankings per (turn index, round): rounds are ranked apart."""
    found: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for ranking in snap["rankings"]:
        found[ranking["turn_index"], ranking.get("round", 1)].append(ranking)
    return found


def dri_examples(
    snap: dict[str, Any], policy: str = Release.DriPolicy.ACCEPTABLE, tags: bool = False
) -> Iterator[dict[str, Any]]:
    """One prompt-completion example per candidate the policy keeps: the chat up to the masked
    turn as `prompt`, the candidate as `completion`."""
    for candidate in dri_candidates(snap, policy):
        context = [t for t in snap["turns"] if t["index"] < candidate["turn_index"]]
        reply = _tagged(candidate["text"], candidate["strategy"], tags)
        yield {
            "prompt": _messages(context, tags),
            "completion": [{"role": "assistant", "content": reply}],
            "strategies": [candidate["strategy"]],
            "scenario": snap["scene"],
            "id": f"{snap['id']}-{candidate['key']}",
            "source": "dri",
        }


def dpo_pairs(snap: dict[str, Any], options: FileOptions) -> Iterator[dict[str, Any]]:
    """Preference pairs from rankings (annotators combined by mean rank within a round; ties
    never pair) and from edits (the edited text is chosen over the original). A pair whose
    rejected reply is a student's sent back to be ranked has an id "<dialogue>-student-<turn>";
    other pairs of later rounds end in "-r<round>"."""
    texts = {c["key"]: c["text"] for c in snap["candidates"]}
    students = {c["key"] for c in snap["candidates"] if c.get("author") == "student"}
    rounds = _by_round(snap)
    edits = {e["turn_index"]: e for e in snap["edits"]}
    for turn in snap["turns"]:
        index = turn["index"]
        ranked = sorted(number for i, number in rounds if i == index)
        edit = edits.get(index)
        if turn["role"] != "supporter" or not (ranked or edit):
            continue
        prompt = _messages([t for t in snap["turns"] if t["index"] < index], False)
        for number in ranked:
            rankings = rounds[index, number]
            original = rankings[0]["original"]
            # Round 1 may have been ranked before an edit; later rounds show the settled text.
            before = edits.get(index, {}).get("before", turn["text"])
            texts[original] = before if number == 1 else turn["text"]
            for better, worse in rank_pairs(rankings, options):
                if better in texts and worse in texts:
                    if worse in students:
                        origin = f"student-{index}"
                    else:
                        origin = f"rank-{index}" + (f"-r{number}" if number > 1 else "")
                    yield _pair(prompt, texts[better], texts[worse], snap, origin)
        if edit and edit["before"].strip() != edit["after"].strip():
            yield _pair(prompt, edit["after"], edit["before"], snap, f"edit-{turn['index']}")


def mean_ranks(rankings: list[dict[str, Any]]) -> dict[str, float]:
    """Each ranked item's mean position over the annotators (lower is better). An annotator's
    position of an item is the index of its group; unacceptable items go after every acceptable
    one."""
    positions: dict[str, list[float]] = defaultdict(list)
    for ranking in rankings:
        last = len(ranking["order"])
        for place, group in enumerate(ranking["order"]):
            for key in group:
                positions[key].append(place + (last if key in ranking["unacceptable"] else 0))
    return {key: sum(p) / len(p) for key, p in positions.items()}


def rank_pairs(rankings: list[dict[str, Any]], options: FileOptions) -> list[tuple[str, str]]:
    """(better, worse) keys, by mean rank (`mean_ranks`)."""
    mean = mean_ranks(rankings)
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
