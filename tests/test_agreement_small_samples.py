"""Agreement on little data: every figure says what it rests on, small samples are flagged, one
scale reads every kappa (below 0 included), and the page stays quick."""

from __future__ import annotations

import csv
import io
import sys

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.urls import reverse
from django.utils.html import escape

from curation.lead import agreement, insights
from curation.models import Strategy
from curation.review import reviewing

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

Q, R = "Clarification", "Reflective Statements"


def review(dialogues: int, settings, names: tuple[str, str] = ("ann-a", "ann-b")) -> None:
    """Two annotators review `dialogues` dialogues and disagree on every label: on each one's
    first four supporter turns the first says Q R Q R and the second R Q R Q."""
    settings.REVIEWS_PER_DIALOGUE = 2
    group = Group.objects.get(name="annotator")
    a, b = (User.objects.create_user(n, password="pw-123456") for n in names)
    for user in (a, b):
        user.groups.add(group)
    strategies = {name: Strategy.objects.get(name=name) for name in (Q, R)}
    for _ in range(dialogues):
        dialogue = reviewing.claim_next(a)
        assert reviewing.claim_next(b) == dialogue
        turns = list(dialogue.turns.filter(role="supporter").order_by("index")[:4])
        for user, labels in ((a, (Q, R, Q, R)), (b, (R, Q, R, Q))):
            draft = reviewing.draft_for(dialogue, user)
            for turn, name in zip(turns, labels, strict=True):
                reviewing.set_label(draft, turn, strategies[name])
            reviewing.submit(draft, "accept", [], [], "")


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()


def test_one_dialogue_shows_its_sample_size_and_that_it_is_not_reliable(client, lead, settings):
    review(1, settings)
    client.force_login(lead)
    page = client.get(reverse("curation-agreement")).content.decode()
    assert 'id="agreement-small-sample"' in page and "Too few items to read these figures" in page
    assert f"Not reliable: only 4 turns (fewer than {agreement.MIN_ITEMS})." in page
    assert "Not reliable: only 1 dialogues" in page
    assert "<th>Items</th><th>Raters</th>" in page
    summary = {
        row["figure"]: row
        for row in csv.DictReader(
            io.StringIO(
                client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
            )
        )
    }
    fleiss = summary["Fleiss' kappa, strategy labels (all annotators)"]
    assert (fleiss["items"], fleiss["unit"], fleiss["raters"]) == ("4", "turns", "2")
    decided = summary["Accept/reject: all reviewers agree"]
    assert (decided["items"], decided["unit"], decided["raters"]) == ("1", "dialogues", "2")
    assert all(row["note"] for row in summary.values())  # nothing here rests on 30 items


def test_a_negative_kappa_reads_worse_than_chance_on_the_one_scale(client, lead, settings):
    review(1, settings)
    report = insights.agreement_report()
    assert report.fleiss.value == pytest.approx(-1.0)  # every pair disagrees; p_e = 1/2
    assert report.pairs[0].value == pytest.approx(-1.0)
    client.force_login(lead)
    page = client.get(reverse("curation-agreement")).content.decode()
    assert "worse than chance" in page and "poor" not in page
    # The legend shows every band of the scale, the one below 0 first.
    legend = page[page.index('id="kappa-scale"') :]
    legend = legend[: legend.index("</div>")]
    spans = [
        legend.index(f"<strong>{escape(band.span)}</strong> {band.name}")
        for band in agreement.KAPPA_SCALE
    ]
    assert spans == sorted(spans) and agreement.KAPPA_SCALE[0].span == "< 0"
    pairs = client.get(reverse("curation-agreement-csv", args=["pairs"])).content.decode()
    [pair] = csv.DictReader(io.StringIO(pairs))
    assert (pair["reading"], pair["turns"]) == ("worse than chance", "4")


def test_enough_items_drop_the_note(client, lead, settings):
    review(8, settings)  # 32 labelled turns, 8 dialogues
    client.force_login(lead)
    summary = {
        row["figure"]: row
        for row in csv.DictReader(
            io.StringIO(
                client.get(reverse("curation-agreement-csv", args=["summary"])).content.decode()
            )
        )
    }
    assert summary["Fleiss' kappa, strategy labels (all annotators)"]["note"] == ""
    assert summary["Accept/reject: all reviewers agree"]["note"].startswith("Not reliable")


def test_the_page_draws_without_matplotlib_and_queries_do_not_grow(
    client, lead, settings, monkeypatch, django_assert_max_num_queries
):
    # The heatmaps were drawn by matplotlib on every request (about 0.7 s of a 0.8 s page).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    review(1, settings)
    client.force_login(lead)
    # 24: the report's own queries, and the stored figures' (read, compare, store, read back).
    with django_assert_max_num_queries(24):
        page = client.get(reverse("curation-agreement"))
    assert page.status_code == 200 and b'class="heatmap"' in page.content
    review(6, settings, names=("ann-c", "ann-d"))
    with django_assert_max_num_queries(24):  # the same with seven times the reviews
        assert client.get(reverse("curation-agreement")).status_code == 200
