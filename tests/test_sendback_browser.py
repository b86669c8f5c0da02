"""In a real Chromium: a lead sends a trained student's weakest replies back to annotators from
the training job's page, an annotator ranks them without knowing which reply is the student's,
and the job's page counts the rankings."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, Permission, User

from curation.models import Candidate, Dialogue
from curation.releases.build import create_release
from tests.test_browser import (  # noqa: F401 (fixtures)
    _allow_sync_orm_beside_playwright,
    browser,
    log_in,
    page,
    shot,
)
from tests.test_sendback import WEAK, finished_job, supporter_messages

pytestmark = [pytest.mark.browser]


@pytest.fixture
def loop_studio(live_server, vocabulary_db, seeds, settings, tmp_path):
    settings.REVIEWS_PER_DIALOGUE = 1
    settings.TRAINING_DIR = tmp_path / "training"
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    release = create_release("r-loop", split={"train": 60, "valid": 20, "test": 20})
    picked = supporter_messages(release, 2)
    for _, _, turn in picked:
        for text in ("That sounds so heavy to carry.", "What has helped you before?"):
            Candidate.objects.create(turn=turn, text=text, provenance={"job": 1})
    job = finished_job(release, [(d, m) for d, m, _ in picked])
    lead = User.objects.create_user("amira", password="amira-pass-123", is_staff=True)
    lead.groups.add(Group.objects.get(name="lead"))
    lead.user_permissions.add(Permission.objects.get(codename="view_trainingjob"))
    annotator = User.objects.create_user("sam", password="sam-pass-123")
    annotator.groups.add(Group.objects.get(name="annotator"))
    return live_server, job


def test_a_lead_sends_weak_replies_back_and_an_annotator_ranks_them_blind(page, loop_studio):  # noqa: F811
    from playwright.sync_api import expect

    from curation.models import Ranking

    server, job = loop_studio
    log_in(page, server.url, "amira")
    page.goto(f"{server.url}{job.get_absolute_url()}")
    expect(page.get_by_role("heading", name="Back to annotators")).to_be_visible()
    expect(
        page.get_by_text("Not available: the release's replies carry no strategy tags")
    ).to_be_visible()
    page.get_by_label("Lowest word overlap").check()
    page.get_by_label("How many").fill("2")
    page.get_by_role("button", name="Send to annotators").click()
    expect(
        page.get_by_text("2 of the student's replies sent to annotators to rank (2 open now).")
    ).to_be_visible()
    expect(page.locator("table.sent-back tbody tr")).to_have_count(2)
    expect(page.locator("table.sent-back")).to_contain_text("0 of 1")
    shot(page, "send-back")
    page.get_by_role("button", name="Log out").click()

    log_in(page, server.url, "sam")
    page.goto(f"{server.url}/review/")
    page.get_by_role("button", name="Rank DRI replies").click()
    for _ in range(2):
        expect(page.get_by_role("heading", name="Which reply fits best?")).to_be_visible()
        replies = page.locator(".candidate")
        expect(replies).to_have_count(4)
        expect(page.locator("main")).not_to_contain_text(re.compile("student", re.I))
        ranks = page.locator(".candidate input[type=number]")
        for i in range(4):
            weak = WEAK in replies.nth(i).inner_text()
            ranks.nth(i).fill("4" if weak else str(i + 1 if i < 3 else 3))
            if weak:
                replies.nth(i).locator("input[type=checkbox]").check()
        page.get_by_role("button", name="Submit ranking").click()
    expect(page).to_have_url(re.compile(r"/review/$"))
    rankings = list(Ranking.objects.filter(annotator__username="sam", round=2))
    assert len(rankings) == 2
    students = {
        f"c{pk}" for pk in Candidate.objects.filter(author="student").values_list("pk", flat=True)
    }
    for ranking in rankings:
        [weak] = set(ranking.display_order) & students
        assert ranking.order[-1] == [weak] and ranking.unacceptable == [weak]
    page.get_by_role("button", name="Log out").click()

    log_in(page, server.url, "amira")
    page.goto(f"{server.url}{job.get_absolute_url()}")
    expect(page.get_by_text("2 replies sent back, 2 ranked by everyone needed.")).to_be_visible()
    expect(page.locator("table.sent-back")).to_contain_text("1 of 1")

    # The next round, targeted from the same evaluation: the form shows the weights.
    page.get_by_role("link", name="Plan the next generation round from this evaluation").click()
    expect(page.locator("table.plan-scenarios")).to_be_visible()
    expect(page.locator("table.plan-strategies")).to_contain_text("Targeted share")
    shot(page, "targeted-plan")
