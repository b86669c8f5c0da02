"""A generation round targeted from an evaluation: the scenarios and strategies where the student
did worst get a larger share, shown on the form and recorded with the job."""

from __future__ import annotations

import pytest
from django.urls import reverse

from curation.models import Scenario
from curation.releases.lineage import lineage
from generation import runner
from generation.models import GenerationJob
from tests.test_sendback import finished_job, person, released, row, supporter_messages
from training import targeting

__all__ = ["released"]  # the fixture, used by name

USUAL = {"Question": 0.5, "Reflection": 0.3, "Affirmation": 0.2}


def test_weaker_groups_get_larger_shares_and_emphasis_sets_how_much():
    measured = {"Work": (4.0, 10), "Family": (2.0, 10), "Health": (2.0, 5)}
    names = ["Family", "Health", "Work"]
    even = targeting.shares(names, measured, 0.0)
    assert even == pytest.approx({n: 1 / 3 for n in names})
    half = targeting.shares(names, measured, 0.5)
    assert half["Work"] == pytest.approx(0.5 / 3 + 0.5 * 0.5)  # twice as weak: half the rest
    assert sum(half.values()) == pytest.approx(1)
    alone = targeting.shares(names, measured, 1.0)
    assert alone == pytest.approx({"Family": 0.25, "Health": 0.25, "Work": 0.5})
    unseen = targeting.shares([*names, "Money"], measured, 1.0)
    assert unseen["Money"] == pytest.approx(unseen["Work"] / 1.5)  # as weak as the mean, 8/3
    usual = targeting.shares(
        list(USUAL), {"Question": (1.0, 4), "Reflection": (3.0, 4)}, 1.0, USUAL
    )
    assert usual["Reflection"] > USUAL["Reflection"] and usual["Question"] < USUAL["Question"]
    with pytest.raises(ValueError, match="emphasis"):
        targeting.shares(names, measured, 1.5)


def test_counts_split_the_round_by_largest_remainder_with_at_least_one_each():
    assert targeting.counts({"a": 0.5, "b": 0.25, "c": 0.25}, 8) == {"a": 4, "b": 2, "c": 2}
    split = targeting.counts({"a": 0.7, "b": 0.2, "c": 0.1}, 10)
    assert sum(split.values()) == 10 and min(split.values()) >= 1 and split["a"] == 7
    assert targeting.counts({"a": 0.9, "b": 0.1}, 1) == {"a": 1, "b": 0}  # too few for a floor


def test_a_plan_from_a_hand_made_evaluation():
    rows = [
        row(1, 2, "[Question] How long?", "[Question] How long?", nll=10.0),  # 1.0 a token
        row(2, 2, "[Reflection] It hurts.", "[Reflection] It hurts.", nll=40.0),  # 4.0
        row(3, 2, "[Question] What now?", "[Question] What now?", nll=20.0),  # 2.0
    ]
    scene = {"1": "Work", "2": "Family", "3": "Work"}
    strategy = {"1": "Question", "2": "Reflection", "3": "Question"}
    found = targeting.plan(
        rows,
        lambda s: scene[s["id"]],
        lambda s: strategy[s["id"]],
        "likelihood",
        ["Family", "Work"],
        10,
        USUAL,
        emphasis=1.0,
    )
    family, work = found["scenarios"]
    assert (family["weakness"], family["replies"]) == (4.0, 1)
    assert (work["weakness"], work["replies"]) == (1.5, 2)
    assert found["counts"] == {"Family": 7, "Work": 3}  # 4 / 5.5 and 1.5 / 5.5 of 10
    shares = found["strategy_shares"]
    assert shares["Reflection"] > USUAL["Reflection"] and sum(shares.values()) == pytest.approx(1)
    assert [r["usual"] for r in found["strategies"]] == [0.5, 0.3, 0.2]
    percent = targeting.plan(
        rows,
        lambda s: "Work",
        lambda s: None,
        "likelihood",
        ["Work"],
        2,
        {k: 100 * v for k, v in USUAL.items()},
    )
    assert [r["usual"] for r in percent["strategies"]] == [0.5, 0.3, 0.2]  # shares, whatever scale


@pytest.mark.django_db
@pytest.mark.usefixtures("seeds")
def test_the_form_shows_the_weights_and_the_job_plans_by_them(client, released, monkeypatch):
    picked = supporter_messages(released, 2)
    job = finished_job(released, [(d, m) for d, m, _ in picked])
    weak_scenes = {t.dialogue.scenario.name for _, _, t in picked}
    client.force_login(person("lena", "lead"))
    assert b"Plan the next generation round" in client.get(job.get_absolute_url()).content

    page = client.get(reverse("generation-job-new") + f"?from_job={job.pk}")
    form = page.context["form"]
    plan = form.plan
    assert plan["training_job"] == job.pk and plan["rule"] == "likelihood"
    by_name = {r["name"]: r for r in plan["scenarios"]}
    assert set(by_name) >= weak_scenes
    body = page.content.decode()
    assert "Dialogues a round" in body and "Targeted share" in body

    data = {
        "kind": "selfchat",
        "token": "tok-target",
        "teacher": "local",
        "model": "",
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 600,
        "duplicate_threshold": "",
        "scenarios": [s.pk for s in Scenario.objects.filter(name__in=by_name)],
        "per_scenario": 3,
        "rounds": 1,
        "mode": "turns",
        "examples_per_prompt": 1,
        "exchanges": 4,
        "strategy_policy": "target",
        "target_job": job.pk,
        "target_rule": "overlap",
        "target_emphasis": 1.0,
        "dri_source_status": "accepted",
        "dri_dialogue_limit": 20,
        "dri_mask": "random",
        "dri_turns_per_dialogue": 1,
        "dri_candidates": 4,
    }
    preview = client.post(reverse("generation-job-new"), data | {"preview": "1"})
    assert preview.status_code == 200 and not GenerationJob.objects.exists()
    shown = {r["name"]: r for r in preview.context["form"].plan["scenarios"]}
    monkeypatch.setattr("generation.views.start_job.delay_on_commit", lambda pk: None)
    response = client.post(reverse("generation-job-new"), data)
    made = GenerationJob.objects.get()
    assert response.url == reverse("generation-job-detail", args=[made.pk])
    assert made.plan["scenarios"] == list(shown.values())  # what the form showed is recorded
    assert made.plan["rule"] == "overlap" and made.strategy_shares == made.plan["strategy_shares"]
    counts = made.plan["counts"]
    assert sum(counts.values()) == 3 * len(by_name)
    weakest = max(counts, key=counts.get)
    assert weakest in weak_scenes and counts[weakest] > 3  # more than an even round
    assert made.planned_units_per_round() == sum(counts.values())
    runner.start(made.pk)
    planned = {}
    for unit in made.units.select_related("scenario"):
        planned[unit.scenario.name] = planned.get(unit.scenario.name, 0) + 1
    assert planned == {name: n for name, n in counts.items() if n}
    detail = client.get(reverse("generation-job-detail", args=[made.pk])).content.decode()
    assert f'from training job <a href="{job.get_absolute_url()}">#{job.pk}</a>' in detail
    assert lineage(released).targeted == [made]  # the release's page links the round
