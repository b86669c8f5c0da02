"""Text search in the dialogue list (DialogueQuerySet.search, the index of migration 0011).

Every test runs on SQLite and, by `make test`, on PostgreSQL. On SQLite the dialogue changed
last waits outside the index until another one changes (migration 0011): the tests that depend on
it run both ways, `settled` sending it into the index first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from curation import models
from curation.models import Dialogue, Scenario, Turn

pytestmark = [pytest.mark.dbsensitive, pytest.mark.django_db]

LIST = reverse("curation-dialogue-list")
_hashes = itertools.count()


def make(description: str = "", turns: Iterable[str] = ()) -> Dialogue:
    dialogue = Dialogue.objects.create(
        scenario=Scenario.objects.order_by("id").first(),
        origin=Dialogue.Origin.IMPORTED,
        content_hash=f"search-{next(_hashes)}",
        raw={},
        description=description,
    )
    Turn.objects.bulk_create(
        Turn(dialogue=dialogue, index=i, role=("seeker", "supporter")[i % 2], text=text)
        for i, text in enumerate(turns)
    )
    return dialogue


def found(text: str) -> set[int]:
    return set(Dialogue.objects.search(text).values_list("pk", flat=True))


def waiting() -> set[int]:
    """Dialogues not in the index yet (SQLite only; PostgreSQL indexes every statement)."""
    if connection.vendor != "sqlite":
        return set()
    with connection.cursor() as cursor:
        cursor.execute("SELECT dialogue_id FROM curation_dialogue_search_pending")
        return {row[0] for row in cursor.fetchall()}


def assert_indexed_once() -> None:
    """On SQLite a dialogue is in the index or pending, not both."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM curation_dialogue_search WHERE rowid IN "
                "(SELECT dialogue_id FROM curation_dialogue_search_pending)"
            )
            assert cursor.fetchone()[0] == 0


@pytest.fixture(params=["indexed", "pending"])
def settle(request) -> Callable[[], None]:
    """Called after each change: "indexed" makes another dialogue change, which sends the
    changed one into the index; "pending" leaves it waiting (on SQLite)."""

    def indexed() -> None:
        before = waiting()
        make("filler", ["zzz"])
        assert not before & waiting()
        assert_indexed_once()

    return indexed if request.param == "indexed" else assert_indexed_once


@pytest.fixture(params=["few", "many"])
def plan(request, monkeypatch) -> None:
    """SQLite reads the matches two ways, as they are few or many (DialogueQuerySet.search):
    every search counts as one or the other here."""
    monkeypatch.setattr(models, "_SQLITE_MANY_SHARE", 1 if request.param == "few" else 10**9)


@pytest.fixture
def two(settle, plan) -> tuple[Dialogue, Dialogue]:
    job = make(
        "Lost her job at the bakery",
        ["Hi, how are you feeling today?", "I keep thinking about my manager and the layoffs."],
    )
    exam = make("Exam stress", ["My chemistry exam is tomorrow.", "Have you slept at all?"])
    settle()
    return job, exam


def test_it_finds_words_in_descriptions_and_in_turns(two):
    job, exam = two
    assert found("bakery") == {job.pk}
    assert found("layoffs") == {job.pk}
    assert found("chemistry") == {exam.pk}
    assert found("CHEMISTRY Exam") == {exam.pk}
    assert found("giraffe") == set()


def test_every_word_is_required_wherever_it_is_in_the_dialogue(two):
    job, exam = two
    assert found("bakery manager") == {job.pk}  # description and a turn
    assert found("feeling layoffs") == {job.pk}  # two turns
    assert found("bakery chemistry") == set()
    assert found("my exam") == {exam.pk}
    assert found("you") == {job.pk, exam.pk}


def test_the_last_word_is_a_prefix_and_the_others_whole_words(two):
    job, exam = two
    assert found("lost her jo") == {job.pk}
    assert found("chem") == {exam.pk}
    assert found("jo lost") == set()  # only the last word is a prefix
    assert found("akery") == set()  # no match inside a word
    assert found("the lay") == {job.pk}


# The text, and whether the dialogue about the bakery matches: its words are all that counts
# ("and" is in one of its turns, "or" and "near" are not).
@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ('"', False),
        ('"bakery', True),
        ("bakery*", True),
        ("*", False),
        ("-bakery", True),
        ("bakery AND", True),
        ("OR bakery", False),
        ("NOT", False),
        ("NEAR(bakery, lost)", False),
        ("(bakery", True),
        ("bakery)", True),
        ("description:bakery", False),
        ("turns: bakery", False),
        ("^bakery", True),
        ("bakery + lost", True),
        ("bakery' --", True),
        ("bakery & | ! :*", True),
        ("100%_done\\", False),
    ],
)
def test_query_syntax_in_the_text_is_only_text(two, client, lead, text, matches):
    job, _ = two
    assert found(text) == ({job.pk} if matches else set())
    client.force_login(lead)
    assert client.get(LIST, {"q": text}).status_code == 200


def test_text_without_a_word_falls_back_to_a_substring_scan(settle):
    puzzled = make("Why ??? is there", ["Hello"])
    make("Plain", ["Nothing odd"])
    settle()
    assert found("???") == {puzzled.pk}
    assert found("!!!") == set()


def test_the_index_follows_inserts_edits_and_deletes(two, settle):
    job, exam = two
    job.description = "Moving to another city"
    job.save()
    settle()
    assert found("bakery") == set()
    assert found("city") == {job.pk}

    turn = exam.turns.get(index=0)
    turn.text = "My biology exam is tomorrow."
    turn.save()
    settle()
    assert found("chemistry") == set()
    assert found("biology exam") == {exam.pk}

    # Settling writes the final text: both it and the text as written are found.
    turn.final_text = "My biology test is tomorrow."
    Turn.objects.bulk_update([turn], ["final_text"])
    settle()
    assert found("biology test") == {exam.pk}
    assert found("biology exam") == {exam.pk}

    exam.turns.get(index=1).delete()
    settle()
    assert found("slept") == set()
    assert found("biology") == {exam.pk}

    Turn.objects.create(dialogue=exam, index=5, role="supporter", text="Breathe slowly.")
    settle()
    assert found("breathe biology") == {exam.pk}

    exam.delete()
    settle()
    assert found("biology") == set()
    assert found("city") == {job.pk}


def test_the_list_keeps_its_order_and_pages(client, lead, settings, plan):
    settings.DIALOGUES_PER_PAGE = 3
    matching = [make(f"Story {i}", ["I lost my job"]).pk for i in range(8)]
    make("Other", ["I passed my exam"])
    client.force_login(lead)
    seen: list[int] = []
    params: dict[str, object] = {"q": "lost my jo"}
    while True:
        context = client.get(LIST, params).context
        seen.extend(d.pk for d in context["dialogues"])
        if context["older_cursor"] is None:
            break
        params = {"q": "lost my jo", "before": context["older_cursor"]}
    assert seen == sorted(matching, reverse=True)
    assert context["total"] == 8


@pytest.mark.usefixtures("vocabulary_db")
def test_the_migration_indexes_dialogues_already_there():
    call_command("migrate", "curation", "0010_safety_screening", verbosity=0)
    try:
        # With the index gone, search has nothing to read: the rows below are only in the tables.
        old = make("Written before the index", ["A conversation about gardening"])
        make("Another", ["About sailing"])
    finally:
        call_command("migrate", verbosity=0)
    assert found("gardening conversation") == {old.pk}
    assert not waiting()
    old.description = "Rewritten after"
    old.save()
    assert found("rewritten gardening") == {old.pk}


@pytest.mark.usefixtures("vocabulary_db")
def test_an_import_goes_into_the_index_together_and_as_edits_do(tmp_path, monkeypatch, plan):
    """create_dialogues writes its dialogues' documents in one statement (searchindex): the same
    documents the triggers write, nothing left pending, and the triggers on again after it."""
    import json

    from curation import importing, searchindex
    from curation.importing import import_file

    monkeypatch.setattr(importing, "BATCH_SIZE", 3)
    before = make("Written one at a time", ["About the harbour"])
    records = [
        {
            "problem_type": "ongoing depression",
            "situation": f"Flat for weeks at the lighthouse, case {n}.",
            "dialog": [
                {"text": f"I feel flat every morning, number{n}.", "speaker": "usr"},
                {"text": "How long has it been?", "speaker": "sys", "strategy": "Question"},
            ],
        }
        for n in range(7)
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert import_file(path, "esconv").imported == 7
    imported = set(Dialogue.objects.filter(origin="imported").values_list("pk", flat=True))
    imported.discard(before.pk)
    assert found("lighthouse flat morning") == imported  # descriptions and turns
    assert found("number3") == {Dialogue.objects.get(description__contains="case 3.").pk}
    assert found("harbour") == {before.pk}
    assert not waiting() & imported
    assert_indexed_once()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {searchindex.BATCH_TABLE}")
            assert cursor.fetchone()[0] == 0  # the triggers are on again
            cursor.execute(
                "SELECT count(*) FROM curation_dialogue_search WHERE rowid IN "
                f"({', '.join(str(pk) for pk in imported)})"
            )
            assert cursor.fetchone()[0] == 7  # each once
    # Later edits and inserts go through the triggers as before.
    edited = Dialogue.objects.get(description__contains="case 5.")
    edited.description = "Moved to the mountains"
    edited.save()
    make("filler", ["zzz"])
    assert found("mountains") == {edited.pk}
    assert edited.pk not in found("lighthouse")


def test_a_failed_import_batch_leaves_the_triggers_on():
    """The pause is a row inside the block's transaction: an error rolls it back with the rows."""
    from curation import searchindex

    with pytest.raises(RuntimeError), searchindex.indexed_together():
        make("Never stored", ["About the orchard"])
        raise RuntimeError("the batch failed")
    assert found("orchard") == set()
    later = make("Stored after", ["About the orchard"])
    make("filler", ["zzz"])
    assert found("orchard") == {later.pk}
