"""Agreement and dashboard figures gathered from real reviews, against values worked by hand."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from curation.lead import insights
from curation.models import Dialogue, Strategy, Turn
from curation.review import reviewing

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

Q, R = "Clarification", "Reflective Statements"


@pytest.fixture
def reviewed(settings) -> dict[str, object]:
    """Two annotators review two dialogues.

    Dialogue 1, four supporter turns labelled explicitly (the teacher's labels set to Q Q R Q):
        ann-a: Q Q R R      ann-b: Q R R R      both accept
    Dialogue 2: ann-a accepts, ann-b rejects (no labels).
    """
    settings.REVIEWS_PER_DIALOGUE = 2
    group = Group.objects.get(name="annotator")
    a, b = (User.objects.create_user(n, password="pw-123456") for n in ("ann-a", "ann-b"))
    for user in (a, b):
        user.groups.add(group)
    first = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == first
    turns = list(first.turns.filter(role="supporter").order_by("index")[:4])
    strategies = {name: Strategy.objects.get(name=name) for name in (Q, R)}
    for turn, name in zip(turns, (Q, Q, R, Q), strict=True):
        Turn.objects.filter(pk=turn.pk).update(strategy=strategies[name])
    for user, labels in ((a, (Q, Q, R, R)), (b, (Q, R, R, R))):
        draft = reviewing.draft_for(first, user)
        for turn, name in zip(turns, labels, strict=True):
            reviewing.set_label(draft, turn, strategies[name])
        reviewing.submit(draft, "accept", [], [], "")
    second = reviewing.claim_next(a)
    assert reviewing.claim_next(b) == second
    reviewing.submit(reviewing.draft_for(second, a), "accept", [], [], "")
    reviewing.submit(reviewing.draft_for(second, b), "reject", ["off_scenario"], [], "")
    third = reviewing.claim_next(a)
    reviewing.skip(third, a)
    return {"first": first, "second": second, "third": third}


def test_agreement_figures_match_the_hand_computation(reviewed):
    report = insights.agreement_report()
    assert report.labelled_turns == 4
    # Cohen, ann-a vs ann-b: p_o = 3/4; marginals a (Q .5, R .5), b (Q .25, R .75);
    # p_e = .5*.25 + .5*.75 = .5; kappa = (.75 - .5) / (1 - .5) = 0.5
    [pair] = report.pairs
    assert (pair.a, pair.b, pair.n) == ("ann-a", "ann-b", 4)
    assert pair.value == pytest.approx(0.5)
    # Fleiss, 2 raters per turn: P_i = 1, 0, 1, 1 -> P = 3/4; p_Q = 3/8, p_R = 5/8;
    # P_e = 9/64 + 25/64 = 34/64; kappa = (48/64 - 34/64) / (30/64) = 14/30
    assert report.fleiss.value == pytest.approx(14 / 30)
    # Teacher vs human majority: turn 2 is a tie (skipped); turns 1, 3, 4: teacher Q R Q,
    # majority Q R R -> p_o = 2/3; teacher (Q 2/3, R 1/3), majority (Q 1/3, R 2/3);
    # p_e = 2/9 + 2/9 = 4/9; kappa = (6/9 - 4/9) / (5/9) = 0.4
    assert report.teacher.value == pytest.approx(0.4) and report.teacher.ties == 1
    # Accept/reject: dialogue 1 agrees, dialogue 2 does not -> 1/2.
    assert report.decisions.all_agree == pytest.approx(0.5) and report.decisions.n == 2
    # Confusion, annotator vs annotator (symmetric): Q-Q 2 (one agreeing pair counted both
    # ways), R-R 4, Q-R 1 and R-Q 1.
    cells = dict(zip(report.humans.labels, report.humans.matrix, strict=True))
    assert cells[Q][report.humans.labels.index(Q)] == 2
    assert cells[R][report.humans.labels.index(R)] == 4
    assert cells[Q][report.humans.labels.index(R)] == 1


def test_the_agreement_page_and_its_csvs(client, lead, reviewed):
    client.force_login(lead)
    page = client.get(reverse("curation-agreement"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "0.500" in text and "0.467" in text and "0.400" in text
    assert "<svg" in text and "Teacher (rows) vs annotators" in text
    summary = list(
        csv.DictReader(
            io.StringIO(
                client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
            )
        )
    )
    fleiss = next(r for r in summary if r["figure"].startswith("Fleiss"))
    assert float(fleiss["value"]) == pytest.approx(14 / 30, abs=1e-4) and fleiss["items"] == "4"
    assert (fleiss["unit"], fleiss["raters"], fleiss["reading"]) == ("turns", "2", "moderate")
    assert fleiss["note"].startswith("Not reliable")
    per_strategy = client.get(reverse("curation-agreement-csv", args=["per_strategy"]))
    assert per_strategy["Content-Type"].startswith("text/csv")
    assert {r["strategy"] for r in csv.DictReader(io.StringIO(per_strategy.content.decode()))} == {
        Q,
        R,
    }
    confusion = client.get(reverse("curation-agreement-csv", args=["confusion_teacher"]))
    assert Q in confusion.content.decode()
    assert client.get(reverse("curation-agreement-csv", args=["nope"])).status_code == 404


def test_dashboard_counts_and_csv(client, lead, reviewed):
    client.force_login(lead)
    page = client.get(reverse("curation-dashboard"))
    assert page.status_code == 200 and b"<svg" in page.content
    rows = {
        r["annotator"]: r
        for r in csv.DictReader(
            io.StringIO(
                client.get(reverse("curation-dashboard-csv", args=["annotators"])).content.decode()
            )
        )
    }
    assert rows["ann-a"]["reviews"] == "2" and rows["ann-a"]["accepted"] == "2"
    assert rows["ann-a"]["skipped"] == "1" and rows["ann-a"]["rejected"] == "0"
    assert rows["ann-b"]["rejected"] == "1" and rows["ann-b"]["skipped"] == "0"
    assert (
        rows["ann-a"]["active_hours"] == "1" and rows["ann-a"]["reviews_per_active_hour"] == "2.0"
    )
    scenes = insights.scenario_progress().rows
    assert sum(r["total"] for r in scenes) == Dialogue.objects.count()
    assert sum(r["needs_adjudication"] for r in scenes) == 2  # labels differ; decisions differ
    queue = {r["what"]: r["count"] for r in insights.queue_state().rows}
    assert queue["open disagreements"] == 2
    strategies = {r["strategy"]: r for r in insights.strategy_distribution().rows}
    assert set(strategies) >= {Q, R} and strategies[Q]["extes_share"] > 0
    assert client.get(reverse("curation-dashboard-csv", args=["nope"])).status_code == 404


def test_an_empty_studio_shows_empty_states(client, lead):
    Dialogue.objects.all().delete()
    client.force_login(lead)
    assert b"No dialogues yet" in client.get(reverse("curation-dashboard")).content
    assert b"No submitted reviews yet" in client.get(reverse("curation-agreement")).content
    assert b"No disagreement waits" in client.get(reverse("curation-adjudication-list")).content
    assert b"Nothing waits in the safety queue" in client.get(reverse("curation-safety")).content


def test_the_release_card_kappas_agree_with_the_agreement_module(reviewed, lead, tmp_path):
    from curation.lead import agreement
    from curation.releases.build import Filters, create_release, snapshots, write_files
    from curation.releases.card import Tally

    release = create_release("with-kappas", Filters(statuses=["needs_adjudication"]))
    tally = Tally()
    items: dict[object, dict[str, str | None]] = {}
    pairs: dict[object, dict[str, str | None]] = {}
    for _, snap in snapshots(release):
        tally.add(snap)
        for turn in snap["turns"]:
            votes = snap["label_votes"].get(str(turn["index"]))
            if votes:  # raters' names do not matter to Fleiss: number them
                labels = [name for name, n in votes.items() for _ in range(n)]
                items[(snap["id"], turn["index"])] = {f"r{i}": v for i, v in enumerate(labels)}
                pairs[(snap["id"], turn["index"])] = {
                    "teacher": turn["teacher_strategy"] or "",
                    "final": turn["strategy"] or "",
                }
    assert len(items) == 4
    assert tally.fleiss_kappa() == pytest.approx(agreement.fleiss_kappa(items).value)
    assert tally.fleiss_kappa() == pytest.approx(14 / 30)
    expected = agreement.cohen_kappa(pairs, "teacher", "final").value
    assert tally.teacher_kappa() == pytest.approx(expected)
    write_files(release, tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "Fleiss' kappa of annotators' strategy labels (turns with 2+ labels): 0.467" in card
    assert "this release holds 0 cleared ones" in card


def test_the_cached_report_follows_new_reviews(reviewed, settings):
    first = insights.cached_agreement_report()
    assert insights.cached_agreement_report() is not None
    assert first.decisions.n == 2
    # A third dialogue reviewed by two: the figures move at once.
    b = User.objects.get(username="ann-b")
    c = User.objects.create_user("ann-c")
    c.groups.add(Group.objects.get(name="annotator"))
    third = reviewing.claim_next(b)  # the one ann-a skipped
    assert reviewing.claim_next(c) == third
    reviewing.submit(reviewing.draft_for(third, b), "reject", ["off_scenario"], [], "")
    reviewing.submit(reviewing.draft_for(third, c), "reject", ["off_scenario"], [], "")
    again = insights.cached_agreement_report()
    assert again.decisions.n == 3 and again.decisions.all_agree == pytest.approx(2 / 3)


def test_on_a_large_studio_a_worker_computes_the_figures_and_the_page_shows_the_last_ones(
    client, lead, reviewed, settings, monkeypatch
):
    # "Large": above the inline limit. The worker is asked through _send_refresh (its real
    # delivery is tests/test_agreement_worker.py's); here the task's work is run by hand.
    settings.LEAD_FIGURES_INLINE_MAX = 0
    sent: list[int] = []
    monkeypatch.setattr(insights, "_send_refresh", lambda: sent.append(1) or True)
    client.force_login(lead)
    url, state = reverse("curation-agreement"), reverse("curation-agreement-state")

    page = client.get(url).content.decode()
    assert "Computing the first figures" in page and 'hx-trigger="every 3s"' in page
    assert "agreement-summary" not in page
    assert client.get(reverse("curation-agreement-csv", args=["summary"])).status_code == 503
    assert client.get(url).status_code == 200
    assert sent == [1], "asked once while the request is on its way"
    assert client.get(state).status_code == 204

    insights.refresh_agreement()  # what the worker's task does
    answer = client.get(state)
    assert answer.headers["HX-Refresh"] == "true"
    page = client.get(url).content.decode()
    assert "agreement-freshness" not in page and "agreement-summary" in page
    summary = client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
    assert "Accept/reject: all reviewers agree,0.5," in summary

    # Another review lands: the page shows the last figures as such and asks for new ones.
    b = User.objects.get(username="ann-b")
    c = User.objects.create_user("ann-c")
    c.groups.add(Group.objects.get(name="annotator"))
    third = reviewed["third"]
    assert reviewing.claim_next(b) == third and reviewing.claim_next(c) == third
    reviewing.submit(reviewing.draft_for(third, b), "reject", ["off_scenario"], [], "")
    reviewing.submit(reviewing.draft_for(third, c), "reject", ["off_scenario"], [], "")
    page = client.get(url).content.decode()
    assert "Figures as of" in page and "a worker is computing new figures" in page
    assert "agreement-summary" in page  # the last figures, still readable
    assert sent == [1, 1]
    stale = client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
    assert stale == summary, "the CSV is what the page shows"
    assert client.get(state).status_code == 204

    insights.refresh_agreement()
    assert client.get(state).headers["HX-Refresh"] == "true"
    fresh = client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
    assert "Accept/reject: all reviewers agree,0.6667," in fresh


def test_figures_computed_from_an_earlier_start_never_replace_later_ones(reviewed):
    from datetime import timedelta

    from django.utils import timezone

    from curation.models import FigureSnapshot

    snapshot = FigureSnapshot.of("agreement")
    now = timezone.now()
    assert snapshot.store("v2", b"later", now, 1.0)
    assert not snapshot.store("v1", b"earlier", now - timedelta(seconds=5), 1.0)
    assert (snapshot.version, bytes(snapshot.payload)) == ("v2", b"later")
    # A request for new figures is sent once per version, again after REFRESH_RETRY.
    assert snapshot.ask("v3", now) and not snapshot.ask("v3", now)
    assert snapshot.ask("v4", now)
    assert snapshot.ask("v4", now + FigureSnapshot.REFRESH_RETRY + timedelta(seconds=1))


def test_stored_figures_that_no_longer_load_are_computed_again(client, lead, reviewed):
    from curation.models import FigureSnapshot

    insights.refresh_agreement()
    # As an older version of the report's classes would have left them.
    FigureSnapshot.objects.filter(name="agreement").update(payload=b"not a pickle")
    client.force_login(lead)
    page = client.get(reverse("curation-agreement")).content.decode()
    assert "agreement-summary" in page and "agreement-freshness" not in page
    assert insights.agreement_up_to_date()
