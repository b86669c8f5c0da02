"""In a real Chromium: the new-job form shows only the fields of the chosen kind and refuses a DRI
job with nothing to fill; relative times on the generation pages move on with the clock."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from curation.models import Dialogue, Scenario
from generation.models import GenerationJob, GenerationUnit, new_job
from tests.test_browser import (  # noqa: F401 (fixtures)
    _allow_sync_orm_beside_playwright,
    browser,
    page,
    shot,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture
def generation_studio(live_server, vocabulary_db, seeds):
    user = User.objects.create_user("gina", password="gina-pass-123")
    user.groups.add(Group.objects.get(name="lead"))
    return live_server


def log_in(page, base: str) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("gina")
    page.get_by_label("Password").fill("gina-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_picking_dri_shows_only_the_dri_fields(page, generation_studio):  # noqa: F811
    from playwright.sync_api import expect

    log_in(page, generation_studio.url)
    page.goto(f"{generation_studio.url}/generation/jobs/new/")
    per_scenario = page.get_by_label("Dialogues per scenario, per round")
    candidates = page.get_by_label("Candidates per masked turn")
    expect(page.get_by_role("heading", name="New generation job")).to_be_visible()
    expect(per_scenario).to_be_visible()
    expect(candidates).to_be_hidden()
    expect(page.locator("select[name=mode]")).to_have_count(1)
    expect(page.locator("label[for=id_token]")).to_have_count(0)

    page.get_by_role("radio", name="DRI").check()
    expect(page.get_by_role("heading", name="New DRI job")).to_be_visible()
    expect(page.get_by_role("heading", name="New generation job")).to_be_hidden()
    expect(per_scenario).to_be_hidden()
    expect(page.locator("select[name=mode]")).to_be_hidden()
    expect(candidates).to_be_visible()
    expect(page.get_by_label("Temperature")).to_be_visible()  # shared by both kinds
    shot(page, "job-new-dri")

    # No dialogue is accepted on a fresh install: refused here, with the counts, not on a worker.
    pending = Dialogue.objects.filter(status="pending").count()
    page.get_by_role("button", name="Start job").click()
    error = page.locator(".kind-dri .errorlist")
    expect(error).to_contain_text("No dialogue is accepted yet, so DRI has nothing to fill.")
    expect(error).to_contain_text(f"{pending} pending, 0 in review")
    expect(page.get_by_role("radio", name="DRI")).to_be_checked()
    expect(per_scenario).to_be_hidden()
    assert GenerationJob.objects.count() == 0

    page.get_by_role("radio", name="Self-chat").check()
    expect(per_scenario).to_be_visible()
    expect(candidates).to_be_hidden()


def test_relative_times_move_on_with_the_clock(page, generation_studio):  # noqa: F811
    from playwright.sync_api import expect

    job = new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher={"backend": "local", "model": "SmolLM2-135M-Instruct", "base_url": ""},
        sampling={"temperature": 0.9, "top_p": 0.95, "max_tokens": 1200, "seed": None},
        scenarios=[Scenario.objects.get(name="Anxiety and Panic")],
        mode=GenerationJob.Mode.TURNS,
    )
    GenerationJob.objects.filter(pk=job.pk).update(status="running")
    now = timezone.now()
    GenerationUnit.objects.create(
        job=job,
        scenario=job.scenarios.get(),
        status="running",
        claimed_by="w",
        claimed_at=now,
        heartbeat_at=now,
        calls=3,
        turns=2,
        last_call_at=now,
    )
    page.clock.install(time=datetime.now())  # the page's clock, which then runs on
    log_in(page, generation_studio.url)
    # The job page's progress is swapped in every 2 s; its times are rewritten after each swap
    # (12 s on: before the script's own 15 s timer would).
    page.goto(f"{generation_studio.url}/generation/jobs/{job.pk}/")
    answered = page.locator(".live-units time[data-relative]")
    expect(answered).to_have_text("now")
    expect(page.locator(".live-units")).to_contain_text("3 teacher calls, 0 tokens, 2 of 12 turns")
    expect(page.locator("progress.big.working")).to_have_attribute("value", "17")
    page.clock.fast_forward("00:12")
    expect(answered).to_have_text(re.compile(r"^1[2-5] seconds ago$"))
    shot(page, "job-live")

    # The job list is not polled: its times move on by the script's 15 s timer.
    page.goto(f"{generation_studio.url}/generation/jobs/")
    listed = page.locator("table.dialogues time[data-relative]")
    expect(listed).to_have_text(re.compile(r"^1[2-9] seconds ago$"))  # rewritten on load
    page.clock.fast_forward("03:00")
    expect(listed).to_have_text("3 minutes ago")
    page.clock.fast_forward("02:00:00")
    expect(listed).to_have_text("2 hours ago")
    expect(listed).to_have_attribute("title", re.compile(r"\d"))  # the full date on hover

    # The function behind it, for other pages' tests.
    assert page.evaluate("relativeTime.describe(new Date(Date.now() - 60000))") == "1 minute ago"
    three_days = timedelta(days=3) // timedelta(milliseconds=1)
    older = page.evaluate(f"relativeTime.describe(new Date(Date.now() - {three_days}))")
    assert re.search(r"\d{4}", older) and "ago" not in older
