from __future__ import annotations

import pytest
from django.urls import reverse

from curation.models import Dialogue, Scenario

pytestmark = pytest.mark.django_db

LIST = reverse("curation-dialogue-list")


@pytest.fixture
def logged_in(client, lead, seeds):
    client.force_login(lead)
    return client


def detail_url(pk: int) -> str:
    return reverse("curation-dialogue-detail", args=[pk])


def test_it_requires_login(client, seeds):
    pk = Dialogue.objects.first().pk
    for url in (LIST, detail_url(pk), "/"):
        response = client.get(url, follow=True)
        assert response.redirect_chain[-1][0].startswith(reverse("login"))


def test_login_page_and_logging_in(client, annotator):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 302
    assert response.url == reverse("home")  # which sends an annotator on to Review
    assert client.get(response.url).url == reverse("curation-review-home")


def test_wrong_password_is_told(client, annotator):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert b"didn't match" in response.content


def test_logout_is_post_only(logged_in):
    assert logged_in.get(reverse("logout")).status_code == 405
    assert logged_in.post(reverse("logout")).status_code == 302
    assert logged_in.get(LIST).status_code == 302


def test_list_shows_seeds_with_counts(logged_in):
    response = logged_in.get(LIST)
    assert response.status_code == 200
    assert response.context["total"] == 48
    assert b"Pending 48" in response.content
    assert b"<html" in response.content
    assert b'hx-headers=\'{"X-CSRFToken"' in response.content


def test_list_rejects_post(logged_in):
    assert logged_in.post(LIST).status_code == 405


def test_filter_by_scenario_status_origin_and_text(logged_in):
    anxiety = Scenario.objects.get(name="Anxiety and Panic")
    response = logged_in.get(LIST, {"scenario": anxiety.pk})
    assert {d.scenario_id for d in response.context["dialogues"]} == {anxiety.pk}

    accepted = Dialogue.objects.order_by("id")[:3]
    Dialogue.objects.filter(pk__in=[d.pk for d in accepted]).update(status="accepted")
    response = logged_in.get(LIST, {"status": "accepted"})
    assert sorted(d.pk for d in response.context["dialogues"]) == sorted(d.pk for d in accepted)
    assert response.context["total"] == 3

    assert logged_in.get(LIST, {"origin": "generated"}).context["total"] == 0
    assert logged_in.get(LIST, {"origin": "seed"}).context["total"] == 48

    some_turn = Dialogue.objects.order_by("id")[5].turns.get(index=2)
    phrase = some_turn.text[:30]
    hits = logged_in.get(LIST, {"q": phrase}).context["dialogues"]
    assert some_turn.dialogue_id in {d.pk for d in hits}
    assert len(hits) < 48


def test_bad_filter_values_are_ignored(logged_in):
    response = logged_in.get(LIST, {"scenario": "abc", "status": "bogus", "before": "x"})
    assert response.status_code == 200
    assert response.context["total"] == 48


def test_htmx_request_gets_only_the_results_partial(logged_in):
    response = logged_in.get(LIST, {"origin": "seed"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert response.content.lstrip().startswith(b'<section id="results">')
    assert b"<html" not in response.content


def test_keyset_pagination_walks_every_row_once(logged_in, settings):
    settings.DIALOGUES_PER_PAGE = 10
    seen: list[int] = []
    params: dict[str, int] = {}
    pages = 0
    while True:
        context = logged_in.get(LIST, params).context
        seen.extend(d.pk for d in context["dialogues"])
        pages += 1
        if context["older_cursor"] is None:
            break
        params = {"before": context["older_cursor"]}
    assert pages == 5
    assert seen == sorted(Dialogue.objects.values_list("pk", flat=True), reverse=True)

    back = logged_in.get(LIST, {"after": seen[20]}).context
    assert [d.pk for d in back["dialogues"]] == seen[10:20]
    assert back["newer_cursor"] == seen[10]


def test_list_query_count_does_not_grow_with_rows(
    logged_in, django_assert_max_num_queries, settings
):
    settings.DIALOGUES_PER_PAGE = 40
    with django_assert_max_num_queries(8):
        logged_in.get(LIST)


def test_empty_states(client, lead):
    client.force_login(lead)
    assert b"There are no dialogues yet" in client.get(LIST).content


def test_no_match_offers_to_clear_filters(logged_in):
    assert (
        b"No dialogue matches these filters"
        in logged_in.get(LIST, {"q": "zzzz-no-such-text"}).content
    )


def test_detail_shows_turns_with_strategy_badges(logged_in):
    dialogue = Dialogue.objects.order_by("id").first()
    response = logged_in.get(detail_url(dialogue.pk))
    assert response.status_code == 200
    body = response.content.decode()
    for turn in dialogue.turns.select_related("strategy"):
        assert turn.text.replace("'", "&#x27;").replace('"', "&quot;")[:40] in body
        if turn.strategy:
            assert f'title="{turn.strategy.definition}"' in body.replace("&#x27;", "'")
    assert body.count('class="badge"') == dialogue.turns.filter(strategy__isnull=False).count()


def test_detail_of_missing_dialogue_is_404(logged_in):
    response = logged_in.get(detail_url(999_999))
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_detail_shows_repairs_and_raw_record(logged_in):
    from curation.importing import import_file
    from tests.conftest import DATA

    import_file(DATA / "drift_extes.json", "extes")
    lyon = Dialogue.objects.get(description="I moved to Lyon for work and know nobody.")
    body = logged_in.get(detail_url(lyon.pk)).content.decode()
    assert "strategy_unknown" in body
    assert "unlabelled" in body
    assert "Gentle humour" in body


def test_annotators_see_only_dialogues_they_hold_or_reviewed(client, annotator, seeds):
    from curation.review import reviewing

    client.force_login(annotator)
    assert client.get(LIST).context["total"] == 0
    held = reviewing.claim_next(annotator)
    other = Dialogue.objects.exclude(pk=held.pk).first()
    assert [d.pk for d in client.get(LIST).context["dialogues"]] == [held.pk]
    assert client.get(detail_url(held.pk)).status_code == 200
    assert client.get(detail_url(other.pk)).status_code == 404
    reviewing.submit(reviewing.draft_for(held, annotator), "accept", [], [], "")
    assert [d.pk for d in client.get(LIST).context["dialogues"]] == [held.pk]


def test_the_list_by_origin_counts_its_statuses_from_an_index(logged_in):
    """At 100,000 dialogues, counting the statuses of one origin read every row (130 ms a
    page, bench/dialogue_list.py); the (origin, status) index answers from itself."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's query plan; PostgreSQL plans by the table's size")
    with CaptureQueriesContext(connection) as queries:
        response = logged_in.get(reverse("curation-dialogue-list"), {"origin": "seed"})
    assert response.status_code == 200
    (count,) = [
        q["sql"] for q in queries if q["sql"].startswith('SELECT "curation_dialogue"."status"')
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {count}")
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "COVERING INDEX dialogue_origin_status" in plan, plan
