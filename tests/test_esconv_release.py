"""manage.py esconv_release: ESConv's own splits as a release folder, with DRI replies written by the
teacher over HTTP (a real local server), in the prompt-completion form training reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.fake_teacher import FakeTeacher
from training.data import read_examples, variant_files


@pytest.fixture
def small_esconv(esconv_dir: Path, tmp_path: Path) -> Path:
    """The first records of each ESConv split, in a folder of the test's own."""
    folder = tmp_path / "esconv"
    folder.mkdir()
    for split, count in (("train", 6), ("valid", 2), ("test", 3)):
        lines = (esconv_dir / f"{split}.txt").read_text(encoding="utf-8").splitlines()[:count]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_the_splits_become_sft_files_and_dri_fills_become_completions(
    small_esconv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    out = tmp_path / "release"
    with FakeTeacher() as fake:
        monkeypatch.setenv("EXTES_TEACHER_BASE_URL", fake.url)
        monkeypatch.setenv("EXTES_TEACHER_MODEL", "fake-teacher")
        call_command(
            "esconv_release", "--out", str(out), "--esconv", str(small_esconv),
            "--dri-turns", "4", "--candidates", "2",
        )  # fmt: skip
        dri_requests = [b for b in fake.requests if "[MASKED]" in json.dumps(b)]
    counts = {
        split: len(read_examples(out / "sft" / f"{split}.jsonl"))
        for split in ("train", "valid", "test")
    }
    assert counts == {"train": 6, "valid": 2, "test": 3}
    first = read_examples(out / "sft" / "train.jsonl")[0]
    assert first["messages"][0]["role"] == "system"
    assert [m["role"] for m in first["messages"][1:3]] == ["user", "assistant"]

    examples = read_examples(out / "sft_dri" / "train.jsonl")
    assert len(dri_requests) >= 4 and 1 <= len(examples) <= 8
    for example in examples:
        assert example["prompt"][-1]["role"] == "user" and example["source"] == "dri"
        [completion] = example["completion"]
        assert completion["role"] == "assistant" and completion["content"].strip()
    # The masked turn's context is the real dialogue up to the gap.
    train_texts = {
        m["content"] for e in read_examples(out / "sft" / "train.jsonl") for m in e["messages"]
    }
    assert all(m["content"] in train_texts for e in examples for m in e["prompt"])
    assert variant_files(out, "sft_dri") == [
        out / "sft" / "train.jsonl",
        out / "sft_dri" / "train.jsonl",
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dri"]["teacher"] == {
        "backend": "http",
        "model": "fake-teacher",
        "base_url": fake.url,
    }
    assert manifest["dri"]["turns_masked"] == 4 and manifest["dri"]["examples"] == len(examples)
    assert manifest["dri"]["policy"] == "unrejected"


def test_a_folder_with_files_is_refused(small_esconv: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(CommandError, match="not empty"):
        call_command(
            "esconv_release", "--out", str(tmp_path / "full"), "--esconv", str(small_esconv)
        )
    assert (tmp_path / "full" / "x").read_text() == "keep me"
