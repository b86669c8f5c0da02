"""Writing many dialogues into the SQLite search index at once (the index of migration 0011).

The index's triggers keep it in step with every insert, edit and delete, a turn at a time: on
an import, three triggers per turn, each looking up the pending table, and one FTS5 write per
dialogue. `indexed_together` instead pauses the insert triggers (migration 0015: they do
nothing while the batch table has a row) around a block that inserts new dialogues and their
turns, then writes those dialogues' documents in one statement. The pause is a row inserted and
deleted inside the block's transaction, so no other connection ever sees it (SQLite has one
writer, and this transaction holds it from the row's insert to its delete).

PostgreSQL's triggers already work once per statement: there this does nothing more.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from django.db import connection, transaction

BATCH_TABLE = "curation_dialogue_search_batch"

# One dialogue's turns as the index keeps them (each as written, and as settled where that
# differs, in order): the very text migration 0011's triggers write.
TURNS_OF: str = importlib.import_module("curation.migrations.0011_dialogue_search")._SQLITE_TURNS_OF

CHUNK = 500  # ids per statement (SQLite's limit on parameters is far above)


@contextlib.contextmanager
def indexed_together() -> Iterator[list[int]]:
    """Around inserts of new dialogues and their turns: yields a list the caller fills with the
    new dialogues' ids, whose documents are written in one statement at the end."""
    if connection.vendor != "sqlite":
        with transaction.atomic():  # all or nothing, as on SQLite
            yield []
        return
    new_ids: list[int] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {BATCH_TABLE} (id) VALUES (1)")
        yield new_ids
        cursor.execute(f"DELETE FROM {BATCH_TABLE}")
        for start in range(0, len(new_ids), CHUNK):
            chunk = new_ids[start : start + CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                "INSERT INTO curation_dialogue_search (rowid, description, turns) "
                f"SELECT d.id, d.description, {TURNS_OF.format('d.id')} "
                f"FROM curation_dialogue d WHERE d.id IN ({marks}) ORDER BY d.id",
                chunk,
            )
