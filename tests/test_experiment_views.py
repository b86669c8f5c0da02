"""Experiments in the studio: the new-experiment form and its refusals, one experiment per form,
who may see and do what, the page in each state (live progress, then the stored report: table,
intervals, colours only beyond noise, the chart, samples side by side, downloads), and the row's
lifecycle run by training.experiments with the engine replaced (claim, progress, cancel,
failure, shutdown, recovery after a worker died)."""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from curation.management.commands.setup_studio import make_user
from curation.models import Candidate, Dialogue, Release
from curation.releases.build import create_release, new_release
from tests.test_training_views import staff_user
from training import experiments
from training.experiment import METRICS, Progress, Stopped
from training.forms import dri_train_examples
from training.models import Experiment
from training.views import interval_chart, verdict

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

NEW = reverse("training-experiment-new")
LIST = reverse("training-experiment-list")


@pytest.fixture(autouse=True)
def _folders(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_DIR = tmp_path / "training"
    settings.TRAINING_PROGRESS_SECONDS = 0


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Experiments enqueue after commit; these tests check the rows, not the queue."""
    sent: list[int] = []
    monkeypatch.setattr("training.views.run_experiment.delay_on_commit", sent.append)
    return sent


@pytest.fixture
def release() -> Release:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    return create_release("r-exp")


@pytest.fixture
def dri_release() -> Release:
    """A release whose training split has DRI examples: a candidate for the first supporter
    turn of every dialogue, kept by the 'unrejected' policy without rankings."""
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    for dialogue in Dialogue.objects.all():
        turn = dialogue.turns.filter(role="supporter").order_by("index").first()
        assert turn is not None
        Candidate.objects.create(turn=turn, text="That sounds hard; I am here.")
    return create_release("r-dri", dri_policy=Release.DriPolicy.UNREJECTED)


@pytest.fixture
def studio_lead() -> User:
    """A lead as the studio makes one: staff, with the lead role's permissions."""
    call_command("setup_studio", "--no-demo-users", stdout=StringIO())
    return make_user("leah", "lead", "pw-leah-123")


def form(release: Release, **changes: Any) -> dict[str, Any]:
    data = {
        "token": "tok-1",
        "release": release.pk,
        "arms": ["base", "sft"],
        "seeds": 2,
        "max_steps": "",
        "epochs": 1.5,
        "limit": 30,
        "base_model": "",
        "decoding": "greedy",
        "temperature": 0.7,
        "top_p": 0.9,
        "decoding_seed": 0,
        "max_new_tokens": 48,
    }
    return data | changes


def arm(values: dict[str, float | None], versus: dict[str, Any], budget: Any) -> dict[str, Any]:
    """An arm of a report: every metric at 10 unless `values` says otherwise, each with an
    interval 1 either side."""
    metrics = {key: 10.0 for key in METRICS} | values
    ci = {key: [None, None] if v is None else [v - 1, v + 1] for key, v in metrics.items()}
    return {"metrics": metrics, "ci": ci, "versus": versus, "budget": budget}


def versus(**differences: tuple[float, float, float, float]) -> dict[str, Any]:
    """Every metric's difference 0, interval [-1, 1], p 1, unless given (difference, low, high,
    p) by name (underscores for hyphens)."""
    found = {key: {"difference": 0.0, "ci": [-1.0, 1.0], "p": 1.0} for key in METRICS}
    for name, (difference, low, high, p) in differences.items():
        found[name.replace("_", "-")] = {"difference": difference, "ci": [low, high], "p": p}
    return found


def stored_report() -> dict[str, Any]:
    return {
        "data": "/releases/r-exp",
        "base": "tiny",
        "replies_scored": 40,
        "seeds": 2,
        "budget": {"steps": 12, "batch_size": 4, "epochs": 1.5},
        "decoding": {"kind": "greedy", "max_new_tokens": 48},
        "teacher": None,
        "arms": {
            "base": arm({"bleu-2": 3.0, "perplexity": 40.0}, {}, "not trained"),
            "sft": arm(
                {"bleu-2": 7.0, "perplexity": 37.0, "length": 15.0},
                {
                    "base": versus(
                        bleu_2=(4.0, 1.5, 6.5, 0.002),
                        perplexity=(-3.0, -5.0, -1.0, 0.004),
                        length=(5.0, 2.0, 8.0, 0.001),
                    )
                },
                [
                    {"seed": 0, "steps": 12, "tokens_seen": 34567},
                    {"seed": 1, "steps": 12, "tokens_seen": 34568},
                ],
            ),
            "sft_dri": arm(
                {"bleu-2": 7.4, "distinct-2": 8.0, "perplexity": None},
                {
                    "base": versus(distinct_2=(-2.0, -3.0, -1.0, 0.01)),
                    "sft": versus(rouge_l=(0.4, -0.8, 1.6, 0.51)),
                },
                [
                    {"seed": 0, "steps": 12, "tokens_seen": 40001},
                    {"seed": 1, "steps": 12, "tokens_seen": 40002},
                ],
            ),
        },
    }


SAMPLES = [
    {
        "id": f"d{k}",
        "turn": 1,
        "context": [f"user: I lost my job, take {k}.", "assistant: I am sorry."],
        "reference": f"That is a hard blow, {k}.",
        "base": f"ok {k}",
        "sft": f"sft says {k}",
        "sft_dri": f"dri says {k}",
    }
    for k in range(25)
]


def make_experiment(release: Release, **values: Any) -> Experiment:
    defaults: dict[str, Any] = {
        "arms": ["base", "sft", "sft_dri"],
        "seeds": 1,
        "decoding": {"kind": "greedy", "max_new_tokens": 64},
    }
    return Experiment.objects.create(release=release, **(defaults | values))


def done_experiment(release: Release) -> Experiment:
    return make_experiment(
        release,
        status="done",
        seeds=2,
        max_steps=12,
        epochs=None,
        report=stored_report(),
        samples=SAMPLES[:20],
        label="Done",
        fraction=1.0,
    )


# ---- the form -----------------------------------------------------------------------------------


def test_the_form_opens_with_working_defaults(client, superuser, release):
    client.force_login(superuser)
    html = client.get(f"{NEW}?release={release.pk}").content.decode()
    assert f'<option value="{release.pk}" selected>r-exp</option>' in html
    for name in ("base", "sft", "sft_dri"):
        assert re.search(rf'<input type="checkbox" name="arms" value="{name}"[^>]* checked', html)
    assert not re.search(r'<input type="checkbox" name="arms" value="teacher"[^>]* checked', html)
    assert 'name="seeds" value="1"' in html
    assert 'name="epochs" value="1.0"' in html
    assert re.search(r'<input type="radio" name="decoding" value="greedy"[^>]* checked', html)
    assert 'name="max_new_tokens" value="64"' in html
    assert "SmolLM2-135M-Instruct (the local model)" in html  # the teacher it would ask
    assert Experiment.objects.count() == 0


def test_a_form_sent_twice_creates_one_queued_experiment(client, superuser, release, queued):
    client.force_login(superuser)
    first = client.post(NEW, form(release, arms=["sft", "base", "teacher"]))
    second = client.post(NEW, form(release, arms=["sft", "base", "teacher"]))
    experiment = Experiment.objects.get()
    assert first.status_code == second.status_code == 302
    assert first.url == second.url == experiment.get_absolute_url()
    assert queued == [experiment.pk]
    assert experiment.arms == ["base", "teacher", "sft"]  # in the engine's order
    assert (experiment.seeds, experiment.max_steps, experiment.epochs) == (2, None, 1.5)
    assert (experiment.limit, experiment.base_model, experiment.created_by) == (30, "", superuser)
    assert experiment.decoding == {"kind": "greedy", "max_new_tokens": 48}
    assert experiment.status == Experiment.Status.QUEUED
    assert experiment.teacher is None  # recorded by the worker that asks it

    client.post(
        NEW,
        form(
            release,
            token="tok-2",
            max_steps=40,
            limit="",
            decoding="sampling",
            temperature=0.5,
            top_p=0.8,
            decoding_seed=7,
        ),
    )
    sampled = Experiment.objects.get(request_key="tok-2")
    assert (sampled.max_steps, sampled.epochs, sampled.limit) == (40, None, None)
    assert sampled.decoding == {
        "kind": "sampling",
        "max_new_tokens": 48,
        "temperature": 0.5,
        "top_p": 0.8,
        "seed": 7,
    }
    assert queued == [experiment.pk, sampled.pk]


def refusal(response) -> str:
    html = response.content.decode()
    found = re.search(r'<div class="error-box experiment-refusal"><p>(.*?)</p>', html)
    return found.group(1) if found else ""


def test_the_form_refuses_what_cannot_work_and_says_why(client, superuser, release, queued):
    client.force_login(superuser)
    building = new_release("r-building")
    assert refusal(client.post(NEW, form(building))) == (
        "Release r-building is building: an experiment runs on a ready release only."
    )
    no_test = create_release("r-notest", split={"train": 100, "valid": 0, "test": 0})
    train = no_test.counts["train"]
    assert refusal(client.post(NEW, form(no_test))) == (
        f"Release r-notest has no test dialogues (split {train}/0/0): every arm is scored on "
        "the test split. Cut a release with a test share."
    )
    no_train = create_release("r-notrain", split={"train": 0, "valid": 0, "test": 100})
    assert "Release r-notrain has no training dialogues" in refusal(
        client.post(NEW, form(no_train))
    )
    assert dri_train_examples(release) == 0
    assert refusal(client.post(NEW, form(release, arms=["base", "sft_dri"]))) == (
        "Release r-exp has no DRI examples in its training split (DRI policy: acceptable): "
        "sft_dri would train on the same chats as sft. Rank DRI replies and cut a new release, "
        "or leave sft_dri out."
    )
    no_arm = client.post(NEW, form(release, arms=[])).content.decode()
    assert "Pick at least one arm." in no_arm
    seeds = client.post(NEW, form(release, seeds=6)).content.decode()
    assert "Ensure this value is less than or equal to 5." in seeds
    sampling = client.post(NEW, form(release, decoding="sampling", top_p=0)).content.decode()
    assert "Ensure this value is greater than or equal to 0.01." in sampling
    assert (Experiment.objects.count(), queued) == (0, [])

    # Nothing to train, a budget given all the same: fine, the budget goes unused.
    client.post(NEW, form(no_train, arms=["base"], max_steps=5, token="tok-base"))
    assert Experiment.objects.get().arms == ["base"]


def test_sft_dri_runs_on_a_release_with_dri_examples(client, superuser, dri_release, queued):
    assert dri_train_examples(dri_release) == dri_release.counts["train"]  # one per dialogue
    client.force_login(superuser)
    response = client.post(NEW, form(dri_release, arms=["sft", "sft_dri"]))
    assert response.status_code == 302
    assert Experiment.objects.get().arms == ["sft", "sft_dri"]


# ---- who may see and do what --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("anonymous", 302),
        ("annotator", 403),
        ("staff_without_permission", 403),
        ("studio_lead", 200),
        ("superuser", 200),
    ],
)
def test_experiment_pages_are_for_staff_with_the_training_permission(
    client, request, release, who, expected
):
    experiment = done_experiment(release)
    files = experiments.run_dir(experiment)
    files.mkdir(parents=True)
    (files / "report.json").write_text("{}")
    if who == "staff_without_permission":
        client.force_login(staff_user("sam"))
    elif who != "anonymous":
        client.force_login(request.getfixturevalue(who))
    for url in (LIST, experiment.get_absolute_url(), f"{experiment.get_absolute_url()}report.json"):
        assert client.get(url).status_code == expected, url


def test_a_lead_reads_experiments_but_starts_and_cancels_none(client, studio_lead, release, queued):
    running = make_experiment(release, status="running", worker="w", label="base: replies")
    client.force_login(studio_lead)
    listing = client.get(LIST).content.decode()
    assert running.get_absolute_url() in listing
    assert NEW not in listing
    page = client.get(running.get_absolute_url()).content.decode()
    cancel = reverse("training-experiment-cancel", args=[running.pk])
    assert cancel not in page
    assert client.post(cancel).status_code == 403
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, form(release)).status_code == 403
    running.refresh_from_db()
    assert (running.cancel_requested, Experiment.objects.count(), queued) == (False, 1, [])
    # The training list, which the lead may now read, leads to the experiments.
    jobs = client.get(reverse("training-job-list")).content.decode()
    assert f'<a class="button" href="{LIST}">Experiments</a>' in jobs
    assert NEW not in jobs


def test_the_studio_gives_leads_read_only_training_permissions(studio_lead):
    assert studio_lead.has_perm("training.view_trainingjob")
    assert studio_lead.has_perm("training.view_experiment")
    for codename in ("add_trainingjob", "change_trainingjob", "change_experiment"):
        assert not studio_lead.has_perm(f"training.{codename}"), codename


# ---- the page -----------------------------------------------------------------------------------


def test_the_list_says_when_there_is_none_and_where_to_start(client, superuser, studio_lead):
    client.force_login(superuser)
    html = client.get(LIST).content.decode()
    assert "No experiment yet." in html
    assert f'<a href="{NEW}">start one</a>' in html
    client.force_login(studio_lead)
    html = client.get(LIST).content.decode()
    assert "No experiment yet." in html and "An admin starts one" in html


def test_a_queued_experiment_polls_and_offers_cancel(client, superuser, release):
    experiment = make_experiment(release)
    client.force_login(superuser)
    html = client.get(experiment.get_absolute_url()).content.decode()
    assert '<span class="pill job-queued">Queued</span>' in html
    assert 'hx-trigger="every 3s"' in html
    assert "the experiment waits for a training worker" in html
    assert reverse("training-experiment-cancel", args=[experiment.pk]) in html
    assert "Results on the test split" not in html
    listing = client.get(LIST).content.decode()
    assert experiment.get_absolute_url() in listing


def test_a_running_experiment_shows_its_stage_on_the_bar(client, superuser, release):
    experiment = make_experiment(release, status="running", worker="training@box")
    experiment.record(stage=1, stages=5, label="sft seed 0: training", done=12, total=40)
    Experiment.objects.filter(pk=experiment.pk).update(fraction=Progress(1, 5, "", 12, 40).fraction)
    client.force_login(superuser)
    partial = client.get(
        experiment.get_absolute_url(), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="live"
    ).content.decode()
    assert partial.lstrip().startswith('<section id="live"')
    assert "<html" not in partial
    assert '<progress class="big" max="100" value="26">' in partial  # (1 + 12/40) / 5
    assert '<span class="stage">sft seed 0: training 12/40 (stage 2 of 5)</span>' in partial
    assert 'hx-trigger="every 3s"' in partial
    assert "by training@box" in partial
    listing = client.get(LIST).content.decode()
    assert "sft seed 0: training 12/40 (stage 2 of 5)" in listing


def test_a_done_experiment_shows_results_intervals_chart_budget_and_samples(
    client, superuser, release
):
    experiment = done_experiment(release)
    client.force_login(superuser)
    html = client.get(experiment.get_absolute_url()).content.decode()
    assert "hx-trigger" not in html  # finished: no more polling
    assert (
        "<thead><tr><th>Metric</th><th>base</th><th>sft</th><th>sft_dri</th></tr></thead>" in html
    )
    assert (
        '<tr><th>BLEU-2</th><td>3.00 <small class="ci">[2.00, 4.00]</small></td>'
        '<td>7.00 <small class="ci">[6.00, 8.00]</small></td>'
        '<td>7.40 <small class="ci">[6.40, 8.40]</small></td></tr>' in html
    )
    # No perplexity for one arm: a dash, and the metric says which way is better.
    assert (
        '<tr><th>Perplexity (lower is better)</th><td>40.00 <small class="ci">[39.00, 41.00]'
        '</small></td><td>37.00 <small class="ci">[36.00, 38.00]</small></td>'
        "<td>—</td></tr>" in html
    )
    assert "40 test turns scored, the same for every arm" in html
    assert "the mean of 2 seeds on every draw" in html
    # The chart: one inline SVG per charted metric, a bar and a whisker per arm.
    assert html.count('<svg class="chart intervals"') == 4
    for name in ("BLEU-2", "ROUGE-L", "Distinct-2", "Unigram F1"):
        assert f'aria-label="{name} per arm, with 95% intervals"' in html
    assert html.count('<rect class="bar arm-sft_dri"') == 4
    assert html.count('class="whisker"') == 4 * 3 * 3
    assert "<script" not in html.split('<section id="live"')[1]
    # The budget, the decoding.
    assert "12 optimizer steps per trained arm and seed" in html
    assert "<tr><td>sft</td><td>1</td><td>12</td><td>34568</td></tr>" in html
    assert '<tr><td>base</td><td colspan="3">not trained</td></tr>' in html
    assert '<dd class="decoding">greedy, at most 48 new tokens</dd>' in html
    assert "Teacher" not in html  # no teacher arm
    # The first 20 turns side by side.
    assert html.count("<td>user: I lost my job, take") == 20
    assert (
        "<tr><td>user: I lost my job, take 3.<br>assistant: I am sorry.</td>"
        "<td>That is a hard blow, 3.</td><td>ok 3</td><td>sft says 3</td><td>dri says 3</td></tr>"
        in html
    )
    assert "take 20." not in html


def test_differences_are_coloured_only_when_their_interval_excludes_zero(
    client, superuser, release
):
    experiment = done_experiment(release)
    client.force_login(superuser)
    html = client.get(experiment.get_absolute_url()).content.decode()
    against_base = html.split('<table class="dialogues compact experiment-versus versus-base">')[1]
    against_base = against_base.split("</table>")[0]
    assert "<th>sft &minus; base</th><th>sft_dri &minus; base</th>" in against_base
    assert (
        '<tr><th>BLEU-2</th><td class="better">+4.00 <small class="ci">[1.50, 6.50]</small> '
        '<small class="p">p &lt; 0.01</small></td>' in against_base
    )
    # Lower perplexity is better; fewer distinct bigrams worse; length is neither.
    assert '<td class="better">-3.00 <small class="ci">[-5.00, -1.00]</small>' in against_base
    assert '<td class="worse">-2.00 <small class="ci">[-3.00, -1.00]</small>' in against_base
    assert (
        '<tr><th>Length (tokens)</th><td>+5.00 <small class="ci">[2.00, 8.00]</small>'
        in against_base
    )
    against_sft = html.split("versus-sft")[1].split("</table>")[0]
    assert "<th>sft_dri &minus; sft</th>" in against_sft
    # Within noise: shown, uncoloured.
    assert (
        '<tr><th>ROUGE-L</th><td>+0.40 <small class="ci">[-0.80, 1.60]</small> '
        '<small class="p">p 0.51</small></td></tr>' in against_sft
    )
    assert 'class="better"' not in against_sft and 'class="worse"' not in against_sft
    assert "It is coloured (green: better, red: worse) only when its interval excludes 0" in html
    assert html.index("Against sft") < html.index("Against base")

    assert verdict("bleu-2", {"ci": [0.01, 3]}) == "better"
    assert verdict("bleu-2", {"ci": [-3, -0.01]}) == "worse"
    assert verdict("bleu-2", {"ci": [0.0, 3]}) is None  # touches 0: not beyond noise
    assert verdict("perplexity", {"ci": [0.5, 3]}) == "worse"
    assert verdict("length", {"ci": [1, 3]}) is None
    assert verdict("bleu-2", {"ci": [None, None]}) is None


def test_the_chart_shares_a_scale_per_metric_and_draws_whiskers_across_the_interval():
    [bleu, *others] = interval_chart(stored_report())
    assert [p["key"] for p in [bleu, *others]] == ["bleu-2", "rouge-l", "distinct-2", "unigram-f1"]
    base, sft, dri = bleu["bars"]
    # The scale runs from 0 at the label column to the largest interval end (8.40) at `right`.
    span = bleu["right"] - bleu["label"]
    assert dri["high"] == bleu["right"]
    assert sft["width"] == pytest.approx(span * 7.0 / 8.4, abs=0.1)
    assert base["low"] == pytest.approx(bleu["label"] + span * 2.0 / 8.4, abs=0.1)
    assert (base["value"], bleu["top"]) == ("3.00", "8.40")
    missing = stored_report()
    missing["arms"]["base"]["metrics"]["bleu-2"] = None
    missing["arms"]["base"]["ci"]["bleu-2"] = [None, None]
    first = interval_chart(missing)[0]["bars"][0]
    assert (first["value"], first["low"]) == (None, None)


def test_the_report_files_download_once_it_is_done(client, superuser, release):
    experiment = done_experiment(release)
    folder = experiments.run_dir(experiment)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text('{"seeds": 2}')
    (folder / "replies.jsonl").write_text('{"id": "d0"}\n')
    (folder / "report.html").write_text("<table></table>")
    client.force_login(superuser)
    page = client.get(experiment.get_absolute_url()).content.decode()
    for name in ("report.json", "replies.jsonl", "report.html"):
        url = reverse("training-experiment-file", args=[experiment.pk, name])
        assert f'<a href="{url}">{name}</a>' in page
    report = client.get(reverse("training-experiment-file", args=[experiment.pk, "report.json"]))
    assert json.loads(b"".join(report.streaming_content)) == {"seeds": 2}
    assert "attachment" in report["Content-Disposition"]
    assert f"r-exp-experiment{experiment.pk}-report.json" in report["Content-Disposition"]
    html = client.get(reverse("training-experiment-file", args=[experiment.pk, "report.html"]))
    assert html["Content-Type"].startswith("text/html")
    other = reverse("training-experiment-file", args=[experiment.pk, "settings.py"])
    assert client.get(other).status_code == 404
    Experiment.objects.filter(pk=experiment.pk).update(status="running")
    url = reverse("training-experiment-file", args=[experiment.pk, "report.json"])
    assert client.get(url).status_code == 404  # not done: not served
    assert "Downloads" not in client.get(experiment.get_absolute_url()).content.decode()


def test_a_failed_experiment_shows_why(client, superuser, release):
    experiment = make_experiment(
        release, status="failed", error="ValueError: no training chat keeps an assistant token"
    )
    client.force_login(superuser)
    html = client.get(experiment.get_absolute_url()).content.decode()
    assert (
        '<span class="error">ValueError: no training chat keeps an assistant token</span>' in html
    )
    assert "hx-trigger" not in html
    assert reverse("training-experiment-cancel", args=[experiment.pk]) not in html


def test_the_admin_lists_experiments_read_only(client, superuser, release):
    experiment = done_experiment(release)
    client.force_login(superuser)
    changelist = client.get(reverse("admin:training_experiment_changelist"))
    assert changelist.status_code == 200
    assert experiment.get_absolute_url() in changelist.content.decode()
    assert client.get(reverse("admin:training_experiment_add")).status_code == 403
    change = client.get(reverse("admin:training_experiment_change", args=[experiment.pk]))
    assert change.status_code == 200
    assert 'name="seeds"' not in change.content.decode()  # no field to edit


# ---- cancel -------------------------------------------------------------------------------------


def test_cancel_ends_a_queued_experiment_and_asks_a_running_one(client, superuser, release):
    queued = make_experiment(release)
    running = make_experiment(release, status="running", worker="w")
    client.force_login(superuser)
    assert client.get(reverse("training-experiment-cancel", args=[queued.pk])).status_code == 405
    client.post(reverse("training-experiment-cancel", args=[queued.pk]))
    queued.refresh_from_db()
    assert (queued.status, queued.cancel_requested) == ("cancelled", True)
    assert queued.finished_at is not None

    response = client.post(reverse("training-experiment-cancel", args=[running.pk]), follow=True)
    running.refresh_from_db()
    assert (running.status, running.cancel_requested) == ("running", True)
    html = response.content.decode()
    assert "cancel asked" in html and "<strong>stopping</strong>" in html
    assert reverse("training-experiment-cancel", args=[running.pk]) not in html  # asked once
    assert not queued.request_cancel()  # ended already


# ---- the worker's side, with the engine replaced --------------------------------------------------


class FakeEngine:
    """training.experiment.run_experiment as the worker calls it: reports `progresses`, asks
    should_stop after each, writes the three files and returns `report`."""

    def __init__(self, progresses: list[Progress], report: dict[str, Any] | None = None) -> None:
        self.progresses = progresses
        self.report = report or stored_report()
        self.calls: list[dict[str, Any]] = []
        self.rows: list[Experiment] = []  # the row as stored after each report
        self.pk = 0

    def __call__(self, data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"data": data, "out": out} | kwargs)
        for progress in self.progresses:
            kwargs["on_progress"](progress)
            self.rows.append(Experiment.objects.get(pk=self.pk))
            if kwargs["should_stop"]():
                raise Stopped
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.report))
        (out / "report.html").write_text("<table></table>")
        lines = [json.dumps(s) for s in SAMPLES]
        (out / "replies.jsonl").write_text("\n".join(lines) + "\n")
        return self.report


PLAN = [
    Progress(0, 3, "base: replies", 0, 0),
    Progress(0, 3, "base: replies", 3, 6),
    Progress(0, 3, "base: replies", 6, 6),
    Progress(1, 3, "sft seed 0: training", 0, 4),
    Progress(1, 3, "sft seed 0: training", 2, 4),
    Progress(1, 3, "sft seed 0: training", 4, 4),
    Progress(2, 3, "sft seed 0: replies", 6, 6),
]


def engine(monkeypatch, experiment: Experiment, plan: list[Progress], **kw: Any) -> FakeEngine:
    fake = FakeEngine(plan, **kw)
    fake.pk = experiment.pk
    monkeypatch.setattr("training.experiment.run_experiment", fake)
    return fake


def test_the_worker_runs_the_engine_and_keeps_its_report(release, monkeypatch):
    experiment = make_experiment(
        release,
        arms=["base", "sft"],
        seeds=2,
        max_steps=4,
        epochs=None,
        limit=6,
        base_model="tiny-fake",  # a name for the offline cache: passed on as it is
        decoding={"kind": "sampling", "max_new_tokens": 8, "temperature": 0.5, "top_p": 0.8},
    )
    fake = engine(monkeypatch, experiment, PLAN)
    experiments.run(experiment.pk, "training@test")

    experiment.refresh_from_db()
    assert (experiment.status, experiment.error, experiment.attempts) == ("done", "", 1)
    assert (experiment.percent, experiment.label) == (100, "Done")
    assert experiment.report == stored_report()
    assert [s["id"] for s in experiment.samples] == [f"d{k}" for k in range(20)]
    [call] = fake.calls
    assert call["data"] == release.folder  # the release's files, written for the run
    assert (release.folder / "sft" / "test.jsonl").is_file()
    assert call["out"] == experiments.run_dir(experiment)
    assert (call["arms"], call["seeds"], call["max_steps"], call["limit"]) == (
        ["base", "sft"],
        2,
        4,
        6,
    )
    assert call["base"] == "tiny-fake" and call["teacher"] is None
    decoding = call["decoding"]
    assert (decoding.kind, decoding.temperature, decoding.top_p, decoding.max_new_tokens) == (
        "sampling",
        0.5,
        0.8,
        8,
    )
    # Every report landed (no throttle in these tests), as the engine said it.
    assert [(r.stage, r.label, r.done, r.total) for r in fake.rows] == [
        (p.stage, p.label, p.done, p.total) for p in PLAN
    ]
    assert fake.rows[4].fraction == pytest.approx(PLAN[4].fraction)
    assert fake.rows[4].progress_label == "sft seed 0: training 2/4 (stage 2 of 3)"
    assert "Attempt 1 on training@test" in experiment.log_tail
    assert experiment.log_tail.rstrip().endswith("Done: 40 test turns scored")


def test_progress_is_throttled_but_stage_edges_land_at_once(release, settings, monkeypatch):
    settings.TRAINING_PROGRESS_SECONDS = 1
    experiment = make_experiment(release)
    assert experiment.claim("training@test")
    clock = [100.0]
    monkeypatch.setattr("training.runs.time.monotonic", lambda: clock[0])
    reporter = experiments.Reporter(experiment)

    def stored() -> tuple[int, int]:
        row = Experiment.objects.get(pk=experiment.pk)
        return row.stage, row.done

    written = []
    for progress in [
        Progress(0, 2, "sft seed 0: training", 0, 10),  # a new stage: at once
        Progress(0, 2, "sft seed 0: training", 1, 10),  # 0.4 s later: waits
        Progress(0, 2, "sft seed 0: training", 2, 10),  # 0.8 s: waits
        Progress(0, 2, "sft seed 0: training", 3, 10),  # 1.2 s: lands
        Progress(0, 2, "sft seed 0: training", 10, 10),  # the last step: at once
        Progress(1, 2, "sft seed 0: replies", 1, 6),  # a new stage: at once
        Progress(1, 2, "sft seed 0: replies", 2, 6),  # 0.4 s after: waits
    ]:
        reporter.progress(progress)
        written.append(stored())
        clock[0] += 0.4
    assert written == [(0, 0), (0, 0), (0, 0), (0, 3), (0, 10), (1, 1), (1, 1)]


def test_cancel_stops_the_run_at_its_next_report(release, monkeypatch):
    experiment = make_experiment(release)
    fake = engine(monkeypatch, experiment, PLAN)
    asked = fake.__call__

    def cancel_during_training(data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        report = kwargs["on_progress"]

        def and_cancel(progress: Progress) -> None:
            report(progress)
            if progress.label.startswith("sft") and progress.done == 2:
                Experiment.objects.filter(pk=experiment.pk).update(cancel_requested=True)

        return asked(data, out, **kwargs | {"on_progress": and_cancel})

    monkeypatch.setattr("training.experiment.run_experiment", cancel_during_training)
    experiments.run(experiment.pk, "training@test")
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.CANCELLED
    assert experiment.label == "Cancelled during sft seed 0: training 2/4 (stage 2 of 3)"
    assert len(fake.rows) == 5  # nothing reported after the stop
    assert experiment.report == {} and experiment.finished_at is not None


def test_a_failure_is_recorded_with_its_reason_and_shown(client, superuser, release, monkeypatch):
    experiment = make_experiment(release)

    def broken(data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        kwargs["on_progress"](Progress(0, 3, "base: replies", 1, 6))
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("training.experiment.run_experiment", broken)
    experiments.run(experiment.pk, "training@test")
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.FAILED
    assert experiment.error == "RuntimeError: CUDA out of memory"
    assert "Failed: RuntimeError: CUDA out of memory" in experiment.log_tail
    client.force_login(superuser)
    assert (
        "RuntimeError: CUDA out of memory"
        in client.get(experiment.get_absolute_url()).content.decode()
    )

    building = make_experiment(new_release("r-building"))
    experiments.run(building.pk, "training@test")
    building.refresh_from_db()
    assert (building.status, building.error) == (
        "failed",
        "ValueError: release r-building is building",
    )


def test_a_worker_shutdown_queues_the_experiment_again(release, monkeypatch):
    from celery.worker import state

    experiment = make_experiment(release)
    fake = engine(monkeypatch, experiment, PLAN)
    asked = fake.__call__

    def shutdown_at_training(data: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        report = kwargs["on_progress"]

        def and_stop(progress: Progress) -> None:
            report(progress)
            if progress.label.startswith("sft"):
                monkeypatch.setattr(state, "should_stop", 0)  # what a warm shutdown sets

        return asked(data, out, **kwargs | {"on_progress": and_stop})

    monkeypatch.setattr("training.experiment.run_experiment", shutdown_at_training)
    experiments.run(experiment.pk, "training@test")
    experiment.refresh_from_db()
    assert (experiment.status, experiment.finished_at) == ("queued", None)
    assert "starts again from the beginning" in experiment.label


@pytest.mark.dbsensitive
def test_an_experiment_runs_once_however_often_its_task_is_delivered(release, monkeypatch):
    experiment = make_experiment(release)
    assert experiment.claim("training@one")
    assert not Experiment.objects.get(pk=experiment.pk).claim("training@two")
    calls = []
    monkeypatch.setattr("training.experiments._run", lambda *args: calls.append(args))
    experiments.run(experiment.pk, "training@two")  # a second delivery while it runs
    experiments.run(10_000, "training@two")  # an experiment that is gone
    assert calls == []
    experiment.refresh_from_db()
    assert (experiment.status, experiment.worker, experiment.attempts) == (
        "running",
        "training@one",
        1,
    )
    # The first worker's writes still land; a worker that lost the row writes nothing.
    stranger = Experiment.objects.get(pk=experiment.pk)
    stranger.worker = "training@two"
    stranger.record(label="not mine")
    assert not stranger.finish(Experiment.Status.DONE)
    experiment.record(label="mine")
    assert Experiment.objects.get(pk=experiment.pk).label == "mine"


def test_a_restarted_worker_takes_back_its_experiments_and_abandoned_ones(
    client, superuser, release
):
    mine = make_experiment(release)
    assert mine.claim("training@a")
    busy = make_experiment(release)
    assert busy.claim("training@b")
    abandoned = make_experiment(release)
    assert abandoned.claim("training@c")
    Experiment.objects.filter(pk=abandoned.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    abandoned.refresh_from_db()
    assert abandoned.is_stale and not busy.is_stale
    waiting = make_experiment(release)
    done = done_experiment(release)

    assert Experiment.orphans_of("training@a") == sorted([mine.pk, abandoned.pk, waiting.pk])
    statuses = dict(Experiment.objects.values_list("pk", "status"))
    assert statuses[mine.pk] == statuses[abandoned.pk] == Experiment.Status.QUEUED
    assert (statuses[busy.pk], statuses[done.pk]) == ("running", "done")

    # Taken again, it starts from the beginning, and its page says so.
    assert mine.claim("training@a")
    mine.refresh_from_db()
    assert (mine.attempts, mine.stage, mine.done, mine.report) == (2, 0, 0, {})
    client.force_login(superuser)
    html = client.get(mine.get_absolute_url()).content.decode()
    assert "this is attempt 2, started again from the beginning" in html


def test_the_task_hands_the_experiment_and_its_worker_name_to_run(monkeypatch):
    from training.tasks import run_experiment

    calls = []
    monkeypatch.setattr("training.experiments.run", lambda pk, worker: calls.append((pk, worker)))
    run_experiment.apply(args=[7])
    assert calls == [(7, socket.gethostname())]


def test_a_training_worker_that_starts_queues_experiments_again(release, settings, monkeypatch):
    from training import tasks

    mine = make_experiment(release)
    assert mine.claim("training@here")
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(tasks.run_job, "delay", lambda pk: sent.append(("job", pk)))
    monkeypatch.setattr(tasks.run_experiment, "delay", lambda pk: sent.append(("exp", pk)))

    def worker(queue: str) -> SimpleNamespace:
        consume = {queue: SimpleNamespace(name=queue)}
        app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume)))
        return SimpleNamespace(app=app, hostname="training@here")

    tasks._recover_after_start(sender=worker("default"))  # not a training worker
    assert sent == []
    tasks._recover_after_start(sender=worker(settings.TRAINING_QUEUE))
    assert sent == [("exp", mine.pk)]


@pytest.mark.dbsensitive
@pytest.mark.usefixtures("vocabulary_db")
def test_a_worker_beats_while_the_engine_reports_nothing(release, settings, monkeypatch):
    settings.TRAINING_LEASE_SECONDS = 0.5  # a beat every 0.05 s
    experiment = make_experiment(release)
    beats = []

    def silent(experiment: Experiment, reporter: experiments.Reporter) -> None:
        started = Experiment.objects.get(pk=experiment.pk).heartbeat_at
        time.sleep(0.6)  # longer than a lease, with no progress written
        row = Experiment.objects.get(pk=experiment.pk)
        beats.append(row.heartbeat_at > started)
        assert not row.is_stale

    monkeypatch.setattr("training.experiments._run", silent)
    experiments.run(experiment.pk, "training@test")
    assert beats == [True]


def test_sft_dpo_needs_preference_pairs_in_the_training_split(client, superuser, release, queued):
    from curation.models import Ranking
    from training.forms import dpo_train_pairs

    client.force_login(superuser)
    assert dpo_train_pairs(release) == 0
    assert refusal(client.post(NEW, form(release, arms=["sft", "sft_dpo"]))) == (
        "Release r-exp has no preference pairs in its training split: sft_dpo would have "
        "nothing to learn after SFT. Rank DRI replies and cut a new release, or leave sft_dpo out."
    )
    ranker = make_user("rhea", "annotator", "pw-rhea-123")
    for dialogue in Dialogue.objects.all():  # a candidate ranked above each first reply
        turn = dialogue.turns.filter(role="supporter").order_by("index").first()
        better = Candidate.objects.create(turn=turn, text="That sounds hard; I am here.")
        order = [[f"c{better.pk}"], [f"t{turn.pk}"]]
        Ranking.objects.create(turn=turn, annotator=ranker, order=order, display_order=[])
    ranked = create_release("r-ranked")
    assert dpo_train_pairs(ranked) == ranked.counts["train"]  # one per dialogue
    response = client.post(NEW, form(ranked, arms=["sft", "sft_dpo"], token="tok-dpo"))
    assert response.status_code == 302
    assert Experiment.objects.get().arms == ["sft", "sft_dpo"]
