"""In a real Chromium: a lead cuts a release, watches it build, and downloads its files; an
annotator cannot download them."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction

from curation.models import Dialogue
from tests.test_browser import (  # noqa: F401 (fixtures)
    _allow_sync_orm_beside_playwright,
    browser,
    page,
    shot,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture
def release_studio(live_server, vocabulary_db, seeds, settings, tmp_path, monkeypatch):
    from curation.releases import views as release_views
    from curation.tasks import build_release

    settings.MEDIA_ROOT = tmp_path / "media"
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    # The build runs in the server's thread after the commit, as a worker would run it.
    monkeypatch.setattr(
        release_views.build_release,
        "delay_on_commit",
        lambda pk: transaction.on_commit(lambda: build_release(pk)),
    )
    for name, group in (("paula", "lead"), ("quinn", "annotator")):
        user = User.objects.create_user(name, password=f"{name}-pass-123")
        user.groups.add(Group.objects.get(name=group))
    return live_server


def log_in(page, base: str, name: str) -> None:  # noqa: F811
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(f"{name}-pass-123")
    page.get_by_role("button", name="Log in").click()


def test_a_lead_cuts_a_release_and_downloads_its_files(browser, page, release_studio, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    log_in(page, release_studio.url, "paula")
    page.get_by_role("link", name="Releases", exact=True).click()
    expect(page.get_by_text("No release yet.")).to_be_visible()
    page.get_by_role("link", name="New release").click()
    page.get_by_label("Name").fill("extes-curated-1.0.0")
    page.get_by_label("Notes").fill("First cut from the seeds.")
    page.get_by_role("button", name="Create release").click()

    expect(page.get_by_role("heading", name="extes-curated-1.0.0")).to_be_visible()
    expect(page.locator("#release-progress")).to_contain_text("Ready", timeout=60_000)
    expect(page.get_by_role("link", name="sft/train.jsonl")).to_be_visible()
    expect(page.get_by_alt_text("Dialogues per scenario")).to_be_visible()
    expect(page.get_by_role("heading", name="Dataset card")).to_be_visible()
    expect(page.locator("#dataset-card table").first).to_be_visible()  # Markdown, rendered
    expect(page.locator("#split-warning")).to_have_count(0)
    shot(page, "release")

    with page.expect_download() as info:
        page.get_by_role("link", name="extes.json", exact=True).click()
    saved = tmp_path / "extes.json"
    info.value.save_as(saved)
    records = json.loads(saved.read_text(encoding="utf-8"))
    assert len(records) == Dialogue.objects.releasable().count() == 39  # 9 seeds held
    with page.expect_download() as info:
        page.get_by_role("link", name="sft/train.jsonl").click()
    train = tmp_path / "train.jsonl"
    info.value.save_as(train)
    first = json.loads(train.read_text(encoding="utf-8").splitlines()[0])
    assert first["messages"][0]["role"] == "system"

    # An annotator gets a refusal, not the file.
    other = browser.new_context()
    annotator = other.new_page()
    log_in(annotator, release_studio.url, "quinn")
    response = annotator.goto(f"{release_studio.url}/releases/extes-curated-1.0.0/files/extes.json")
    assert response is not None and response.status == 403
    expect(annotator.get_by_role("link", name="Releases")).to_have_count(0)
    other.close()
    assert re.fullmatch(r"[0-9a-f]{64}", page.locator("#release-progress code").first.inner_text())


def test_the_form_warns_of_an_empty_split_as_the_shares_change(page, release_studio):  # noqa: F811
    from playwright.sync_api import expect

    log_in(page, release_studio.url, "paula")
    page.goto(f"{release_studio.url}/releases/new/")
    preview = page.locator("#split-preview")
    expect(preview).to_contain_text("31 train / 4 valid / 4 test")
    expect(page.locator("#split-warning")).to_have_count(0)
    page.get_by_label("Test", exact=True).fill("0")
    page.get_by_label("Test", exact=True).blur()
    expect(page.get_by_role("alert")).to_contain_text("The test split is empty")
    expect(preview).to_contain_text("0 test")
    shot(page, "release-empty-split")
    page.get_by_label("Test", exact=True).fill("10")  # typing alone updates it too
    expect(preview).to_contain_text("4 test")
    expect(page.locator("#split-warning")).to_have_count(0)
