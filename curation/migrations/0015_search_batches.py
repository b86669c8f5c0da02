"""Search index: inserts written together (curation.searchindex.indexed_together).

SQLite only. A table, curation_dialogue_search_batch, that has a row while a block of inserts is
being written together (inside one transaction, so no other connection sees it); the four insert
triggers of migration 0011 do nothing then, and the block writes its dialogues' documents in one
statement at its end. Every other trigger is 0011's, unchanged.

A later migration that remakes curation_dialogue or curation_turn on SQLite (which drops a
table's triggers) must run this module's `create_sqlite_triggers`, the whole current set.
"""

import importlib

from django.db import migrations

_0011 = importlib.import_module("curation.migrations.0011_dialogue_search")

NOT_IN_BATCH = "NOT EXISTS (SELECT 1 FROM curation_dialogue_search_batch)"

INSERT_TRIGGER_NAMES = (
    "curation_dialogue_search_dialogue_ai",
    "curation_dialogue_search_turn_ai_touch",
    "curation_dialogue_search_turn_ai_ready",
    "curation_dialogue_search_turn_ai_flush",
)

INSERT_TRIGGERS = [
    f"""CREATE TRIGGER curation_dialogue_search_dialogue_ai AFTER INSERT ON curation_dialogue
        WHEN {NOT_IN_BATCH} BEGIN
        INSERT OR REPLACE INTO curation_dialogue_search_pending (dialogue_id, description, ready)
            VALUES (NEW.id, NEW.description, 0);
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_touch AFTER INSERT ON curation_turn
        WHEN {NOT_IN_BATCH} AND NOT EXISTS (SELECT 1 FROM curation_dialogue_search_pending
            WHERE dialogue_id = NEW.dialogue_id) BEGIN
        {_0011._sqlite_touch("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_ready AFTER INSERT ON curation_turn
        WHEN {NOT_IN_BATCH} AND EXISTS (SELECT 1 FROM curation_dialogue_search_pending
            WHERE dialogue_id = NEW.dialogue_id AND NOT ready) BEGIN
        {_0011._sqlite_ready("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_flush AFTER INSERT ON curation_turn
        WHEN {NOT_IN_BATCH} AND {_0011._SQLITE_WAITING.format("NEW.dialogue_id")} BEGIN
        {_0011._sqlite_flush("NEW.dialogue_id")}
    END""",
]


def _name(statement: str) -> str:
    return statement.split()[2]


SQLITE_TRIGGERS = [
    t for t in _0011.SQLITE_TRIGGERS if _name(t) not in INSERT_TRIGGER_NAMES
] + INSERT_TRIGGERS


def create_sqlite_triggers(schema_editor):
    for statement in SQLITE_TRIGGERS:
        schema_editor.execute(statement)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    schema_editor.execute(
        "CREATE TABLE curation_dialogue_search_batch (id INTEGER PRIMARY KEY)"
    )
    for name in INSERT_TRIGGER_NAMES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in INSERT_TRIGGERS:
        schema_editor.execute(statement)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for name in INSERT_TRIGGER_NAMES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in _0011.SQLITE_TRIGGERS:
        if _name(statement) in INSERT_TRIGGER_NAMES:
            schema_editor.execute(statement)
    schema_editor.execute("DROP TABLE IF EXISTS curation_dialogue_search_batch")


class Migration(migrations.Migration):
    dependencies = [("curation", "0014_rank_rounds")]

    operations = [migrations.RunPython(forwards, backwards)]
