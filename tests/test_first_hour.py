"""The README's "Your first hour", followed click by click in a real Chromium.

The studio runs as `make run` runs it (`python -m config.studio`: migrate, seeds, demo accounts,
Celery workers, the web server) on a fresh data folder; the teacher is the fake OpenAI-compatible
server and the student's base the trainer's tiny random Llama, so the whole hour takes about a
minute here. Each step leaves a screenshot `first-hour-NN-….png` (linked from the README) and its
duration in `test-results/first-hour-timings.txt`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests import test_browser, test_training_sft
from tests.fake_teacher import FakeTeacher
from tests.test_studio_e2e import Studio

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PASSWORD = "first-hour-password"
# EXTES_FIRST_HOUR_REAL=1: the same clicks with the studio's own defaults (the local SmolLM2 as
# teacher and as the student's base, default steps and evaluation), to time a real first hour.
REAL = os.environ.get("EXTES_FIRST_HOUR_REAL") == "1"
REVIEWED = 5  # dialogues both annotators review: enough for a release with a test split

_allow_sync_orm_beside_playwright = test_browser._allow_sync_orm_beside_playwright
browser = test_browser.browser
page = test_browser.page
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base


class Hour:
    """The running studio, a browser page, and the clock of each step."""

    def __init__(self, studio: Studio, page) -> None:
        self.studio = studio
        self.page = page
        self.url = f"http://127.0.0.1:{studio.port}"
        self.steps: list[tuple[str, float]] = []
        self.started = time.monotonic()

    def step(self, name: str, shot: bool = True) -> None:
        """Ends the step running now: its time, and its screenshot unless one was taken."""
        now = time.monotonic()
        if shot:
            self.shot(name)
        self.steps.append((name, now - self.started))
        self.started = now

    def shot(self, name: str) -> None:
        test_browser.shot(self.page, f"first-hour-{len(self.steps) + 1:02d}-{name}")

    def log_in(self, name: str) -> None:
        from playwright.sync_api import expect

        self.page.context.clear_cookies()
        self.page.goto(f"{self.url}/login/")
        self.page.get_by_label("Username").fill(name)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.get_by_role("button", name="Log out")).to_be_visible()


@pytest.fixture
def hour(tmp_path, redis_url, page, tiny_base):
    base = redis_url.rsplit("/", 1)[0]
    with FakeTeacher() as teacher:
        fakes = {
            "EXTES_TEACHER_BASE_URL": teacher.url,
            "EXTES_TEACHER_MODEL": "fake-teacher",
            "EXTES_TEACHER_API_KEY": "sk-first-hour",
            "EXTES_EVAL_LIMIT": "2",  # the tiny model's replies are noise: two show the table
            "EXTES_EVAL_MAX_NEW_TOKENS": "4",
        }
        studio = Studio(
            tmp_path / "var",
            f"{base}/12",  # a Redis database of its own: no other test's worker takes its tasks
            EXTES_DEMO_PASSWORD=PASSWORD,
            **({} if REAL else fakes),
        )
        try:
            studio.wait_for("Press Ctrl-C to stop.", timeout=180)
            yield Hour(studio, page)
        finally:
            test_browser.shot(page, "first-hour-last")  # where it stopped, when it failed
            studio.stop()


def test_the_first_hour_from_the_seeds_to_an_evaluated_student(hour, tiny_base):
    from playwright.sync_api import expect

    page = hour.page
    assert "annotator2" in hour.studio.output  # the demo has both reviewers a dialogue needs

    # 1. An annotator lands on Review, which says what waits and how to start.
    hour.log_in("annotator")
    expect(page.get_by_role("heading", name="Review")).to_be_visible()
    expect(page.locator("main")).to_contain_text("39")  # 48 seeds; the crisis gate holds 9
    hour.step("review-home")

    # 2. Both annotators review the first dialogues; annotator2 rejects the first one.
    for name in ("annotator", "annotator2"):
        hour.log_in(name)
        page.get_by_role("button", name=re.compile("Start reviewing")).click()
        for position in range(REVIEWED):
            expect(page).to_have_url(re.compile(r"/review/\d+/$"))
            url = page.url
            if name == "annotator2" and position == 0:
                reasons = page.get_by_role("group", name=re.compile("Reasons"))
                reasons.get_by_label("Unrealistic").check()
                page.locator("#reject").click()
            else:
                page.locator("#accept").click()  # a click decides at once; a key asks first
            expect(page).not_to_have_url(url)
        hour.step(f"reviews-{name}")

    # 3. The lead settles the disagreement.
    hour.log_in("lead")
    page.get_by_role("link", name="Lead", exact=True).click()
    page.get_by_role("link", name="Adjudication", exact=True).click()
    expect(page.locator("#adjudication-queue")).to_contain_text("accept vs reject")
    page.get_by_role("link", name="Start with the oldest").click()
    page.get_by_label("Accept").check()
    page.get_by_label("Why (kept with the decision)").fill("Reads true; the reject was a slip.")
    page.get_by_role("button", name="Settle it").click()
    expect(page.get_by_text("No disagreement waits for you.")).to_be_visible()
    hour.step("adjudication")

    # 4. A DRI job on the accepted dialogues, with the configured teacher.
    page.get_by_role("link", name="Generation", exact=True).click()
    page.get_by_role("link", name="New DRI job").click()
    expect(page.get_by_label("Take dialogues that are")).to_have_value("accepted")
    page.get_by_role("button", name="Start job").click()
    expect(page.get_by_text("Completed", exact=True)).to_be_visible(
        timeout=(3600 if REAL else 120) * 1000
    )
    expect(page.locator("main")).to_contain_text(f"{REVIEWED * 4} candidates created")
    hour.step("dri-job")

    # 5. An annotator ranks the replies of every masked turn.
    hour.log_in("annotator")
    page.get_by_role("button", name="Rank DRI replies").click()
    ranked = 0
    while re.search(r"/rank/\d+/$", page.url):
        url = page.url
        candidates = page.locator(".candidate")
        expect(candidates.first).to_be_visible()
        for index in range(candidates.count()):
            candidates.nth(index).get_by_label("Rank").fill(str(min(index + 1, 3)))
        if ranked == 0:
            hour.shot("ranking")
            # After a full-page screenshot Chromium shifts the page under a click: use the key.
            page.locator("#rank-submit").press("Enter")
        else:
            page.locator("#rank-submit").click()
        expect(page).not_to_have_url(url)
        ranked += 1
    assert ranked == REVIEWED
    hour.step("ranking", shot=False)

    # 6. The lead cuts a release; the default 80/10/10 split of 5 dialogues warns of no test split.
    hour.log_in("lead")
    page.get_by_role("link", name="Releases", exact=True).click()
    page.get_by_role("link", name="New release").click()
    page.get_by_label("Name").fill("first-hour-0.1.0")
    expect(page.locator("main")).to_contain_text("test split is empty")
    page.get_by_label("Valid").fill("20")
    page.get_by_label("Test").fill("20")
    page.get_by_label("Train").fill("60")
    expect(page.locator("main")).not_to_contain_text("test split is empty")
    page.get_by_role("button", name="Create release").click()
    expect(page.get_by_role("heading", name="first-hour-0.1.0")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Ready", timeout=60_000)
    hour.step("release")

    # 7. The admin trains a student on it (2 steps of the tiny model here) and reads its evaluation.
    hour.log_in("admin")
    page.get_by_role("link", name="Releases", exact=True).click()
    page.get_by_role("link", name="first-hour-0.1.0").click()
    page.get_by_role("link", name="Train a student on this release").click()
    expect(page.get_by_role("heading", name="Train a student")).to_be_visible()
    if not REAL:
        page.get_by_label("Base model").fill(str(tiny_base))
        page.get_by_label("Max steps").fill("2")
    hour.shot("training-form")
    page.get_by_role("button", name="Start training").click()
    hour.step("training-form", shot=False)
    live = page.locator("#live")
    expect(live.locator("table.evaluation")).to_contain_text(
        "Unigram F1", timeout=(3600 if REAL else 300) * 1000
    )
    expect(live).to_contain_text("Differences are not coloured")
    if not REAL:
        expect(live).to_contain_text("2 replies scored")
    hour.step("evaluation")

    total = sum(seconds for _, seconds in hour.steps)
    lines = [f"{name} seconds={seconds:.1f}" for name, seconds in hour.steps]
    Path(test_browser.SCREENSHOTS.parent / "first-hour-timings.txt").write_text(
        "\n".join([*lines, f"total seconds={total:.1f}", ""])
    )
    print("\n".join(lines))
