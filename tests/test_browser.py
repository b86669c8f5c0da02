"""A new user's first minutes, in a real Chromium: log in, browse, filter, read a dialogue."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from curation.models import Dialogue, Scenario

pytestmark = [
    pytest.mark.browser,
]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module", autouse=True)
def _allow_sync_orm_beside_playwright():
    # Playwright's sync API runs an event loop in this thread while it is open; the ORM calls of
    # these tests (and the database flush after each) are still synchronous and safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture(scope="module")
def browser(_allow_sync_orm_beside_playwright):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (make test does this as root)")
    # Opened and closed per module, so its event loop never outlives these tests.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def studio(live_server, vocabulary_db, seeds):
    user = User.objects.create_user("amira", password="amira-pass-123")
    user.groups.add(Group.objects.get(name="annotator"))
    return live_server


def test_log_in_browse_filter_and_read(page, studio, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{studio.url}/")
    expect(page).to_have_url(re.compile(r"/login/"))
    page.get_by_label("Username").fill("amira")
    page.get_by_label("Password").fill("amira-pass-123")
    page.get_by_role("button", name="Log in").click()

    expect(page.get_by_role("heading", name="Dialogues")).to_be_visible()
    expect(page.locator("table.dialogues tbody tr")).to_have_count(48)
    expect(page.locator(".counts")).to_contain_text("48 dialogues")

    # Filtering swaps the results in place (htmx) and updates the address bar.
    anxiety = Scenario.objects.get(name="Anxiety and Panic")
    expected = Dialogue.objects.filter(scenario=anxiety).count()
    page.get_by_label("Scenario").select_option(label="Anxiety and Panic")
    expect(page.locator("table.dialogues tbody tr")).to_have_count(expected)
    expect(page).to_have_url(re.compile(rf"scenario={anxiety.pk}"))

    page.get_by_label("Search text").fill("zzzz-nothing-matches")
    expect(page.get_by_text("No dialogue matches these filters")).to_be_visible()
    page.get_by_role("link", name="Clear the filters").click()
    expect(page.locator("table.dialogues tbody tr")).to_have_count(48)

    first = Dialogue.objects.order_by("-id").first()
    page.locator("table.dialogues tbody tr").first.locator("td.situation a").click()
    expect(page.get_by_role("heading", name=first.scenario.name)).to_be_visible()
    badges = page.locator(".turn.supporter .badge")
    expect(badges).to_have_count(first.turns.filter(role="supporter").count())
    expect(badges.first).to_have_attribute("title", re.compile(r"\w+"))
    page.screenshot(path=str(tmp_path / "dialogue.png"), full_page=True)
    assert (tmp_path / "dialogue.png").stat().st_size > 10_000

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/"))
