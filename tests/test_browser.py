"""In a real Chromium: a new user's first minutes (log in, browse, filter, read a dialogue), and a
lead starting a generation job whose dialogues a real Celery worker makes while the page watches."""

from __future__ import annotations

import os
import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from curation.models import Dialogue, Scenario

# Screenshots land here (git-ignored) and the README links them.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-results" / "screenshots"

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


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


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
    user.groups.add(Group.objects.get(name="lead"))
    return live_server


def test_log_in_browse_filter_and_read(page, studio):
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
    shot(page, "dialogue")
    assert (SCREENSHOTS / "dialogue.png").stat().st_size > 10_000

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/"))


@pytest.fixture
def lead_studio(live_server, vocabulary_db, seeds, redis_url, monkeypatch, tmp_path):
    """The live server plus a real worker process on the same (file) database and a fake teacher."""
    from django.db import connection, transaction
    from kombu import Connection

    from generation import views
    from generation.tasks import start_job
    from tests.fake_teacher import FakeTeacher
    from tests.workers import celery_worker

    user = User.objects.create_user("leo", password="leo-pass-123")
    user.groups.add(Group.objects.get(name="lead"))
    queue = f"generation-browser-{uuid.uuid4().hex[:8]}"
    with FakeTeacher(latency=0.3) as fake:
        monkeypatch.setenv("EXTES_TEACHER_BASE_URL", fake.url)
        monkeypatch.setenv("EXTES_TEACHER_MODEL", "fake-teacher")

        def enqueue(job_id: int) -> None:
            def send() -> None:
                with Connection(redis_url) as broker:
                    start_job.apply_async(args=[job_id], queue=queue, connection=broker)

            transaction.on_commit(send)

        monkeypatch.setattr(views.start_job, "delay_on_commit", enqueue)
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        env |= {
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
            "REDIS_URL": redis_url,
            "EXTES_GENERATION_QUEUE": queue,
            "EXTES_DATA_DIR": str(tmp_path),
        }
        worker = celery_worker(queue, env, tmp_path / "worker.log", ("threads", "4"))
        try:
            yield live_server
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)


def test_lead_starts_a_job_and_watches_dialogues_arrive(page, lead_studio):
    from playwright.sync_api import expect

    page.goto(f"{lead_studio.url}/login/")
    page.get_by_label("Username").fill("leo")
    page.get_by_label("Password").fill("leo-pass-123")
    page.get_by_role("button", name="Log in").click()

    page.get_by_role("link", name="Generation").click()
    expect(page.get_by_text("No generation job yet.")).to_be_visible()
    page.get_by_role("link", name="New generation job").click()
    page.get_by_label("Anxiety and Panic").check()
    page.get_by_label("Dialogues per scenario, per round").fill("3")
    page.get_by_label("Teacher").select_option("http")
    expect(page.get_by_label("Teacher")).to_contain_text("fake-teacher at http://127.0.0.1:")
    page.get_by_role("button", name="Start job").click()

    expect(page.get_by_role("heading", name=re.compile(r"Self-chat job #\d+"))).to_be_visible()
    expect(page.locator("#progress")).to_contain_text("Completed", timeout=60_000)
    expect(page.locator("#progress")).to_contain_text("3 of 3 units finished")
    expect(page.locator("#progress")).to_contain_text("3 dialogues created")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator("#progress li")).to_have_count(3)  # the latest dialogues, linked
    shot(page, "job")

    page.get_by_role("link", name="Dialogues").click()
    page.get_by_label("Origin").select_option("generated")
    expect(page.locator("table.dialogues tbody tr")).to_have_count(3)
    expect(page.locator("table.dialogues tbody tr").first).to_contain_text("Pending")
    assert Dialogue.objects.filter(origin="generated", status="pending").count() == 3


@pytest.fixture
def review_studio(live_server, vocabulary_db, seeds, settings):
    settings.REVIEWS_PER_DIALOGUE = 2
    for name in ("rita", "sam"):
        user = User.objects.create_user(name, password=f"{name}-pass-123")
        user.groups.add(Group.objects.get(name="annotator"))
    return live_server


def log_in(page, base: str, name: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(f"{name}-pass-123")
    page.get_by_role("button", name="Log in").click()


def test_an_annotator_reviews_with_the_keyboard_alone(page, review_studio):
    from playwright.sync_api import expect

    from curation.models import Review, TurnLabel

    log_in(page, review_studio.url, "rita")
    page.goto(f"{review_studio.url}/review/")
    page.keyboard.press("n")
    expect(page).to_have_url(re.compile(r"/review/\d+/$"))
    first_url = page.url
    dialogue = Dialogue.objects.get(pk=int(first_url.rstrip("/").split("/")[-1]))
    supporter = list(dialogue.turns.filter(role="supporter").order_by("index"))

    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_be_visible()
    page.keyboard.press("Escape")
    # j to the second supporter turn, 2 sets the second strategy of the legend.
    page.keyboard.press("j")
    expect(page.locator(f"#turn-{supporter[1].pk}")).to_have_class(re.compile("current"))
    page.keyboard.press("2")
    second = page.locator(".legend li").nth(1).inner_text().split(" ", 1)[1].strip()
    expect(page.locator(f"#turn-{supporter[1].pk} .badge")).to_have_text(second)
    # c confirms the teacher's suggestion on the first turn.
    page.keyboard.press("k")
    page.keyboard.press("c")
    expect(page.locator(f"#turn-{supporter[0].pk} .badge")).to_be_visible()
    # e edits the current turn; Ctrl+Enter saves.
    page.keyboard.press("k")
    page.keyboard.press("e")
    expect(page.locator(f"#turn-{supporter[0].pk} textarea[name=text]")).to_be_focused()
    page.keyboard.type(" Take your time.")
    page.keyboard.press("Control+Enter")
    expect(page.locator(f"#turn-{supporter[0].pk} .text")).to_contain_text("Take your time.")
    shot(page, "review")
    page.keyboard.press("a")  # asks first (see test_accept_and_reject_ask_first)
    page.keyboard.press("Enter")
    expect(page).not_to_have_url(first_url)
    expect(page).to_have_url(re.compile(r"/review/\d+/$"))

    review = Review.objects.get(dialogue=dialogue, annotator__username="rita")
    assert review.decision == "accept" and review.submitted_at

    # Nineteen more, keyboard only: confirm each suggested label, then accept.
    for _ in range(19):
        url = page.url
        for _turn in range(page.locator(".turn.supporter").count()):
            page.keyboard.press("c")
        page.keyboard.press("a")
        page.keyboard.press("a")  # a again answers the question as Enter does
        expect(page).not_to_have_url(url)
    assert (
        Review.objects.filter(annotator__username="rita", submitted_at__isnull=False).count() == 20
    )
    labels = dict(TurnLabel.objects.filter(review=review).values_list("turn_id", "strategy__name"))
    assert labels[supporter[1].pk] == second
    assert labels[supporter[0].pk] == supporter[0].strategy.name
    # The edit is rita's proposal, kept with her review; the turn keeps its text until it settles.
    assert supporter[0].edits.get(review=review).after.endswith("Take your time.")
    supporter[0].refresh_from_db()
    assert not supporter[0].text.endswith("Take your time.")


def test_two_annotators_and_a_lead_cannot_see_or_change_each_others_work(browser, review_studio):
    from playwright.sync_api import expect

    from curation.models import Adjudication

    lead = User.objects.create_user("lina", password="lina-pass-123")
    lead.groups.add(Group.objects.get(name="lead"))
    pages = []
    for name in ("rita", "sam"):
        context = browser.new_context()
        page = context.new_page()
        log_in(page, review_studio.url, name)
        page.goto(f"{review_studio.url}/review/")
        page.get_by_role("button", name=re.compile("Start reviewing")).click()
        pages.append(page)
    rita, sam = pages
    assert rita.url == sam.url  # two reviews per dialogue: both hold it
    review_url = rita.url
    turn = rita.locator(".turn.supporter").first
    turn_id = turn.get_attribute("id")

    def edit(page, text):
        item = page.locator(f"#{turn_id}")
        item.locator("details.edit summary").click()
        item.locator("textarea[name=text]").fill(text)
        item.get_by_role("button", name="Save text").click()
        expect(page.locator(f"#{turn_id} .text")).to_have_text(text)

    edit(rita, "Rita's careful wording.")
    rita.locator("textarea[name=notes]").fill("RITA-PRIVATE-NOTE")
    rita.locator("textarea[name=notes]").blur()
    # A second tab of rita's stays on the dialogue.
    stale = rita.context.new_page()
    stale.goto(review_url)
    sam.reload()
    expect(sam.locator(f"#{turn_id} .text")).not_to_contain_text("Rita's careful wording.")
    expect(sam.locator("body")).not_to_contain_text("RITA-PRIVATE-NOTE")
    edit(sam, "Sam's own wording.")  # no conflict: each edit is its author's proposal
    rita.locator("#accept").click()
    expect(rita.locator(".messages")).to_contain_text("is saved")
    sam.locator("#accept").click()
    expect(sam.locator(".messages")).to_contain_text("is saved")
    expect(sam.locator("body")).not_to_contain_text("adjudication")
    # The proposals differ: a lead decides. Neither annotator is told.
    dialogue = Dialogue.objects.get(pk=int(review_url.rstrip("/").split("/")[-1]))
    assert dialogue.status == Dialogue.Status.NEEDS_ADJUDICATION
    sam.goto(f"{review_studio.url}/dialogues/{dialogue.pk}/")
    expect(sam.locator(".meta")).to_contain_text("In review")
    expect(sam.locator(".history")).not_to_contain_text("rita")
    # Rita's stale tab can change nothing any more, and says so.
    stale.locator(f"#{turn_id} details.edit summary").click()
    stale.locator(f"#{turn_id} textarea[name=text]").fill("Rita overwrites later.")
    stale.locator(f"#{turn_id}").get_by_role("button", name="Save text").click()
    expect(stale.locator("#review-alert")).to_contain_text("already submitted")
    # The lead sees both proposals and the note, and settles it.
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{review_studio.url}/login/")
    page.get_by_label("Username").fill("lina")
    page.get_by_label("Password").fill("lina-pass-123")
    page.get_by_role("button", name="Log in").click()
    adj = Adjudication.objects.get(dialogue=dialogue)
    page.goto(f"{review_studio.url}/lead/adjudication/{adj.pk}/")
    expect(page.locator("body")).to_contain_text("Rita's careful wording.")
    expect(page.locator("body")).to_contain_text("Sam's own wording.")
    expect(page.locator("#reviews")).to_contain_text("RITA-PRIVATE-NOTE")
    index = dialogue.turns.get(pk=int(turn_id.split("-")[1])).index
    page.locator(f"textarea[name=text-{index}]").fill("Sam's own wording.")
    page.get_by_label("Accept").check()
    page.locator("textarea[name=note]").fill("Sam's wording is warmer.")
    page.get_by_role("button", name="Settle it").click()
    expect(page.locator(".messages")).to_contain_text("accepted")
    settled = dialogue.turns.get(index=index)
    assert settled.final_text == "Sam's own wording." and "Rita" not in settled.text
    for p in (rita, sam, page):
        p.context.close()


def open_rank_page(page, review_studio) -> None:
    """Three DRI candidates for the first dialogue's second supporter turn, and sam ranking them."""
    from curation.models import Candidate

    turn = Dialogue.objects.order_by("id").first().turns.filter(role="supporter")[1]
    for text in ("What has helped you before?", "That sounds exhausting.", "I hear you."):
        Candidate.objects.create(turn=turn, text=text, strategy=turn.strategy)
    log_in(page, review_studio.url, "sam")
    page.goto(f"{review_studio.url}/review/")
    page.get_by_role("button", name="Rank DRI replies").click()


def test_an_annotator_ranks_replies_with_the_keyboard(page, review_studio):
    from playwright.sync_api import expect

    from curation.models import Ranking

    open_rank_page(page, review_studio)
    expect(page.get_by_role("heading", name="Which reply fits best?")).to_be_visible()
    expect(page.locator(".candidate")).to_have_count(4)
    shot(page, "rank")
    candidates = page.locator(".candidate")
    expect(candidates.nth(0)).to_be_focused()  # the keys are wired
    ranks = page.locator(".candidate input[type=number]")
    marks = page.locator(".candidate input[type=checkbox]")
    # A number ranks the focused reply and the focus stays: "3 then x" acts on one reply.
    page.keyboard.press("3")
    page.keyboard.press("x")
    expect(candidates.nth(0)).to_be_focused()
    expect(ranks.nth(0)).to_have_value("3")
    expect(marks.nth(0)).to_be_checked()
    expect(marks.nth(1)).not_to_be_checked()
    expect(ranks.nth(1)).to_have_value("")
    page.keyboard.press("9")  # more than there are replies: nothing changes
    expect(ranks.nth(0)).to_have_value("3")
    # Moving is explicit: j or the down arrow, k or the up arrow.
    for move, key in (("j", "1"), ("ArrowDown", "2"), ("j", "2"), ("k", "2"), ("ArrowUp", "1")):
        page.keyboard.press(move)
        page.keyboard.press(key)
    expect(candidates.nth(1)).to_be_focused()
    expect(candidates.nth(1)).to_have_class(re.compile("current"))
    assert [ranks.nth(i).input_value() for i in range(4)] == ["3", "1", "2", "2"]
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/review/$"))
    ranking = Ranking.objects.get(annotator__username="sam")
    shown = ranking.display_order
    assert ranking.order == [[shown[1]], sorted(shown[2:]), [shown[0]]]
    assert ranking.unacceptable == [shown[0]]


def test_a_missing_rank_keeps_everything_the_annotator_entered(page, review_studio):
    from playwright.sync_api import expect

    from curation.models import Ranking

    open_rank_page(page, review_studio)
    expect(page.locator(".candidate").first).to_be_focused()  # the keys are wired
    ranks = page.locator(".candidate input[type=number]")
    marks = page.locator(".candidate input[type=checkbox]")
    # Ranks for the first, second and last reply, the first and last marked; the third has none.
    for keys in (("1", "x"), ("j", "2"), ("j",), ("j", "3", "x")):
        for key in keys:
            page.keyboard.press(key)
    page.get_by_text("Edit the best reply (optional)").click()
    page.get_by_label("Edited best reply").fill("What has helped, even a little?")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_role("alert")).to_contain_text("Give every reply a rank")
    assert [ranks.nth(i).input_value() for i in range(4)] == ["1", "2", "", "3"]
    assert [marks.nth(i).is_checked() for i in range(4)] == [True, False, False, True]
    expect(page.get_by_label("Edited best reply")).to_be_visible()
    expect(page.get_by_label("Edited best reply")).to_have_value("What has helped, even a little?")
    assert not Ranking.objects.exists()
    # Only the missing rank to add, and everything entered before is saved.
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/review/$"))
    ranking = Ranking.objects.get(annotator__username="sam")
    shown = ranking.display_order
    assert ranking.order == [[shown[0]], sorted(shown[1:3]), [shown[3]]]
    assert ranking.unacceptable == sorted([shown[0], shown[3]])
    assert ranking.edited_best == "What has helped, even a little?"


def test_accept_and_reject_ask_first(page, review_studio, settings):
    from playwright.sync_api import expect

    from curation.models import Review

    settings.REVIEWS_PER_DIALOGUE = 1  # a submit would settle the dialogue at once
    log_in(page, review_studio.url, "rita")
    page.goto(f"{review_studio.url}/review/")
    page.keyboard.press("n")
    expect(page).to_have_url(re.compile(r"/review/\d+/$"))
    url = page.url
    dialogue = Dialogue.objects.get(pk=int(url.rstrip("/").split("/")[-1]))
    first = page.locator(".turn.supporter").first
    expect(first).to_be_focused()  # the keys are wired
    bar = page.locator("#confirm-accept")

    def still_open() -> None:
        page.wait_for_timeout(300)  # time for a submit, had one been sent
        assert page.url == url
        dialogue.refresh_from_db()
        assert dialogue.status in Dialogue.OPEN
        assert not Review.objects.filter(dialogue=dialogue, submitted_at__isnull=False).exists()

    # a alone only asks.
    page.keyboard.press("a")
    expect(bar).to_be_visible()
    expect(bar).to_contain_text("Accept this dialogue?")
    expect(bar).to_be_focused()
    still_open()
    # Esc goes back to the turn it came from; so do a click elsewhere and any other key.
    page.keyboard.press("Escape")
    expect(bar).to_be_hidden()
    expect(first).to_be_focused()
    page.keyboard.press("a")
    page.locator("h1").click()
    expect(bar).to_be_hidden()
    page.keyboard.press("a")
    page.keyboard.press("j")
    expect(bar).to_be_hidden()
    expect(page.locator(".turn.supporter").nth(1)).to_be_focused()

    # r asks for a reason first; Esc keeps the ticked reason.
    page.keyboard.press("r")
    reject_bar = page.locator("#confirm-reject")
    expect(reject_bar).to_be_visible()
    first_reason = page.locator("#reject-reasons input").first
    expect(first_reason).to_be_focused()
    page.keyboard.press("Enter")
    expect(reject_bar).to_contain_text("Tick at least one reason first.")
    still_open()
    page.keyboard.press("Space")
    page.keyboard.press("Escape")
    expect(reject_bar).to_be_hidden()
    expect(page.locator(".turn.supporter").nth(1)).to_be_focused()
    expect(first_reason).to_be_checked()
    still_open()
    # Enter on a flag ticks nothing and, unlike the browser's own Enter, does not accept.
    page.locator("input[name=flags]").first.focus()
    page.keyboard.press("Enter")
    still_open()

    # a then Enter accepts.
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    expect(page).not_to_have_url(url)
    review = Review.objects.get(dialogue=dialogue, annotator__username="rita")
    assert review.decision == "accept" and review.submitted_at
    dialogue.refresh_from_db()
    assert dialogue.status == Dialogue.Status.ACCEPTED

    # On the next one: r, Space, then r again rejects with that reason.
    url = page.url
    page.keyboard.press("r")
    page.keyboard.press("Space")
    page.keyboard.press("r")
    expect(page).not_to_have_url(url)
    rejected = Review.objects.get(dialogue_id=int(url.rstrip("/").split("/")[-1]))
    assert rejected.decision == "reject" and rejected.reasons == ["unrealistic"]


def test_without_javascript_the_buttons_still_decide(browser, review_studio):
    from playwright.sync_api import expect

    from curation.models import Review

    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, review_studio.url, "rita")
    page.goto(f"{review_studio.url}/review/")
    page.get_by_role("button", name=re.compile("Start reviewing")).click()
    expect(page.locator("#confirm-accept")).to_be_hidden()
    page.locator("#accept").click()
    expect(page.locator(".messages")).to_contain_text("is saved")
    assert Review.objects.get(annotator__username="rita").decision == "accept"
    context.close()


XSS_CORPUS = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 2">',
    '"><svg onload="window.pwned = 3">',
    "javascript:window.pwned = 4",
    '<a href="javascript:window.pwned=5">click</a>',
    "{{ 7*7 }} {% csrf_token %} ${window.pwned=6}",
    '<iframe srcdoc="<script>parent.pwned=7</script>"></iframe>',
]


def test_llm_text_never_executes_in_the_pages(page, review_studio):
    dialogue = Dialogue.objects.order_by("id").first()
    dialogue.description = XSS_CORPUS[1]
    dialogue.save()
    for turn, text in zip(dialogue.turns.order_by("index"), XSS_CORPUS, strict=False):
        turn.text = text
        turn.save()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, review_studio.url, "rita")
    page.goto(f"{review_studio.url}/review/")
    page.keyboard.press("n")
    page.wait_for_url(re.compile(r"/review/\d+/$"))
    assert page.url.rstrip("/").endswith(f"/{dialogue.pk}")
    pages = {
        page.url: XSS_CORPUS[0],  # the review page shows the turns as text
        f"{review_studio.url}/dialogues/{dialogue.pk}/": XSS_CORPUS[0],
        f"{review_studio.url}/dialogues/?q=pwned": XSS_CORPUS[1],  # the list shows descriptions
    }
    for url, visible in pages.items():
        page.goto(url)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.pwned") is None, url
        assert page.get_by_text(visible, exact=False).count() >= 1, url
    assert dialogs == []
