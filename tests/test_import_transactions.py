"""Idempotency and atomicity of an import: run on SQLite and, by `make test`, on PostgreSQL."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import IntegrityError, transaction

from curation import importing
from curation.importing import import_file
from curation.models import Dialogue, Scenario, Strategy, Turn
from tests.conftest import DATA

pytestmark = [
    pytest.mark.dbsensitive,
    pytest.mark.usefixtures("vocabulary_db"),
]


def snapshot() -> tuple[int, int, int]:
    return Dialogue.objects.count(), Turn.objects.count(), Scenario.objects.count()


def test_importing_the_same_file_twice_adds_nothing(esconv_dir):
    first = import_file(esconv_dir / "valid.txt", "esconv")
    after_first = snapshot()
    second = import_file(esconv_dir / "valid.txt", "esconv")
    assert (first.imported, first.duplicates) == (195, 0)
    assert (second.imported, second.duplicates) == (0, 195)
    assert snapshot() == after_first
    assert second.new_scenarios == []


def interrupted_import(path, monkeypatch, on_batch: int, error: BaseException) -> list[int]:
    """Import PATH in batches of 50, raising ERROR when batch ON_BATCH is about to be written."""
    monkeypatch.setattr(importing, "BATCH_SIZE", 50)
    real_insert = importing._insert_batch
    calls: list[int] = []

    def insert(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_batch:
            raise error
        return real_insert(*args, **kwargs)

    with (
        mock.patch.object(importing, "_insert_batch", side_effect=insert),
        pytest.raises(type(error)),
    ):
        import_file(path, "esconv")
    return calls


def test_an_error_mid_file_leaves_the_database_as_before(esconv_dir, monkeypatch):
    before = snapshot()
    calls = interrupted_import(
        esconv_dir / "valid.txt", monkeypatch, 3, RuntimeError("disk on fire")
    )
    assert len(calls) == 3  # two batches of 50 were written before the failure
    assert snapshot() == before  # ... and rolled back, new scenarios included


def test_ctrl_c_mid_file_leaves_the_database_as_before(esconv_dir, monkeypatch):
    before = snapshot()
    calls = interrupted_import(esconv_dir / "valid.txt", monkeypatch, 2, KeyboardInterrupt())
    assert len(calls) == 2
    assert snapshot() == before


def test_a_failed_file_can_be_imported_again_completely(esconv_dir):
    with (
        mock.patch.object(importing, "_insert_batch", side_effect=RuntimeError("boom")),
        pytest.raises(RuntimeError),
    ):
        import_file(esconv_dir / "valid.txt", "esconv")
    report = import_file(esconv_dir / "valid.txt", "esconv")
    assert report.imported == 195


def test_content_hash_is_unique_in_the_database():
    import_file(DATA / "esconv_nested.json", "esconv")
    existing = Dialogue.objects.first()
    assert existing is not None
    with pytest.raises(IntegrityError), transaction.atomic():
        Dialogue.objects.create(
            scenario=existing.scenario,
            origin="imported",
            content_hash=existing.content_hash,
            raw={},
        )


def test_only_supporter_turns_carry_a_strategy():
    import_file(DATA / "esconv_nested.json", "esconv")
    seeker_turn = Turn.objects.filter(role="seeker").first()
    assert seeker_turn is not None
    seeker_turn.strategy = Strategy.objects.first()
    assert seeker_turn.strategy is not None, Strategy.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        seeker_turn.save()
