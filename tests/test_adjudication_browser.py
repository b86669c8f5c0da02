"""In a real Chromium: a lead settles a disagreement on the adjudication page, then clears a
crisis flag in the safety queue (htmx swaps the row)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, User

from curation.models import Adjudication, Dialogue, Review, SafetyStatus, Strategy
from curation.review import reviewing
from tests.test_browser import (  # noqa: F401 (fixtures)
    SCREENSHOTS,
    _allow_sync_orm_beside_playwright,
    browser,
    page,
    shot,
)

pytestmark = [pytest.mark.browser]


@pytest.fixture
def disagreement(live_server, vocabulary_db, seeds, settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    group = Group.objects.get(name="annotator")
    a, b = (User.objects.create_user(n, password="pw-123456") for n in ("noor", "olek"))
    for user in (a, b):
        user.groups.add(group)
    lead = User.objects.create_user("lea", password="lea-pass-123")
    lead.groups.add(Group.objects.get(name="lead"))
    dialogue = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == dialogue
    turn = dialogue.turns.filter(role="supporter").order_by("index").first()
    for user, decision, label in (
        (a, "accept", "Reflective Statements"),
        (b, "reject", "Emotional Validation"),
    ):
        draft = reviewing.draft_for(dialogue, user)
        reviewing.set_label(draft, turn, Strategy.objects.get(name=label))
        reviewing.submit(draft, decision, [] if decision == "accept" else ["unrealistic"], [], "")
    flagged = reviewing.claim_next(a)
    reviewing.submit(
        reviewing.draft_for(flagged, a), "accept", [], [Review.Flag.CRISIS], "mentions pills"
    )
    return live_server, dialogue, turn, flagged


def test_a_lead_settles_a_disagreement_and_clears_a_crisis_flag(page, disagreement):  # noqa: F811
    from playwright.sync_api import expect

    server, dialogue, turn, flagged = disagreement
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill("lea")
    page.get_by_label("Password").fill("lea-pass-123")
    page.get_by_role("button", name="Log in").click()

    page.get_by_role("link", name="Lead", exact=True).click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.get_by_role("link", name="Adjudication", exact=True).click()
    expect(page.locator("#adjudication-queue")).to_contain_text("accept vs reject")
    expect(page.locator("#adjudication-queue")).to_contain_text("strategy labels")
    page.get_by_role("link", name="Start with the oldest").click()

    expect(
        page.get_by_role("heading", name=re.compile(rf"Dialogue #{dialogue.pk}"))
    ).to_be_visible()
    expect(page.locator("#reviews")).to_contain_text("noor")
    expect(page.locator("#reviews")).to_contain_text("olek")
    row = page.locator(f"#turn-{turn.index}")
    expect(row).to_have_class(re.compile("differs"))
    expect(row).to_contain_text("Reflective Statements")
    expect(row).to_contain_text("Emotional Validation")
    shot(page, "adjudication")
    assert (SCREENSHOTS / "adjudication.png").stat().st_size > 10_000

    page.get_by_label(f"Final strategy of turn {turn.index}", exact=True).select_option(
        "Emotional Validation"
    )
    page.get_by_label("Accept").check()
    page.get_by_label("Why (kept with the decision)").fill("Realistic; validation fits turn best.")
    page.get_by_role("button", name="Settle it").click()
    expect(page.get_by_text(f"Dialogue #{dialogue.pk} is accepted")).to_be_visible()
    expect(page.get_by_text("No disagreement waits for you.")).to_be_visible()
    settled = Adjudication.objects.get(dialogue=dialogue)
    assert settled.labels[str(turn.index)] == "Emotional Validation"
    assert Dialogue.objects.get(pk=dialogue.pk).status == Dialogue.Status.ACCEPTED

    page.get_by_role("link", name="Safety queue", exact=True).click()
    row = page.locator(f"#safety-{flagged.pk}")
    expect(row).to_contain_text("mentions pills")
    row.get_by_role("button", name="Clear").click()  # no note: the browser asks for one
    assert Dialogue.objects.get(pk=flagged.pk).safety_status == SafetyStatus.FLAGGED
    row.get_by_label(f"Note on dialogue {flagged.pk}").fill("Seeker is pointed to a crisis line.")
    row.get_by_role("button", name="Clear").click()
    expect(page.locator(f"#safety-{flagged.pk}")).to_contain_text("Cleared by a lead")
    assert Dialogue.objects.get(pk=flagged.pk).safety_status == SafetyStatus.CLEARED

    page.get_by_role("link", name="Agreement", exact=True).click()
    expect(page.locator("#agreement-summary")).to_contain_text("Accept/reject")
    shot(page, "agreement")
    page.get_by_role("link", name="Dashboard", exact=True).click()
    expect(page.get_by_role("img", name="Dialogues per scenario, by status")).to_be_visible()
    shot(page, "dashboard")
