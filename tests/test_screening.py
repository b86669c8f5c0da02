"""Held for screening (issue 14): with EXTES_SAFETY_SCREEN=worker a new dialogue waits, out of
review and releases, until the crisis gate's classifier has read it in a worker; nothing waits
for good when the broker is down or no worker runs."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.urls import reverse

from curation import screening
from curation.importing import import_file
from curation.models import Dialogue, SafetyStatus
from curation.review import reviewing
from tests.test_generation_e2e import Site
from tests.test_safety_gate import annotator, record, write
from tests.workers import celery_worker

pytestmark = pytest.mark.django_db

# A passive wish in words no rule names: the classifier's to find.
OBLIQUE = (
    "I've been giving my guitar and my books to friends, I won't be needing them where I'm going."
)
CALM = "My manager moved my deadline again and I am tired of the extra hours."


@pytest.fixture
def worker_mode(settings, monkeypatch) -> list[list[int] | None]:
    """EXTES_SAFETY_SCREEN=worker, with the task's sends recorded instead of made."""
    settings.SAFETY_SCREEN = "worker"
    sent: list[list[int] | None] = []
    monkeypatch.setattr(
        "curation.tasks.screen_dialogues_task.delay", lambda ids=None: sent.append(ids)
    )
    return sent


def test_a_new_dialogue_waits_for_the_screen_out_of_review(
    tmp_path, worker_mode, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        report = import_file(write(tmp_path / "in.json", [record(OBLIQUE), record(CALM)]), "extes")
    assert (report.imported, report.flagged, report.screening) == (2, 0, 2)
    assert "waiting for the safety screen" in "\n".join(report.lines())
    waiting = list(Dialogue.objects.order_by("id"))
    assert {d.safety_status for d in waiting} == {SafetyStatus.SCREENING}
    assert worker_mode == [[d.pk for d in waiting]], "queued once the import committed"
    assert reviewing.claim_next(annotator("a")) is None
    assert not Dialogue.objects.releasable().exists() and not Dialogue.objects.unflagged().exists()

    result = screening.screen_waiting(worker_mode[0])
    assert (result.screened, result.flagged, result.passed) == (2, 1, 1)
    at_risk, calm = Dialogue.objects.order_by("id")
    assert at_risk.safety_status == SafetyStatus.FLAGGED
    assert calm.safety_status == SafetyStatus.NONE
    reasons = at_risk.safety_notes["reasons"]
    assert at_risk.safety_notes["source"] == "import gate"
    assert [r["layer"] for r in reasons] == ["model"] and reasons[0]["text"] == OBLIQUE
    assert reasons[0]["detail"].startswith("classifier ")
    assert reviewing.claim_next(annotator("b")) == calm
    # Screening again changes nothing (each dialogue is settled once).
    assert screening.screen_waiting(worker_mode[0]).screened == 0


def test_the_screen_never_overrides_a_lead_or_an_annotator(tmp_path, worker_mode):
    import_file(write(tmp_path / "in.json", [record(OBLIQUE), record(CALM)]), "extes")
    first, second = Dialogue.objects.order_by("id")
    Dialogue.objects.filter(pk=first.pk).update(safety_status=SafetyStatus.EXCLUDED)
    Dialogue.objects.filter(pk=second.pk).update(safety_status=SafetyStatus.FLAGGED)
    assert screening.screen_waiting().screened == 0
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.safety_status, second.safety_status) == ("excluded", "flagged")


def test_with_the_broker_down_dialogues_wait_and_the_lead_is_told(
    tmp_path, settings, client, monkeypatch, django_capture_on_commit_callbacks
):
    from config.celery import app
    from tests.test_broker_down import DOWN

    settings.SAFETY_SCREEN = "worker"
    settings.CELERY_BROKER_URL = DOWN
    monkeypatch.setattr(app.conf, "broker_url", DOWN)
    monkeypatch.setattr(app, "_pool", None)
    monkeypatch.setattr(app.amqp, "_producer_pool", None)
    with django_capture_on_commit_callbacks(execute=True):
        report = import_file(write(tmp_path / "in.json", [record(CALM)]), "extes")
    assert report.imported == 1  # the import itself is not lost
    assert Dialogue.objects.get().safety_status == SafetyStatus.SCREENING
    lead = User.objects.create_user("lena", password="pw-123456")
    lead.groups.add(Group.objects.get(name="lead"))
    client.force_login(lead)
    page = client.get(reverse("curation-safety")).content.decode()
    assert "1 new dialogue waits for the safety screen" in page
    answer = client.post(reverse("curation-safety-screen"), follow=True).content.decode()
    assert "cannot be reached" in answer and "screen_safety" in answer
    out = StringIO()
    call_command("screen_safety", stdout=out)
    assert "screened 1: 0 flagged, 1 passed" in out.getvalue()
    assert Dialogue.objects.get().safety_status == SafetyStatus.NONE
    out = StringIO()
    call_command("screen_safety", stdout=out)
    assert "no dialogue is waiting" in out.getvalue()


def test_inline_screens_where_created_and_off_leaves_the_rules(tmp_path, settings):
    settings.SAFETY_SCREEN = "inline"
    report = import_file(write(tmp_path / "a.json", [record(OBLIQUE)]), "extes")
    assert (report.flagged, report.screening) == (1, 0)
    assert Dialogue.objects.get().safety_status == SafetyStatus.FLAGGED
    settings.SAFETY_SCREEN = "off"
    Dialogue.objects.all().delete()
    import_file(write(tmp_path / "b.json", [record(OBLIQUE)]), "extes")
    assert Dialogue.objects.get().safety_status == SafetyStatus.NONE  # no rule names it


def test_the_safety_queue_shows_each_layers_reasons(tmp_path, client):
    rules_and_model = "I feel like ending my life. " + OBLIQUE
    import_file(write(tmp_path / "in.json", [record(rules_and_model)]), "extes")
    lead = User.objects.create_user("lena", password="pw-123456")
    lead.groups.add(Group.objects.get(name="lead"))
    client.force_login(lead)
    page = client.get(reverse("curation-safety")).content.decode()
    assert '<span class="pill">rule</span> suicide' in page
    assert '<span class="pill">classifier</span>' in page and "like “" in page


@pytest.mark.e2e
def test_a_worker_screens_what_waited_while_none_ran(tmp_path, redis_url):
    import redis

    broker = redis_url.rsplit("/", 1)[0] + "/12"  # a queue of its own
    redis.Redis.from_url(broker).flushdb()
    site = Site(tmp_path, broker, teacher_url="http://127.0.0.1:9/v1")
    site.env["EXTES_SAFETY_SCREEN"] = "worker"
    try:
        path = write(tmp_path / "in.json", [record(OBLIQUE), record(CALM)])
        printed = site.manage("import_dialogues", str(path), "--format", "extes")
        assert "waiting for the safety screen (a worker screens them before review): 2" in printed
        redis.Redis.from_url(broker).flushdb()  # the messages are lost: no worker was there

        def statuses() -> list[str]:
            return [
                s
                for (s,) in site.query(
                    "SELECT safety_status FROM curation_dialogue WHERE origin = 'imported' "
                    "ORDER BY id"
                )
            ]

        assert statuses() == ["screening", "screening"]
        site.workers.append(
            celery_worker("default", site.env, site.data / "screen.log", ("threads", "2"), "screen")
        )
        site.wait_for(lambda: "screening" not in statuses(), timeout=120, what="the screen")
        assert statuses() == ["flagged", "none"]
    finally:
        site.stop()
        redis.Redis.from_url(broker).flushdb()


def test_a_reviewers_crisis_flag_takes_the_dialogue_from_the_other_reviewer(tmp_path):
    import_file(write(tmp_path / "in.json", [record(CALM), record(CALM + " Again.")]), "extes")
    first, second = annotator("a"), annotator("b")
    held = reviewing.claim_next(first)
    assert held is not None and reviewing.claim_next(second) == held  # both review it
    held.flag_crisis(first, "the seeker mentions a plan")
    assert reviewing.held_by(second) is None
    other = reviewing.claim_next(second)  # their next request
    assert other is not None and other != held
    assert reviewing.claim_next(first) != held


def test_a_sweep_leaves_what_waits_to_the_worker_already_screening(
    tmp_path, worker_mode, settings, redis_url, monkeypatch
):
    """One screener at a time (a lock in Redis): a message that finds it taken returns at once
    and asks for one sweep a lease later, however many found it taken, in case the holder
    died."""
    settings.REDIS_URL = redis_url
    import_file(write(tmp_path / "in.json", [record(OBLIQUE), record(CALM)]), "extes")
    later: list[float] = []
    monkeypatch.setattr(screening, "send_later", later.append)
    client = screening._redis()
    client.delete(screening._key("screening-again"))
    holder = client.lock(screening._key("screening"), timeout=30)
    assert holder.acquire(blocking=False)
    try:
        assert screening.sweep().screened == 0
        assert screening.sweep().screened == 0
        assert later == [screening.SWEEP_LEASE]
        assert screening.waiting_count() == 2
    finally:
        holder.release()
        client.delete(screening._key("screening-again"))
    report = screening.sweep()
    assert (report.screened, report.flagged, report.passed) == (2, 1, 1)
    assert screening.waiting_count() == 0


def test_a_sweep_without_redis_screens_what_waits_unlocked(tmp_path, worker_mode, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    import_file(write(tmp_path / "in.json", [record(CALM)]), "extes")
    assert screening.sweep().passed == 1
    assert Dialogue.objects.get().safety_status == SafetyStatus.NONE


@pytest.mark.e2e
def test_generated_dialogues_are_screened_by_the_screening_worker(tmp_path, redis_url):
    """The default placement end to end: a generation worker stores dialogues SCREENING and a
    worker on the default queue screens them, with a real Redis and real worker processes."""
    import redis

    from tests.fake_teacher import FakeTeacher
    from tests.test_generation_e2e import queued_job_id

    broker = redis_url.rsplit("/", 1)[0] + "/10"  # a queue of its own
    redis.Redis.from_url(broker).flushdb()
    with FakeTeacher(latency=0.05) as fake:
        site = Site(tmp_path, broker, fake.url)
        site.env["EXTES_SAFETY_SCREEN"] = "worker"
        try:
            site.start_worker("gen")
            site.start_worker("screen", queue="default", pool=("threads", "2"))
            job_id = queued_job_id(
                site.manage(
                    "generate",
                    "--scenario",
                    "Academic Stress",
                    "--count",
                    "4",
                    "--duplicate-threshold",
                    "0",
                )
            )
            site.wait_for(lambda: site.job_status(job_id) == "completed", what="the job")
            screened = (
                "SELECT safety_status, json_extract(safety_notes, '$.screened.layers') "
                "FROM curation_dialogue WHERE origin = 'generated'"
            )
            site.wait_for(
                lambda: all(s != "screening" for s, _ in site.query(screened)),
                timeout=120,
                what="the screen of the generated dialogues",
            )
            rows = site.query(screened)
            assert len(rows) == 4
            assert all(status in ("none", "flagged") and layers for status, layers in rows), rows
            screen_log = (site.data / "screen-1.log").read_text()
            assert "safety screen: screened" in screen_log, "the screening worker screened them"
        finally:
            site.stop()
            redis.Redis.from_url(broker).flushdb()


def test_a_sweep_whose_lock_lapses_mid_batch_takes_it_again_and_finishes(
    tmp_path, worker_mode, settings, redis_url, monkeypatch
):
    """A batch that outlasts the lease (a slow machine) loses the lock: the sweep takes it
    again and screens the rest, instead of failing with what it has not screened waiting."""
    settings.REDIS_URL = redis_url
    monkeypatch.setattr(screening, "SWEEP", 1)
    import_file(write(tmp_path / "in.json", [record(OBLIQUE), record(CALM)]), "extes")
    client = screening._redis()
    real = screening.screen_waiting
    batches: list[int] = []

    def slow_batch(*args, **kwargs):
        report = real(*args, **kwargs)
        batches.append(report.screened)
        client.delete(screening._key("screening"))  # the lease ran out meanwhile
        return report

    monkeypatch.setattr(screening, "screen_waiting", slow_batch)
    report = screening.sweep()
    assert (report.screened, report.flagged, report.passed) == (2, 1, 1)
    assert screening.waiting_count() == 0
    assert batches[:2] == [1, 1]
