"""Large releases write their JSON and Parquet files in a second process while the first freezes
(curation.releases.build.ChildWriter): the same bytes as one process writes, from the freeze's
pass and from the stored snapshots, and a child that dies fails the build and says so, leaving
nothing half-written and a release that a retry finishes."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from curation.models import Candidate, Dialogue, Ranking, Release
from curation.releases import build as releases
from curation.releases.build import ReleaseWriter, new_release, write_files, writer_for
from curation.tasks import build_release
from tests.test_releases import files_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def ranked() -> None:
    """Accepted seeds, one of them with DRI candidates ranked: every kind of file has lines."""
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    dialogue = Dialogue.objects.releasable().order_by("id").first()
    turn = dialogue.turns.filter(role="supporter").order_by("index")[1]
    good = Candidate.objects.create(turn=turn, text="A kind, different reply.", strategy=None)
    poor = Candidate.objects.create(turn=turn, text="A poor reply.", strategy=turn.strategy)
    Ranking.objects.create(
        turn=turn,
        annotator=User.objects.create_user("ranker", password="pw-123456"),
        order=[[f"c{good.pk}"], [f"t{turn.pk}"], [f"c{poor.pk}"]],
        unacceptable=[],
        display_order=[],
    )


class Counted(releases.ChildWriter):
    started = 0

    def __init__(self, *args, **kwargs):
        type(self).started += 1
        super().__init__(*args, **kwargs)


@pytest.mark.dbsensitive  # snapshots come off the cursor as text or decoded, by engine
def test_a_child_writes_the_same_bytes_as_one_process(ranked, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(releases, "ChildWriter", Counted)
    settings.RELEASE_CHILD_WRITER_FROM = 1  # every release, however small
    release = new_release("r-child")
    build_release(release.pk)  # the worker's pass: freeze, the files from a child meanwhile
    release.refresh_from_db()
    assert release.status == "ready", release.error
    write_files(release, tmp_path / "child-export")  # from the stored snapshots, by a child
    assert Counted.started == 2

    settings.RELEASE_CHILD_WRITER_FROM = 0  # off: one process
    assert isinstance(writer_for(release, tmp_path / "probe", 10**6), ReleaseWriter)
    write_files(release, tmp_path / "one")
    assert Counted.started == 2
    one = files_of(tmp_path / "one")
    assert {"dpo/train.jsonl", "sft_dri/train.jsonl", "parquet/dpo/train.parquet"} <= set(one)
    assert sum(len(one[f"dpo/{s}.jsonl"]) for s in ("train", "valid", "test")) > 0
    assert files_of(release.folder) == one == files_of(tmp_path / "child-export")


def test_a_child_that_dies_fails_the_build_says_why_and_a_retry_finishes_it(
    ranked, settings, monkeypatch
):
    settings.RELEASE_CHILD_WRITER_FROM = 1

    class Killed(releases.ChildWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.child.kill()  # as the system's out-of-memory killer would

    with monkeypatch.context() as patched:
        patched.setattr(releases, "ChildWriter", Killed)
        release = new_release("r-killed")
        build_release(release.pk)
    release.refresh_from_db()
    assert release.status == "failed"
    assert release.error.startswith("RuntimeError: the release's file writer stopped")
    assert "exit status -9" in release.error
    assert not release.folder.exists()
    assert not list(Path(release.folder.parent).glob(".r-killed.tmp-*"))

    release.retry()  # what the page's "Retry build" does before queueing it again
    build_release(release.pk)
    release.refresh_from_db()
    assert release.status == "ready", release.error
    fresh = files_of(release.folder)
    write_files(Release.objects.get(pk=release.pk), release.folder.with_name("again"))
    assert fresh == files_of(release.folder.with_name("again"))


def test_a_child_that_fails_on_a_snapshot_reports_its_error(ranked, settings, tmp_path):
    release = new_release("r-bad")
    writer = releases.ChildWriter(release, tmp_path / "out")
    writer.add_stored("train", b'{"not": "a snapshot"}')  # no scene, no turns: the child fails
    with pytest.raises(RuntimeError, match=r"file writer stopped.*KeyError"):
        writer.finish()
