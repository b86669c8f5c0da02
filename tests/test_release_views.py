"""Release pages: leads create, watch and download; annotators cannot; files only from the manifest."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curation.models import Dialogue, Release
from curation.tasks import build_release

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def built(monkeypatch):
    """Builds run at once, in this process, through the task's own code (no broker here)."""
    queued = []
    monkeypatch.setattr("curation.releases.views.build_release.delay_on_commit", queued.append)
    return queued


def form(**changes):
    data = {
        "name": "extes-curated-1.0.0",
        "licence": "CC BY-NC 4.0",
        "notes": "first cut",
        "statuses": ["accepted"],
        "min_agreeing_reviews": 0,
        "dri": "on",
        "dpo_pairs": "best_vs_rest",
        "dpo_min_margin": 1.0,
        "train": 80,
        "valid": 10,
        "test": 10,
    }
    data.update(changes)
    return data


def test_annotators_cannot_see_or_download_releases(client, annotator, built):
    Dialogue.objects.update(status="accepted")
    from curation.releases.build import create_release

    release = create_release("r-1")
    client.force_login(annotator)
    for url in (
        reverse("curation-release-list"),
        reverse("curation-release-new"),
        reverse("curation-release", args=[release.name]),
        reverse("curation-release-download", args=[release.name, "extes.json"]),
    ):
        assert client.get(url).status_code == 403
    assert client.post(reverse("curation-release-new"), form(name="sneaky")).status_code == 403
    assert not Release.objects.filter(name="sneaky").exists()


def test_a_lead_cuts_a_release_and_downloads_its_files(client, lead, built):
    Dialogue.objects.update(status="accepted")
    client.force_login(lead)
    assert b"No release yet." in client.get(reverse("curation-release-list")).content
    response = client.post(reverse("curation-release-new"), form())
    release = Release.objects.get()
    assert response.url == reverse("curation-release", args=[release.name])
    assert built == [release.pk]
    building = client.get(response.url).content.decode()
    assert 'hx-trigger="every 2s"' in building and "Building" in building

    build_release(release.pk)
    build_release(release.pk)  # a redelivered task does nothing
    release.refresh_from_db()
    assert (release.status, release.progress, sum(release.counts.values())) == ("ready", 100, 39)
    page = client.get(response.url, headers={"HX-Request": "true", "HX-Target": "release-progress"})
    body = page.content.decode()
    assert body.lstrip().startswith('<section id="release-progress"') and "every 2s" not in body
    for path in (
        "extes.json",
        "sft/train.jsonl",
        "parquet/sft/train.parquet",
        "README.md",
        "scenarios.png",
        "manifest.json",
    ):
        assert path in body
        download = client.get(reverse("curation-release-download", args=[release.name, path]))
        assert download.status_code == 200, path
        assert b"".join(download.streaming_content), path
    empty = client.get(reverse("curation-release-download", args=[release.name, "dpo/test.jsonl"]))
    assert empty.status_code == 200  # no rankings yet: an empty split, still listed


def test_only_files_of_the_manifest_can_be_downloaded(client, lead, built, settings):
    Dialogue.objects.update(status="accepted")
    client.force_login(lead)
    client.post(reverse("curation-release-new"), form())
    release = Release.objects.get()
    build_release(release.pk)
    (settings.MEDIA_ROOT / "secret.txt").write_text("not yours")
    for path in ("../secret.txt", "../../config/settings.py", "nope.json"):
        assert (
            client.get(reverse("curation-release-download", args=[release.name, path])).status_code
            == 404
        )


def test_names_are_unique_and_checked(client, lead, built):
    client.force_login(lead)
    client.post(reverse("curation-release-new"), form())
    again = client.post(reverse("curation-release-new"), form())
    assert again.status_code == 302 and Release.objects.count() == 1  # a double submit
    other = client.post(reverse("curation-release-new"), form(notes="another"))
    assert b"exists already" in other.content
    bad = client.post(reverse("curation-release-new"), form(name="Bad Name!"))
    assert bad.status_code == 200 and Release.objects.count() == 1


def test_a_failed_build_says_why(client, lead, built, monkeypatch):
    client.force_login(lead)
    client.post(reverse("curation-release-new"), form())
    release = Release.objects.get()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("curation.releases.build.write_parquet", broken)
    build_release(release.pk)
    release.refresh_from_db()
    assert release.status == "failed" and "disk full" in release.error
    assert b"disk full" in client.get(reverse("curation-release", args=[release.name])).content


def test_file_options_chosen_in_the_form_are_kept_by_the_release(client, lead, built, tmp_path):
    import json
    from io import StringIO

    from django.core.management import call_command

    Dialogue.objects.update(status="accepted")
    client.force_login(lead)
    client.post(reverse("curation-release-new"), form(name="tagged", strategy_tags="on"))
    release = Release.objects.get(name="tagged")
    assert release.file_options["strategy_tags"] is True
    build_release(built.pop())
    folder = release.folder
    first = json.loads((folder / "sft" / "train.jsonl").read_text().splitlines()[0])
    replies = [m["content"] for m in first["messages"] if m["role"] == "assistant"]
    assert replies and all(r.startswith("[") for r in replies)
    assert "start with their strategy in brackets" in (folder / "README.md").read_text()
    # export_release with no options writes the same files again, tags included.
    call_command("export_release", "tagged", "--out", str(tmp_path / "again"), stdout=StringIO())
    assert (tmp_path / "again" / "sft" / "train.jsonl").read_bytes() == (
        folder / "sft" / "train.jsonl"
    ).read_bytes()
    page = client.get(reverse("curation-release", args=["tagged"]))
    assert b"strategy tags in SFT texts" in page.content


def test_a_ready_release_offers_training_to_those_who_may_train(client, lead, superuser, built):
    from curation.releases.build import create_release

    Dialogue.objects.update(status="accepted")
    release = create_release("r-train")  # frozen and ready, as a finished build leaves it
    url = reverse("curation-release", args=[release.name])
    form_url = f"{reverse('admin:training_trainingjob_new')}?release={release.pk}"
    client.force_login(superuser)
    assert f'href="{form_url}"' in client.get(url).content.decode()
    assert client.get(form_url).status_code == 200  # the link opens the training form
    experiment_url = f"{reverse('training-experiment-new')}?release={release.pk}"
    assert f'href="{experiment_url}"' in client.get(url).content.decode()
    form = client.get(experiment_url).content.decode()  # the experiment form, this release chosen
    assert f'<option value="{release.pk}" selected>' in form
    client.force_login(lead)  # a lead may not train: no button that ends in a 403
    page = client.get(url).content.decode()
    assert "Train a student" not in page and "Run an experiment" not in page


def test_a_release_page_shows_its_lineage(client, lead):
    from curation.releases.build import create_release
    from training.models import Experiment, TrainingJob

    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    generated = list(Dialogue.objects.order_by("id").values_list("pk", flat=True)[:5])
    for n, pk in enumerate(generated):
        Dialogue.objects.filter(pk=pk).update(
            origin="generated", provenance={"job": 7, "round": 1 + n % 2}
        )
    first = create_release("r-line-1")
    second = create_release("r-line-2")
    assert second.previous == first
    job = TrainingJob.objects.create(release=first, variant="sft_dpo")
    experiment = Experiment.objects.create(release=first, arms=["sft", "sft_dpo"])
    client.force_login(lead)

    page = client.get(reverse("curation-release", args=[first.name])).content.decode()
    section = page[page.index('id="lineage"') :]
    seeds = first.items.count() - len(generated)
    assert f"5 generated, {seeds} seed" in section
    assert f'{reverse("generation-job-detail", args=[7])}">job #7</a> round 1: 3' in section
    assert "job #7</a> round 2: 2" in section
    assert f'href="{reverse("curation-release", args=["r-line-2"])}">r-line-2' in section
    assert f"job #{job.pk}</a> sft_dpo (queued)" in section
    assert f"experiment #{experiment.pk}</a> sft, sft_dpo" in section

    later = client.get(reverse("curation-release", args=[second.name])).content.decode()
    section = later[later.index('id="lineage"') :]
    assert "none: no generated dialogue" not in section  # it holds the same dialogues
    assert "none trained on it yet" in section and "none run on it yet" in section
    assert f'href="{reverse("curation-release", args=["r-line-1"])}">r-line-1' in section
