"""Full-text search over each dialogue's description and turns (DialogueQuerySet.search).

One document per dialogue: its description, and each turn's text as written plus its final text
where settling changed it. Triggers keep it in step with curation_dialogue and curation_turn, on
both engines; this migration also indexes the rows already there.

SQLite: an FTS5 table, curation_dialogue_search (rowid = dialogue id). FTS5 rewrites a whole
document to change it, and an import adds a dialogue's turns one row at a time, so rebuilding
the document on every new turn would cost the square of its length (and a flush of the index
each time). Instead the dialogue changed last waits, with its full text, in
curation_dialogue_search_pending, and goes into the index once, when another dialogue's turns
start to change: an import writes each document once, in id order. Search reads the pending
rows directly (there are one or two).

The triggers on each table only read that table and the two search tables: Django remakes a
table on SQLite for some field changes (new table, copy, drop, rename), and a trigger that reads
another table would make the rename fail. The remake drops the table's own triggers, though: a
later migration that remakes curation_dialogue or curation_turn on SQLite must run
`create_sqlite_triggers` again, now migration 0015's (tests/test_search.py fails until it does).

PostgreSQL: a tsvector per dialogue in curation_dialogue_search, with a GIN index. Inserts and
deletes are handled once per statement (transition tables), so a bulk insert of turns rebuilds
each of its dialogues once; edits of a description or a turn's text, per row.
"""

from django.db import migrations

# One turn's searchable text: as written, and as settled when that differs.
_SQLITE_TURNS_OF = (
    "coalesce((SELECT group_concat(entry, char(10)) FROM (SELECT t.text || CASE "
    "WHEN t.final_text IS NOT NULL AND t.final_text != t.text THEN char(10) || t.final_text "
    "ELSE '' END AS entry FROM curation_turn t WHERE t.dialogue_id = {} ORDER BY t.\"index\")), '')"
)


def _sqlite_touch(dialogue):
    """Make an indexed dialogue pending again, its description taken from the index."""
    return f"""
        INSERT OR IGNORE INTO curation_dialogue_search_pending (dialogue_id, description, ready)
            SELECT rowid, description, 1 FROM curation_dialogue_search WHERE rowid = {dialogue};
        DELETE FROM curation_dialogue_search WHERE rowid = {dialogue};
    """


def _sqlite_ready(dialogue):
    return f"""
        UPDATE curation_dialogue_search_pending SET ready = 1
            WHERE dialogue_id = {dialogue} AND NOT ready;
    """


# Other dialogues' turns no longer change: the ready pending rows, and any older than this one
# (dialogues without turns), go into the index. Separate statements, so that each uses an index.
_SQLITE_WAITING = """(
    EXISTS (SELECT 1 FROM curation_dialogue_search_pending WHERE ready AND dialogue_id != {0})
    OR EXISTS (SELECT 1 FROM curation_dialogue_search_pending WHERE dialogue_id < {0}))"""


def _sqlite_flush(dialogue):
    statements = []
    for where in (f"ready AND dialogue_id != {dialogue}", f"dialogue_id < {dialogue}"):
        statements.append(f"""
        INSERT INTO curation_dialogue_search (rowid, description, turns)
            SELECT p.dialogue_id, p.description, {_SQLITE_TURNS_OF.format("p.dialogue_id")}
            FROM curation_dialogue_search_pending p WHERE {where} ORDER BY p.dialogue_id;
        DELETE FROM curation_dialogue_search_pending WHERE {where};""")
    return "".join(statements)


_SQLITE_TURN_CHANGED = """OLD.text IS NOT NEW.text OR OLD.final_text IS NOT NEW.final_text
            OR OLD.dialogue_id IS NOT NEW.dialogue_id"""

# Each trigger reads only its own table and the two search tables (see above). A dialogue is in
# the index or pending, never both.
SQLITE_TRIGGERS = [
    """CREATE TRIGGER curation_dialogue_search_dialogue_ai AFTER INSERT ON curation_dialogue BEGIN
        INSERT OR REPLACE INTO curation_dialogue_search_pending (dialogue_id, description, ready)
            VALUES (NEW.id, NEW.description, 0);
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_dialogue_au
        AFTER UPDATE OF description ON curation_dialogue
        WHEN OLD.description IS NOT NEW.description BEGIN
        {_sqlite_touch("NEW.id")}
        UPDATE curation_dialogue_search_pending SET description = NEW.description
            WHERE dialogue_id = NEW.id;
    END""",
    """CREATE TRIGGER curation_dialogue_search_dialogue_ad AFTER DELETE ON curation_dialogue BEGIN
        DELETE FROM curation_dialogue_search WHERE rowid = OLD.id;
        DELETE FROM curation_dialogue_search_pending WHERE dialogue_id = OLD.id;
    END""",
    # Inserts are the import's path: three triggers, each guarded, so that a turn of a dialogue
    # already pending and ready costs three lookups in the pending table.
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_touch AFTER INSERT ON curation_turn
        WHEN NOT EXISTS (SELECT 1 FROM curation_dialogue_search_pending
            WHERE dialogue_id = NEW.dialogue_id) BEGIN
        {_sqlite_touch("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_ready AFTER INSERT ON curation_turn
        WHEN EXISTS (SELECT 1 FROM curation_dialogue_search_pending
            WHERE dialogue_id = NEW.dialogue_id AND NOT ready) BEGIN
        {_sqlite_ready("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ai_flush AFTER INSERT ON curation_turn
        WHEN {_SQLITE_WAITING.format("NEW.dialogue_id")} BEGIN
        {_sqlite_flush("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_au
        AFTER UPDATE OF text, final_text, dialogue_id ON curation_turn
        WHEN {_SQLITE_TURN_CHANGED} BEGIN
        {_sqlite_touch("OLD.dialogue_id")}
        {_sqlite_ready("OLD.dialogue_id")}
        {_sqlite_touch("NEW.dialogue_id")}
        {_sqlite_ready("NEW.dialogue_id")}
        {_sqlite_flush("NEW.dialogue_id")}
    END""",
    f"""CREATE TRIGGER curation_dialogue_search_turn_ad AFTER DELETE ON curation_turn BEGIN
        {_sqlite_touch("OLD.dialogue_id")}
        {_sqlite_ready("OLD.dialogue_id")}
        {_sqlite_flush("OLD.dialogue_id")}
    END""",
]

# Accents are kept (no remove_diacritics), as PostgreSQL's 'simple' configuration keeps them.
SQLITE_FORWARDS = [
    """CREATE VIRTUAL TABLE curation_dialogue_search
        USING fts5(description, turns, tokenize = 'unicode61 remove_diacritics 0')""",
    # ready: its turns have started to arrive (or it was indexed before).
    """CREATE TABLE curation_dialogue_search_pending (
        dialogue_id INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        ready INTEGER NOT NULL
    )""",
    """CREATE INDEX curation_dialogue_search_pending_ready
        ON curation_dialogue_search_pending (dialogue_id) WHERE ready""",
    f"""INSERT INTO curation_dialogue_search (rowid, description, turns)
        SELECT d.id, d.description, {_SQLITE_TURNS_OF.format("d.id")}
        FROM curation_dialogue d ORDER BY d.id""",
]

SQLITE_BACKWARDS = [
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_ai",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_au",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_ad",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ai_touch",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ai_ready",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ai_flush",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_au",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ad",
    "DROP TABLE IF EXISTS curation_dialogue_search_pending",
    "DROP TABLE IF EXISTS curation_dialogue_search",
]

# 'simple': lower case, no stemming, no stop words, like FTS5's unicode61. Positions are
# stripped: search asks for words, not phrases.
POSTGRES_FORWARDS = [
    """CREATE TABLE curation_dialogue_search (
        dialogue_id bigint PRIMARY KEY,
        document tsvector NOT NULL
    )""",
    """CREATE INDEX curation_dialogue_search_document
        ON curation_dialogue_search USING gin (document)""",
    r"""CREATE FUNCTION curation_dialogue_search_refresh(ids bigint[]) RETURNS void
        LANGUAGE sql AS $$
        INSERT INTO curation_dialogue_search (dialogue_id, document)
        SELECT d.id, strip(to_tsvector('simple', d.description || E'\n' || coalesce((
            SELECT string_agg(
                t.text || CASE WHEN t.final_text IS NOT NULL AND t.final_text <> t.text
                    THEN E'\n' || t.final_text ELSE '' END,
                E'\n' ORDER BY t."index")
            FROM curation_turn t WHERE t.dialogue_id = d.id), '')))
        FROM curation_dialogue d WHERE d.id = ANY(ids)
        ON CONFLICT (dialogue_id) DO UPDATE SET document = EXCLUDED.document
    $$""",
    # Inserts and deletes: once per statement (an import inserts many rows in one). Edits: per
    # row, only when the text changes (no transition tables kept for every status update).
    """CREATE FUNCTION curation_dialogue_search_dialogues() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM curation_dialogue_search_refresh(ARRAY(SELECT id FROM new_rows));
        ELSIF TG_OP = 'DELETE' THEN
            DELETE FROM curation_dialogue_search WHERE dialogue_id IN (SELECT id FROM old_rows);
        ELSE
            TRUNCATE curation_dialogue_search;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION curation_dialogue_search_turns() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM curation_dialogue_search_refresh(ARRAY(SELECT DISTINCT dialogue_id FROM new_rows));
        ELSE
            PERFORM curation_dialogue_search_refresh(ARRAY(SELECT DISTINCT dialogue_id FROM old_rows));
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION curation_dialogue_search_edited() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'curation_dialogue' THEN
            PERFORM curation_dialogue_search_refresh(ARRAY[NEW.id]);
        ELSE
            PERFORM curation_dialogue_search_refresh(ARRAY[OLD.dialogue_id, NEW.dialogue_id]);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER curation_dialogue_search_dialogue_ai AFTER INSERT ON curation_dialogue
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION curation_dialogue_search_dialogues()""",
    """CREATE TRIGGER curation_dialogue_search_dialogue_au AFTER UPDATE OF description
        ON curation_dialogue FOR EACH ROW
        WHEN (OLD.description IS DISTINCT FROM NEW.description)
        EXECUTE FUNCTION curation_dialogue_search_edited()""",
    """CREATE TRIGGER curation_dialogue_search_dialogue_ad AFTER DELETE ON curation_dialogue
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION curation_dialogue_search_dialogues()""",
    """CREATE TRIGGER curation_dialogue_search_dialogue_at AFTER TRUNCATE ON curation_dialogue
        FOR EACH STATEMENT EXECUTE FUNCTION curation_dialogue_search_dialogues()""",
    """CREATE TRIGGER curation_dialogue_search_turn_ai AFTER INSERT ON curation_turn
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION curation_dialogue_search_turns()""",
    """CREATE TRIGGER curation_dialogue_search_turn_au AFTER UPDATE OF text, final_text, dialogue_id
        ON curation_turn FOR EACH ROW
        WHEN (OLD.text IS DISTINCT FROM NEW.text OR OLD.final_text IS DISTINCT FROM NEW.final_text
            OR OLD.dialogue_id IS DISTINCT FROM NEW.dialogue_id)
        EXECUTE FUNCTION curation_dialogue_search_edited()""",
    """CREATE TRIGGER curation_dialogue_search_turn_ad AFTER DELETE ON curation_turn
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION curation_dialogue_search_turns()""",
    "SELECT curation_dialogue_search_refresh(ARRAY(SELECT id FROM curation_dialogue))",
]

POSTGRES_BACKWARDS = [
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_ai ON curation_dialogue",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_au ON curation_dialogue",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_ad ON curation_dialogue",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_dialogue_at ON curation_dialogue",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ai ON curation_turn",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_au ON curation_turn",
    "DROP TRIGGER IF EXISTS curation_dialogue_search_turn_ad ON curation_turn",
    "DROP FUNCTION IF EXISTS curation_dialogue_search_edited()",
    "DROP FUNCTION IF EXISTS curation_dialogue_search_turns()",
    "DROP FUNCTION IF EXISTS curation_dialogue_search_dialogues()",
    "DROP FUNCTION IF EXISTS curation_dialogue_search_refresh(bigint[])",
    "DROP TABLE IF EXISTS curation_dialogue_search",
]


def create_sqlite_triggers(schema_editor):
    for statement in SQLITE_TRIGGERS:
        schema_editor.execute(statement)


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        for statement in SQLITE_FORWARDS:
            schema_editor.execute(statement)
        create_sqlite_triggers(schema_editor)
    elif vendor == "postgresql":
        for statement in POSTGRES_FORWARDS:
            schema_editor.execute(statement)
    # Other engines have no index: search falls back to a substring scan there.


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE_BACKWARDS, "postgresql": POSTGRES_BACKWARDS}.get(vendor, [])
    for statement in statements:
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("curation", "0010_safety_screening"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
