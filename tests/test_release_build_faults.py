"""Release builds that survive faults: claimed and beaten like training jobs, recovered when
their worker dies, retried by a lead when they fail, and a release folder that is never
half-written. The pages answer in every state."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from curation.models import Dialogue, Release
from curation.releases import build as releases
from curation.releases.build import Filters, create_release, new_release
from curation.tasks import build_release
from tests.test_generation_e2e import Site
from tests.workers import celery_worker


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def accepted(seeds) -> None:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Builds the views and the command queue: run here by calling the task (no broker)."""
    sent: list[int] = []
    monkeypatch.setattr("curation.releases.views.build_release.delay_on_commit", sent.append)
    monkeypatch.setattr(
        "curation.management.commands.create_release.build_release.delay_on_commit", sent.append
    )
    return sent


def assert_complete(folder: Path) -> None:
    """Every file the manifest lists is there, as it says; nothing half-written beside it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for item in manifest["files"]:
        data = (folder / item["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (item["bytes"], item["sha256"])
    listed = {item["path"] for item in manifest["files"]} | {"manifest.json"}
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == listed
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def old(seconds: int) -> object:
    return timezone.now() - timedelta(seconds=seconds)


# ---- pages -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_and_the_page_answer_in_every_state(client, lead, accepted, settings):
    queued_one = new_release("r-queued")  # building, no worker yet, counts still {}
    running = new_release("r-running")
    running.claim("w1")
    running.beat(40)
    taken = new_release("r-taken-over")
    taken.claim("w1")
    Release.objects.filter(pk=taken.pk).update(heartbeat_at=old(settings.RELEASE_LEASE_SECONDS + 5))
    taken.claim("w2")
    failed = new_release("r-failed")
    failed.claim("w1")
    failed.fail("OSError: disk full")
    from_cli = create_release("r-cli")  # ready, no folder: its files are written on demand
    built = new_release("r-built")
    build_release(built.pk)
    empty = create_release("r-empty", Filters(statuses=[Dialogue.Status.REJECTED]))  # 0 dialogues
    client.force_login(lead)

    listing = client.get(reverse("curation-release-list"))
    assert listing.status_code == 200
    for release in (queued_one, running, taken, failed, from_cli, built, empty):
        assert release.name.encode() in listing.content
        page = client.get(reverse("curation-release", args=[release.name]))
        assert page.status_code == 200, release.name
        partial = client.get(
            reverse("curation-release", args=[release.name]),
            headers={"HX-Request": "true", "HX-Target": "release-progress"},
        )
        assert partial.status_code == 200, release.name
    assert (
        b"Waiting for a worker"
        in client.get(reverse("curation-release", args=["r-queued"])).content
    )
    assert b"attempt 2" in client.get(reverse("curation-release", args=["r-taken-over"])).content
    assert b"Retry build" in client.get(reverse("curation-release", args=["r-failed"])).content


# ---- claim, beat, recover -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_live_build_is_held_and_a_silent_one_is_taken_over(settings):
    release = new_release("r-lease")
    mine = Release.objects.get(pk=release.pk)
    assert mine.claim("w1") and (mine.worker, mine.attempts) == ("w1", 1)
    other = Release.objects.get(pk=release.pk)
    assert not other.claim("w2"), "a worker that beats holds its build"
    assert mine.beat(50)

    Release.objects.filter(pk=release.pk).update(
        heartbeat_at=old(settings.RELEASE_LEASE_SECONDS + 1)
    )
    assert other.claim("w2") and (other.worker, other.attempts) == ("w2", 2)
    assert not mine.beat(60), "the first worker learns it has lost the build"
    releases.build(mine)  # what it does then: stop, writing nothing and ending nothing
    release.refresh_from_db()
    assert (release.status, release.worker) == ("building", "w2")
    assert not release.folder.exists()
    assert not mine.finish() and not mine.fail("too late")

    build_release(release.pk)  # a redelivered task: w2 is alive, nothing happens
    assert Release.objects.get(pk=release.pk).worker == "w2"


@pytest.mark.django_db
def test_a_starting_worker_takes_back_what_its_name_held_and_what_nobody_holds(settings):
    held = new_release("r-held-by-me")
    held.claim("celery@a")
    alive = new_release("r-alive-elsewhere")
    alive.claim("celery@b")
    silent = new_release("r-silent")
    silent.claim("celery@c")
    Release.objects.filter(pk=silent.pk).update(
        heartbeat_at=old(settings.RELEASE_LEASE_SECONDS + 1)
    )
    lost = new_release("r-message-lost")  # never claimed
    done = new_release("r-done")
    done.claim("celery@a")
    done.finish()

    assert sorted(Release.recover("celery@a")) == sorted([held.pk, silent.pk, lost.pk])
    assert Release.objects.get(pk=held.pk).claim("celery@a")  # the restarted worker takes it


@pytest.mark.django_db
def test_a_starting_worker_queues_orphans_and_looks_again_at_live_builds(monkeypatch, settings):
    from types import SimpleNamespace

    from curation import tasks

    now, later = [], []
    monkeypatch.setattr(tasks.build_release, "delay", now.append)
    monkeypatch.setattr(
        tasks.build_release, "apply_async", lambda args, countdown: later.append((*args, countdown))
    )
    held = new_release("r-held-by-me")
    held.claim("celery@a")
    alive = new_release("r-alive-elsewhere")
    alive.claim("celery@b")

    def start(*queues: str) -> None:
        consume_from = {name: SimpleNamespace(name=name) for name in queues}
        app = SimpleNamespace(
            amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from))
        )
        tasks._recover_after_start(sender=SimpleNamespace(hostname="celery@a", app=app))

    start("training")  # a worker that does not serve builds leaves them alone
    assert (now, later) == ([], [])
    start("default", "generation")
    assert now == [held.pk]
    [(release_id, countdown)] = later  # when its lease would run out: taken then, if b has died
    assert release_id == alive.pk
    assert settings.RELEASE_LEASE_SECONDS - 10 < countdown <= settings.RELEASE_LEASE_SECONDS + 1


# ---- retry, temporary folders ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_failed_build_is_retried_from_its_page(
    client, lead, annotator, accepted, queued, monkeypatch
):
    client.force_login(lead)
    client.post(
        reverse("curation-release-new"),
        {
            "name": "r-retry",
            "licence": "CC BY-NC 4.0",
            "statuses": ["accepted"],
            "min_agreeing_reviews": 0,
            "dpo_pairs": "best_vs_rest",
            "dpo_min_margin": 1.0,
            "train": 80,
            "valid": 10,
            "test": 10,
        },
    )
    release = Release.objects.get(name="r-retry")
    stale = release.folder.with_name(f".{release.name}.tmp-0123456789ab")
    (stale / "sft").mkdir(parents=True)
    (stale / "sft" / "train.jsonl").write_text("half a file")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as broken:
        broken.setattr("curation.releases.build.write_parquet", disk_full)
        build_release(queued.pop())
    release.refresh_from_db()
    assert (release.status, release.error) == ("failed", "OSError: disk full")
    assert not release.folder.exists(), "a failed build leaves no half-written folder"
    assert not list(release.folder.parent.glob(".r-retry.tmp-*"))
    page = client.get(reverse("curation-release", args=[release.name]))
    retry = reverse("curation-release-retry", args=[release.name])
    assert b"Retry build" in page.content and retry.encode() in page.content

    assert client.get(retry).status_code == 405
    client.force_login(annotator)
    assert client.post(retry).status_code == 403
    client.force_login(lead)
    response = client.post(retry)
    assert response.status_code == 302 and response.url == reverse(
        "curation-release", args=[release.name]
    )
    release.refresh_from_db()
    assert (release.status, release.error, release.worker, queued) == (
        "building",
        "",
        "",
        [release.pk],
    )
    assert b"being built again" in client.get(response.url).content

    build_release(queued.pop())  # frozen by the first attempt: written from the snapshots
    release.refresh_from_db()
    assert (release.status, release.progress, release.attempts) == ("ready", 100, 2)
    assert_complete(release.folder)
    client.post(retry)  # a ready release is not built again
    assert Release.objects.get(pk=release.pk).status == "ready" and queued == []


@pytest.mark.django_db
def test_a_folder_left_by_a_deleted_namesake_is_replaced(accepted):
    first = new_release("r-again")
    build_release(first.pk)
    first.delete()  # the folder stays behind
    second = new_release("r-again", split={"train": 50, "valid": 50, "test": 0})
    build_release(second.pk)
    second.refresh_from_db()
    manifest = json.loads((second.folder / "manifest.json").read_text())
    assert (second.status, manifest["checksum"]) == ("ready", second.checksum)
    assert_complete(second.folder)


@pytest.mark.django_db
def test_training_takes_the_files_from_the_one_writer_of_the_folder(accepted):
    from training import jobs

    release = create_release("r-for-training")  # frozen on the command line: no files yet
    folder = jobs.release_files(release)
    assert folder == release.folder
    assert_complete(folder)
    written = (folder / "manifest.json").stat().st_mtime_ns
    assert jobs.release_files(release) == folder  # complete: left as it is
    assert (folder / "manifest.json").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="building"):
        jobs.release_files(new_release("r-not-yet"))


# ---- the command line -------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_release_in_the_background_queues_the_build(accepted, queued, tmp_path):
    out = StringIO()
    call_command("create_release", "r-bg", "--background", "--split", "90/10/0", stdout=out)
    release = Release.objects.get(name="r-bg")
    assert f"#{release.pk} r-bg" in out.getvalue()
    assert (release.status, release.items.count(), queued) == ("building", 0, [release.pk])
    with pytest.raises(CommandError, match="building"):
        call_command("export_release", "r-bg", "--out", str(tmp_path / "x"), stdout=StringIO())

    build_release(queued.pop())
    release.refresh_from_db()
    assert (release.status, release.counts["test"], release.items.count()) == ("ready", 0, 39)
    assert_complete(release.folder)
    call_command("export_release", "r-bg", "--out", str(tmp_path / "export"), stdout=StringIO())
    assert_complete(tmp_path / "export")
    assert files_of(tmp_path / "export") == files_of(release.folder)


# ---- a real worker killed mid-build -------------------------------------------------------------


@pytest.mark.e2e
def test_a_build_whose_worker_is_killed_is_finished_by_the_next_worker(tmp_path, redis_url):
    import redis

    # A Redis database of its own: builds go to the default queue, which other tests' workers
    # (the studio's) also serve.
    broker = redis_url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(broker).flushdb()
    site = Site(tmp_path, broker, teacher_url="http://127.0.0.1:9/v1")
    releases_dir = site.data / "media" / "releases"

    def row() -> dict:
        columns = ("status", "worker", "attempts", "checksum")
        found = site.query(
            f"SELECT {', '.join(columns)} FROM curation_release WHERE name = 'r-kill'"
        )
        return dict(zip(columns, found[0], strict=True)) if found else {}

    def worker(slow: bool):
        env = dict(site.env)
        if slow:  # each dialogue written takes a quarter of a second more: ~12 s of building
            env |= {
                "CELERY_WORKER_INCLUDE": "tests.slow_release_writer",
                "EXTES_TEST_WRITE_DELAY": "0.25",
            }
        process = celery_worker(
            "default", env, site.data / f"build-{len(site.workers)}.log", ("threads", "2"), "build"
        )
        site.workers.append(process)
        return process

    try:
        site.query("UPDATE curation_dialogue SET status = 'accepted'")
        first = worker(slow=True)
        printed = site.manage("create_release", "r-kill", "--background")
        assert "r-kill" in printed and "#" in printed
        site.wait_for(
            lambda: row().get("worker") and list(releases_dir.glob(".r-kill.tmp-*")),
            what="the build to start",
        )
        time.sleep(2)  # well into the freeze, which writes the files as it goes
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)

        killed = row()
        assert (killed["status"], killed["worker"], killed["attempts"]) == (
            "building",
            f"build@{socket.gethostname()}",
            1,
        )
        assert site.query("SELECT COUNT(*) FROM curation_releasedialogue") == [(0,)], (
            "the freeze is rolled back"
        )
        assert list(releases_dir.glob(".r-kill.tmp-*")) and not (releases_dir / "r-kill").exists()

        worker(slow=False)  # the same name: at start it takes back the build its predecessor held
        site.wait_for(
            lambda: row()["status"] != "building", timeout=60, what="the build after the restart"
        )
        done = row()
        assert (done["status"], done["attempts"]) == ("ready", 2)
        assert site.query("SELECT COUNT(*) FROM curation_releasedialogue") == [(39,)]
        assert_complete(releases_dir / "r-kill")
        assert (
            json.loads((releases_dir / "r-kill" / "manifest.json").read_text())["checksum"]
            == done["checksum"]
        )
    finally:
        site.stop()
        redis.Redis.from_url(broker).flushdb()
