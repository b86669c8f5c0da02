"""An empty split is warned of before a release is cut (the form's preview), and said on the
release's page and in its card afterwards."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curation.models import Dialogue, Release
from curation.releases.build import Filters, create_release, ensure_files, split_counts
from curation.tasks import build_release

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

SPLIT = {"statuses": ["accepted"], "min_agreeing_reviews": 0, "train": 80, "valid": 10, "test": 10}
HTMX = {"HX-Request": "true", "HX-Target": "split-preview"}


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def one_accepted() -> Dialogue:
    dialogue = Dialogue.objects.order_by("id").first()
    Dialogue.objects.filter(pk=dialogue.pk).update(status=Dialogue.Status.ACCEPTED)
    return dialogue


def test_the_preview_uses_the_builds_own_split(one_accepted):
    assert split_counts(Filters(), {"train": 80, "valid": 10, "test": 10}) == {
        "train": 1,
        "valid": 0,
        "test": 0,
    }
    release = create_release("r-tiny")
    assert release.counts == split_counts(Filters(), release.split)


def test_the_form_warns_of_an_empty_test_split_on_first_visit(client, lead, one_accepted):
    client.force_login(lead)
    body = client.get(reverse("curation-release-new")).content.decode()
    assert "With these settings: <strong>1</strong> train / <strong>0</strong> valid" in body
    assert 'id="split-warning"' in body and 'role="alert"' in body
    assert "The test split is empty: a student trained on this release cannot be evaluated." in body
    assert "Select more dialogues or raise the test share." in body
    assert "The valid split is empty" in body and "The train split is empty" not in body


def test_the_preview_follows_the_fields_as_they_change(client, lead, one_accepted):
    client.force_login(lead)
    url = reverse("curation-release-new")
    tiny = client.get(url, SPLIT, headers=HTMX).content.decode()
    # The section's content only: the section stays on the page, with its triggers.
    assert tiny.lstrip().startswith("<p>With these settings:") and "<form" not in tiny
    assert "The test split is empty" in tiny
    # Every status chosen: enough dialogues for every split, and no warning.
    everything = client.get(
        url, {**SPLIT, "statuses": [s.value for s in Dialogue.Status]}, headers=HTMX
    ).content.decode()
    # 39 seeds: the crisis gate holds 9 for a lead.
    assert "<strong>31</strong> train" in everything and "split-warning" not in everything
    # A test share of 0 empties the test split whatever the selection.
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    no_test = client.get(url, {**SPLIT, "test": 0}, headers=HTMX).content.decode()
    assert "The test split is empty" in no_test and "The valid split is empty" not in no_test
    unusable = client.get(url, {**SPLIT, "train": 0, "valid": 0, "test": 0}, headers=HTMX)
    assert b"non-zero share to see" in unusable.content


def test_no_warning_with_enough_dialogues(client, lead):
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    client.force_login(lead)
    body = client.get(reverse("curation-release-new")).content.decode()
    assert (
        "<strong>31</strong> train / <strong>4</strong> valid / <strong>4</strong> test" in body
    )  # 39 seeds
    assert "split-warning" not in body and "is empty" not in body


def test_a_refused_form_still_shows_the_warning(client, lead, one_accepted):
    client.force_login(lead)
    response = client.post(reverse("curation-release-new"), {**SPLIT, "name": "Bad Name!"})
    assert response.status_code == 200 and not Release.objects.exists()
    assert b"The test split is empty" in response.content


def test_the_release_is_allowed_and_its_page_and_card_say_the_split_is_empty(
    client, lead, one_accepted, monkeypatch
):
    monkeypatch.setattr("curation.releases.views.build_release.delay_on_commit", lambda pk: None)
    client.force_login(lead)
    data = {**SPLIT, "name": "r-tiny", "licence": "CC BY-NC 4.0", "dpo_pairs": "best_vs_rest"}
    response = client.post(reverse("curation-release-new"), {**data, "dpo_min_margin": 1})
    release = Release.objects.get()  # a warning, not an error
    page = client.get(response.url).content.decode()
    assert "r-tiny: The test split is empty" in page  # said again as it is queued
    build_release(release.pk)
    page = client.get(response.url).content.decode()
    assert 'id="split-warning"' in page
    assert "The test split is empty: a student trained on this release cannot be evaluated." in page
    card = (release.folder / "README.md").read_text()
    assert "**Warning: The test split is empty: a student trained on this release" in card
    assert "**Warning: The valid split is empty" in card


def test_a_release_with_every_split_filled_has_no_note():
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    release = create_release("r-full")
    card = (ensure_files(release) / "README.md").read_text()
    assert "Warning" not in card and "is empty" not in card
