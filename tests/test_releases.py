"""Releases: frozen, deterministic, split by scenario, and every file in the format its tool reads."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from curation import settlement
from curation.importing import import_file
from curation.models import Candidate, Dialogue, Ranking, ReleaseDialogue, Turn
from curation.releases.build import (
    FileOptions,
    assign_splits,
    create_release,
    rank_pairs,
    write_files,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]


@pytest.fixture
def accepted() -> list[Dialogue]:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    Dialogue.objects.filter(pk=Dialogue.objects.order_by("id").last().pk).update(status="rejected")
    # The crisis gate holds 9 seeds for a lead: no release takes them until one clears them.
    return list(Dialogue.objects.releasable().filter(status="accepted").order_by("id"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_by_default_a_release_holds_every_accepted_dialogue(accepted):
    release = create_release("r-1")
    assert sorted(release.items.values_list("dialogue_id", flat=True)) == [d.pk for d in accepted]
    assert sum(release.counts.values()) == len(accepted) == 38
    assert len(release.checksum) == 64


def test_splits_are_deterministic_and_stratified():
    by_scenario = {"a": list(range(1, 101)), "b": list(range(101, 111))}
    first = assign_splits(by_scenario, {"train": 80, "valid": 10, "test": 10})
    assert first == assign_splits(
        dict(reversed(by_scenario.items())), {"train": 80, "valid": 10, "test": 10}
    )
    for ids, expected in ((range(1, 101), (80, 10, 10)), (range(101, 111), (8, 1, 1))):
        counts = [sum(first[i] == s for i in ids) for s in ("train", "valid", "test")]
        assert tuple(counts) == expected
    # Thirty scenarios of two dialogues: the totals still follow the shares.
    tiny = assign_splits(
        {f"s{k}": [2 * k, 2 * k + 1] for k in range(30)}, {"train": 80, "valid": 10, "test": 10}
    )
    assert [list(tiny.values()).count(s) for s in ("train", "valid", "test")] == [48, 6, 6]


def test_later_edits_never_change_a_release(accepted, tmp_path):
    release = create_release("r-frozen")
    write_files(release, tmp_path / "before")
    dialogue = accepted[0]
    turn = dialogue.turns.get(index=1)
    turn.text = "Changed after the release."
    turn.save()
    again = create_release("r-later")
    write_files(release, tmp_path / "after")
    assert files_of(tmp_path / "before") == files_of(tmp_path / "after")
    snapshot = ReleaseDialogue.objects.get(release=release, dialogue_id=dialogue.pk).snapshot
    assert "Changed after the release." not in json.dumps(snapshot)
    assert again.checksum != release.checksum


def test_the_same_release_writes_byte_identical_files(accepted, tmp_path):
    release = create_release("r-det")
    one = write_files(release, tmp_path / "one")
    two = write_files(release, tmp_path / "two")
    assert one == two
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    listed = {f["path"] for f in one["files"]}
    assert {
        "extes.json",
        "esconv.jsonl",
        "sft/train.jsonl",
        "sft/valid.jsonl",
        "sft/test.jsonl",
        "sft_dri/train.jsonl",
        "dpo/train.jsonl",
    } <= listed


def test_the_workers_one_pass_writes_what_export_writes(accepted, tmp_path, settings):
    from curation.releases.build import new_release
    from curation.tasks import build_release

    settings.MEDIA_ROOT = tmp_path / "media"
    release = new_release("r-one-pass")
    build_release(release.pk)  # freezes and writes the files in one pass
    release.refresh_from_db()
    assert release.status == "ready" and len(release.checksum) == 64
    write_files(release, tmp_path / "export")  # export_release's way, from the stored snapshots
    assert files_of(release.folder) == files_of(tmp_path / "export")


def test_extes_json_has_the_standard_librarys_indented_layout(accepted, tmp_path):
    Turn.objects.filter(pk=Turn.objects.order_by("id").first().pk).update(
        text='Quotes " and \\ backslashes, a tab\t, a control \x01 char, é and 😀.'
    )
    release = create_release("r-layout")
    write_files(release, tmp_path)
    text = (tmp_path / "extes.json").read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
    assert "😀" in text and "\\u0001" in text


def test_extes_json_round_trips_through_the_importer(accepted, tmp_path):
    release = create_release("r-rt")
    write_files(release, tmp_path)
    records = json.loads((tmp_path / "extes.json").read_text())
    assert len(records) == 38
    report = import_file(tmp_path / "extes.json", "extes")
    assert (report.imported, report.duplicates, sum(report.rejected.values())) == (0, 38, 0)


def test_sft_examples_fit_the_local_chat_template(accepted, tmp_path):
    import os

    from transformers import AutoTokenizer

    from generation.localmodel import ensure_local_model
    from tests.conftest import ROOT

    release = create_release("r-sft")
    write_files(release, tmp_path, FileOptions(strategy_tags=True))
    folder = ensure_local_model(
        os.environ.get("EXTES_TEST_MODELS_DIR", ROOT / "var" / "test-models")
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = [
        json.loads(line)
        for split in ("train", "valid", "test")
        for line in (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(examples) == 38
    for example in examples:
        text = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        assert example["messages"][-1]["content"] in text
        assert example["messages"][0]["role"] == "system"
        assistant = [m for m in example["messages"] if m["role"] == "assistant"]
        assert len(assistant) == len(example["strategies"])
        assert all(m["content"].startswith("[") for m in assistant)


def test_every_file_loads_with_datasets(accepted, tmp_path):
    import datasets

    release = create_release("r-ds")
    write_files(release, tmp_path)
    loaded = datasets.load_dataset(
        "json",
        data_files={s: str(tmp_path / "sft" / f"{s}.jsonl") for s in ("train", "valid", "test")},
    )
    assert sum(len(loaded[s]) for s in loaded) == 38
    # No DRI candidates here: sft_dri/ holds the DRI examples only, so it is empty
    # (tests/test_release_dri_policy.py loads a filled one).
    for s in ("train", "valid", "test"):
        assert (tmp_path / "sft_dri" / f"{s}.jsonl").read_bytes() == b""
    esconv = datasets.load_dataset("json", data_files=str(tmp_path / "esconv.jsonl"))["train"]
    assert len(esconv) == 38 and esconv[0]["dialog"][0]["speaker"] in ("usr", "sys")


def test_rank_pairs_combine_annotators_and_never_pair_ties():
    a = {"order": [["c1"], ["c2", "t9"], ["c3"]], "unacceptable": []}
    b = {"order": [["c1"], ["t9"], ["c2", "c3"]], "unacceptable": ["c3"]}
    best_vs_rest = rank_pairs([a, b], FileOptions())
    assert best_vs_rest == [("c1", "t9"), ("c1", "c2"), ("c1", "c3")]
    tie = {"order": [["c1", "c2"]], "unacceptable": []}
    assert rank_pairs([tie], FileOptions()) == []
    assert rank_pairs([tie], FileOptions(dpo_pairs="all_pairs", dpo_min_margin=0.5)) == []
    all_pairs = rank_pairs([a], FileOptions(dpo_pairs="all_pairs", dpo_min_margin=1))
    assert all_pairs == [("c1", "c2"), ("c1", "t9"), ("c1", "c3"), ("c2", "c3"), ("t9", "c3")]
    assert rank_pairs([a], FileOptions(dpo_pairs="all_pairs", dpo_min_margin=2)) == [("c1", "c3")]


def test_dri_candidates_and_rankings_and_edits_make_sft_dri_and_dpo(accepted, tmp_path):
    dialogue = accepted[0]
    turn = dialogue.turns.filter(role="supporter").order_by("index")[1]
    good = Candidate.objects.create(
        turn=turn, text="A kind, different reply.", strategy=turn.strategy
    )
    bad = Candidate.objects.create(turn=turn, text="A poor reply.", strategy=turn.strategy)
    unranked_turn = dialogue.turns.filter(role="supporter").order_by("index")[2]
    Candidate.objects.create(turn=unranked_turn, text="Never ranked.", strategy=None)
    ranker = User.objects.create_user("ranker", password="pw-123456")
    Ranking.objects.create(
        turn=turn,
        annotator=ranker,
        order=[[f"c{good.pk}"], [f"t{turn.pk}"], [f"c{bad.pk}"]],
        unacceptable=[f"c{bad.pk}"],
        display_order=[],
    )
    edited = dialogue.turns.filter(role="supporter").order_by("index")[0]
    original_text = edited.text
    # The dialogue settles with one turn's text edited (by the reviewers or a lead).
    settlement.write_final(
        dialogue,
        "accept",
        {},
        {edited.index: "An edited, better reply."},
        actor=None,
        expected_version=None,
    )

    release = create_release("r-dri")
    split = ReleaseDialogue.objects.get(release=release, dialogue_id=dialogue.pk).split
    write_files(release, tmp_path)
    dri = [
        json.loads(line)
        for line in (tmp_path / "sft_dri" / f"{split}.jsonl").read_text().splitlines()
    ]
    # Only the DRI examples, as prompt and completion: the acceptable candidate (the default
    # policy), not the unacceptable one nor the one never ranked.
    assert [e["source"] for e in dri] == ["dri"]
    assert dri[0]["completion"] == [{"role": "assistant", "content": "A kind, different reply."}]
    assert dri[0]["prompt"][-1]["role"] == "user" and "messages" not in dri[0]
    sft = [
        json.loads(line) for line in (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines()
    ]
    whole = next(e for e in sft if e["id"] == str(dialogue.pk))["messages"]
    assert dri[0]["prompt"] == whole[: len(dri[0]["prompt"])]
    assert whole[len(dri[0]["prompt"])]["content"] == turn.text  # the masked reply
    pairs = [
        json.loads(line) for line in (tmp_path / "dpo" / f"{split}.jsonl").read_text().splitlines()
    ]
    chosen_rejected = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert ("A kind, different reply.", turn.text) in chosen_rejected
    assert ("A kind, different reply.", "A poor reply.") in chosen_rejected
    assert ("An edited, better reply.", original_text) in chosen_rejected
    assert all(p["prompt"][-1]["role"] == "user" for p in pairs)
    import datasets

    as_parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "parquet" / "dpo" / f"{split}.parquet")
    )["train"]
    assert len(as_parquet) == len(pairs)
    assert as_parquet[0]["chosen"][0]["role"] == "assistant"


def test_crisis_flagged_dialogues_stay_out_until_a_lead_clears_them(accepted, lead):
    from curation.lead import safety

    flagged, excluded = accepted[0], accepted[1]
    Dialogue.objects.filter(pk__in=[flagged.pk, excluded.pk]).update(safety_status="flagged")
    held = create_release("r-safe").items.values_list("dialogue_id", flat=True)
    assert flagged.pk not in held and excluded.pk not in held
    safety.clear(Dialogue.objects.get(pk=flagged.pk), lead, "The supporter points to help well.")
    safety.exclude(Dialogue.objects.get(pk=excluded.pk), lead, "Method detail in turn 3.")
    release = create_release("r-cleared")
    held = release.items.values_list("dialogue_id", flat=True)
    assert flagged.pk in held and excluded.pk not in held


def test_commands_create_and_export(accepted, tmp_path):
    out = StringIO()
    call_command("create_release", "extes-curated-1.0.0", "--split", "70/15/15", stdout=out)
    assert "extes-curated-1.0.0: 38 dialogues" in out.getvalue()
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_release", "extes-curated-1.0.0", stdout=StringIO())
    with pytest.raises(CommandError, match="lower case"):
        call_command("create_release", "Bad Name", stdout=StringIO())
    out = StringIO()
    call_command(
        "export_release", "extes-curated-1.0.0", "--out", str(tmp_path / "rel"), stdout=out
    )
    manifest = json.loads((tmp_path / "rel" / "manifest.json").read_text())
    assert manifest["release"] == "extes-curated-1.0.0"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    with pytest.raises(CommandError, match="not empty"):
        call_command(
            "export_release",
            "extes-curated-1.0.0",
            "--out",
            str(tmp_path / "rel"),
            stdout=StringIO(),
        )
    assert Turn.objects.exists()


def test_parquet_splits_load_with_datasets_and_the_card_is_written(accepted, tmp_path):
    import datasets

    release = create_release("r-pq")
    write_files(release, tmp_path)
    loaded = datasets.load_dataset(
        "parquet",
        data_files={
            s: str(tmp_path / "parquet" / "sft" / f"{s}.parquet")
            for s in ("train", "valid", "test")
        },
    )
    assert sum(len(loaded[s]) for s in loaded) == 38
    assert loaded["train"][0]["messages"][0]["role"] == "system"
    import pyarrow.parquet as pq

    dpo = pq.read_table(tmp_path / "parquet" / "dpo" / "train.parquet")  # no rankings: empty
    assert dpo.num_rows == 0 and {"prompt", "chosen", "rejected"} <= set(dpo.column_names)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# r-pq") and "![Dialogues per scenario](scenarios.png)" in card
    assert "This is the first release." in card
    assert (tmp_path / "scenarios.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "strategies.png").stat().st_size > 5_000


def test_changelog_against_the_previous_release(accepted, tmp_path):
    from curation.models import Strategy
    from curation.releases.card import changelog

    first = create_release("r-a")
    first.status = "ready"
    first.save()
    gone, edited, relabelled = accepted[0], accepted[1], accepted[2]
    Dialogue.objects.filter(pk=gone.pk).update(status="rejected")
    turn = edited.turns.get(index=0)
    turn.text = "A changed opening."
    turn.save()
    labelled = relabelled.turns.filter(role="supporter").exclude(strategy__name="Others").first()
    labelled.strategy = Strategy.objects.get(taxonomy="extes", name="Others")
    labelled.save()
    newcomer = Dialogue.objects.filter(status="rejected").exclude(pk=gone.pk).get()
    Dialogue.objects.filter(pk=newcomer.pk).update(status="accepted")
    second = create_release("r-b")
    assert second.previous == first
    changes = changelog(second)
    assert changes["added"] == [newcomer.pk] and changes["removed"] == [gone.pk]
    assert changes["edited"] == [edited.pk] and changes["relabelled"] == [relabelled.pk]
    write_files(second, tmp_path)
    assert (
        "Against r-a: 1 added, 1 removed, 1 edited, 1 relabelled."
        in (tmp_path / "README.md").read_text()
    )
