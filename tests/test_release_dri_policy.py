"""The DRI policy of a release: which candidates become sft_dri examples, in TRL's
prompt-completion form, chosen on the new-release form or the command line and told by the card."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse

from curation.models import Candidate, Dialogue, Ranking, Release, ReleaseDialogue
from curation.releases.build import create_release, ensure_files, write_files
from tests.test_release_views import form as release_form

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

SPLITS = ("train", "valid", "test")


@pytest.fixture
def dialogue() -> Dialogue:
    """Every dialogue accepted; in the first, three masked turns:
    - turn A ranked by two annotators: "Best" first for both, "Middle" below it, "Poor" last
      and marked unacceptable by the second;
    - turn B never ranked: "Unranked";
    - turn C ranked once, the original above "Second";
    - turn D ranked once, "Tied one" and "Tied two" together above the original.
    """
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    first = Dialogue.objects.order_by("id").first()
    assert first is not None
    a, b, c, d = first.turns.filter(role="supporter").order_by("index")[:4]
    best, middle, poor = (
        Candidate.objects.create(turn=a, text=text, strategy=a.strategy)
        for text in ("Best.", "Middle.", "Poor.")
    )
    Candidate.objects.create(turn=b, text="Unranked.", strategy=b.strategy)
    second = Candidate.objects.create(turn=c, text="Second.", strategy=None)
    tied = [Candidate.objects.create(turn=d, text=f"Tied {n}.") for n in ("one", "two")]
    one = User.objects.create_user("ranker-one", password="pw-123456")
    two = User.objects.create_user("ranker-two", password="pw-123456")
    key = {x: f"c{x.pk}" for x in (best, middle, poor, second)}
    Ranking.objects.create(
        turn=a,
        annotator=one,
        order=[[key[best]], [key[middle]], [f"t{a.pk}"], [key[poor]]],
        unacceptable=[],
        display_order=[],
    )
    Ranking.objects.create(
        turn=a,
        annotator=two,
        order=[[key[best]], [f"t{a.pk}"], [key[middle]], [key[poor]]],
        unacceptable=[key[poor]],
        display_order=[],
    )
    Ranking.objects.create(
        turn=c, annotator=one, order=[[f"t{c.pk}"], [key[second]]], display_order=[]
    )
    Ranking.objects.create(
        turn=d,
        annotator=one,
        order=[[f"c{tied[0].pk}", f"c{tied[1].pk}"], [f"t{d.pk}"]],
        display_order=[],
    )
    return first


def dri_lines(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for split in SPLITS
        for line in (folder / "sft_dri" / f"{split}.jsonl").read_text().splitlines()
    ]


def completions(folder: Path) -> set[str]:
    return {e["completion"][0]["content"] for e in dri_lines(folder)}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("acceptable", {"Best.", "Middle.", "Second.", "Tied one.", "Tied two."}),
        ("unrejected", {"Best.", "Middle.", "Second.", "Tied one.", "Tied two.", "Unranked."}),
        ("best", {"Best."}),
    ],
)
def test_each_policy_takes_its_candidates(dialogue, tmp_path, policy, expected):
    release = create_release(f"r-{policy}", dri_policy=policy)
    assert release.dri_policy == policy
    write_files(release, tmp_path)
    assert completions(tmp_path) == expected
    stats = json.loads((tmp_path / "stats.json").read_text())["statistics"]
    assert (stats["dri_policy"], stats["dri_examples"]) == (policy, len(expected))
    card = (tmp_path / "README.md").read_text()
    assert f"DRI policy: `{policy}` (" in card
    assert f"DRI examples in `sft_dri/`: {len(expected)}." in card
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dri_policy"] == policy


def test_the_policy_changes_sft_dri_only(dialogue, tmp_path):
    """SFT + DRI is sft/ and sft_dri/ together: sft/ holds the same dialogues whatever the policy,
    and sft_dri/ never repeats them."""
    for policy in ("acceptable", "best"):
        write_files(create_release(f"r-{policy}", dri_policy=policy), tmp_path / policy)
    for split in SPLITS:
        same = [
            (tmp_path / p / "sft" / f"{split}.jsonl").read_bytes() for p in ("acceptable", "best")
        ]
        assert same[0] == same[1]
    assert all(e["source"] == "dri" for e in dri_lines(tmp_path / "acceptable"))
    sft_lines = sum(
        len((tmp_path / "best" / "sft" / f"{s}.jsonl").read_text().splitlines()) for s in SPLITS
    )
    assert sft_lines == Dialogue.objects.releasable().count()  # the gate's 9 held seeds stay out


def test_no_dri_leaves_sft_dri_empty_whatever_the_policy(dialogue, tmp_path):
    from curation.releases.build import Filters

    release = create_release("r-none", Filters(dri=False), dri_policy="unrejected")
    write_files(release, tmp_path)
    assert dri_lines(tmp_path) == []
    assert (
        "DRI examples in `sft_dri/`: 0 (DRI candidates were left out)."
        in (tmp_path / "README.md").read_text()
    )


def test_dri_examples_are_prompt_completion_and_load_with_datasets(dialogue, tmp_path):
    import datasets

    release = create_release("r-format", dri_policy="unrejected")
    split = ReleaseDialogue.objects.get(release=release, dialogue_id=dialogue.pk).split
    write_files(release, tmp_path)
    sft = {
        e["id"]: e
        for e in map(json.loads, (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines())
    }[str(dialogue.pk)]
    examples = dri_lines(tmp_path)
    assert len(examples) == 6
    for example in examples:
        assert list(example) == ["prompt", "completion", "strategies", "scenario", "id", "source"]
        prompt, completion = example["prompt"], example["completion"]
        # The prompt is the dialogue up to the masked turn, exactly as sft/ has it.
        assert prompt == sft["messages"][: len(prompt)]
        assert prompt[0]["role"] == "system" and prompt[-1]["role"] == "user"
        assert sft["messages"][len(prompt)]["role"] == "assistant"
        assert completion == [{"role": "assistant", "content": completion[0]["content"]}]
        assert example["id"].startswith(f"{dialogue.pk}-c")
        assert example["scenario"] == sft["scenario"]
    jsonl = datasets.load_dataset(
        "json", data_files=str(tmp_path / "sft_dri" / f"{split}.jsonl"), split="train"
    )
    parquet = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "parquet" / "sft_dri" / f"{split}.parquet"),
        split="train",
    )
    for loaded in (jsonl, parquet):
        assert len(loaded) == 6 and "messages" not in loaded.column_names
        assert {"prompt", "completion"} <= set(loaded.column_names)
        assert loaded[0]["completion"][0]["role"] == "assistant"
        assert sorted(r[0]["content"] for r in loaded["completion"]) == sorted(
            e["completion"][0]["content"] for e in examples
        )


def test_a_folder_written_before_the_policy_is_written_again(dialogue, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    release = create_release("r-old-layout", dri_policy="best")
    folder = ensure_files(release)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["dri_policy"]  # as an older build wrote it, with whole dialogues in sft_dri/
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "sft_dri" / "train.jsonl").write_text('{"messages": []}\n')
    ensure_files(release)
    assert json.loads((folder / "manifest.json").read_text())["dri_policy"] == "best"
    assert completions(folder) == {"Best."}


# ---- choosing it ------------------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    sent: list[int] = []
    monkeypatch.setattr("curation.releases.views.build_release.delay_on_commit", sent.append)
    monkeypatch.setattr(
        "curation.management.commands.create_release.build_release.delay_on_commit", sent.append
    )
    return sent


def form(**changes):
    return release_form(name="r-web", notes="") | changes


def test_the_form_offers_the_policies_with_acceptable_checked(client, lead, queued):
    client.force_login(lead)
    html = client.get(reverse("curation-release-new")).content.decode()
    assert (
        '<input type="radio" name="dri_policy" value="acceptable" id="id_dri_policy_0" checked>'
        in html
    )
    for k, value in ((1, "unrejected"), (2, "best")):
        assert f'name="dri_policy" value="{value}" id="id_dri_policy_{k}">' in html


def test_the_policy_chosen_in_the_form_is_kept_and_shown(client, lead, queued, dialogue):
    from curation.tasks import build_release

    client.force_login(lead)
    response = client.post(reverse("curation-release-new"), form(dri_policy="unrejected"))
    assert response.status_code == 302
    release = Release.objects.get(name="r-web")
    assert release.dri_policy == "unrejected"
    build_release(queued.pop())
    assert completions(release.folder) == {
        "Best.",
        "Middle.",
        "Second.",
        "Tied one.",
        "Tied two.",
        "Unranked.",
    }
    page = client.get(reverse("curation-release", args=["r-web"])).content.decode()
    assert (
        "<dt>DRI policy</dt><dd>Unrejected: every candidate no one marked unacceptable</dd>" in page
    )
    assert "DRI examples in <code>sft_dri/</code>: 6." in page  # the card, on the page


def test_a_form_without_the_policy_gets_acceptable_and_a_wrong_one_is_refused(client, lead, queued):
    client.force_login(lead)
    client.post(reverse("curation-release-new"), form())
    assert Release.objects.get(name="r-web").dri_policy == "acceptable"
    response = client.post(reverse("curation-release-new"), form(name="r-bad", dri_policy="all"))
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Release.objects.filter(name="r-bad").exists()


def test_the_command_takes_the_policy(dialogue, queued):
    out = StringIO()
    call_command("create_release", "r-cmd", "--dri-policy", "best", stdout=out)
    release = Release.objects.get(name="r-cmd")
    assert release.dri_policy == "best"
    assert "DRI policy best" in out.getvalue()
    call_command("create_release", "r-cmd-default", stdout=StringIO())
    assert Release.objects.get(name="r-cmd-default").dri_policy == "acceptable"
    call_command(
        "create_release",
        "r-cmd-bg",
        "--background",
        "--dri-policy",
        "unrejected",
        stdout=StringIO(),
    )
    assert Release.objects.get(name="r-cmd-bg").dri_policy == "unrejected"
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("create_release", "r-cmd-bad", "--dri-policy", "all", stdout=StringIO())


def test_the_training_form_opens_on_a_release_with_dri_completions(
    dialogue, client, superuser, settings, tmp_path
):
    from training import jobs

    settings.MEDIA_ROOT = tmp_path / "media"
    release = create_release("r-form", dri_policy="unrejected")
    write_files(release, release.folder)
    assert dri_lines(release.folder)  # prompt-completion lines, which have no "messages"
    with_dri = jobs.suggest_max_length(release, "sft_dri", "")
    assert with_dri.tokens is not None
    client.force_login(superuser)
    page = client.get(f"{reverse('admin:training_trainingjob_new')}?release={release.pk}")
    assert page.status_code == 200 and "max-length-suggestion" in page.content.decode()
