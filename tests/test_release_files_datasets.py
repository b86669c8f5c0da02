"""Every file the README documents for a release opens as documented, empty splits included: a
release with no rankings and no DRI candidates (so no DPO pairs and no DRI examples in any split)
and a test split of no dialogues.

`datasets` builds no split from zero examples (load_dataset refuses it, whatever the file), so an
empty split is read as a stream: it must still open, with the columns of its kind, and give no
rows. An empty Parquet file carries its schema; an empty JSON Lines file takes its features from
its Parquet twin."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from curation.importing import import_file
from curation.models import Dialogue
from curation.releases.build import create_release, write_files

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("seeds")]

SPLITS = ("train", "valid", "test")
COLUMNS = {
    "sft": ["messages", "strategies", "scenario", "id", "source"],
    "sft_dri": ["prompt", "completion", "strategies", "scenario", "id", "source"],
    "dpo": ["prompt", "chosen", "rejected", "scenario", "id"],
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Dialogue.objects.update(status=Dialogue.Status.ACCEPTED)
    release = create_release("r-sparse", split={"train": 90, "valid": 10, "test": 0})
    assert release.counts["test"] == 0 and release.counts["valid"] > 0
    write_files(release, tmp_path / "r-sparse")
    return tmp_path / "r-sparse"


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_every_file_opens_as_documented_empty_splits_included(folder, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    cache = str(tmp_path / "hf-cache")
    for kind, columns in COLUMNS.items():
        for split in SPLITS:
            jsonl = folder / kind / f"{split}.jsonl"
            parquet = folder / "parquet" / kind / f"{split}.parquet"
            rows = lines(jsonl)
            assert (rows == 0) == (kind in ("dpo", "sft_dri") or split == "test"), (kind, split)

            stream = datasets.load_dataset(
                "parquet", data_files=str(parquet), split="train", streaming=True
            )
            assert list(stream.features) == columns, parquet
            assert len(list(stream)) == rows, parquet
            stream = datasets.load_dataset(
                "json",
                data_files=str(jsonl),
                split="train",
                streaming=True,
                features=stream.features,
            )
            assert len(list(stream)) == rows, jsonl
            if rows:
                for kind_of_file, path in (("parquet", parquet), ("json", jsonl)):
                    loaded = datasets.load_dataset(
                        kind_of_file, data_files=str(path), split="train", cache_dir=cache
                    )
                    assert (len(loaded), sorted(loaded.column_names)) == (rows, sorted(columns))

        # The three splits of a kind together, as a trainer names them.
        together = datasets.load_dataset(
            "parquet",
            data_files={s: str(folder / "parquet" / kind / f"{s}.parquet") for s in SPLITS},
            streaming=True,
        )
        counts = {s: len(list(together[s])) for s in SPLITS}
        assert counts == {s: lines(folder / kind / f"{s}.jsonl") for s in SPLITS}

    # The other files of the README's list.
    records = json.loads((folder / "extes.json").read_text(encoding="utf-8"))
    assert len(records) == 39  # 48 seeds; the crisis gate holds 9 for a lead
    report = import_file(folder / "extes.json", "extes")  # importable again
    assert (report.imported, report.duplicates) == (0, 39)
    esconv = datasets.load_dataset(
        "json", data_files=str(folder / "esconv.jsonl"), split="train", cache_dir=cache
    )
    assert len(esconv) == 39 and esconv[0]["dialog"][0]["speaker"] in ("usr", "sys")
    for kind in COLUMNS:  # an empty split is an empty table with its columns, for pyarrow too
        table = pq.read_table(folder / "parquet" / kind / "test.parquet")
        assert (table.num_rows, table.column_names) == (0, COLUMNS[kind])
    assert (folder / "README.md").read_text(encoding="utf-8").startswith("# r-sparse")
    for chart in ("scenarios.png", "strategies.png"):
        assert (folder / chart).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "statistics" in json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    listed = {item["path"]: item for item in manifest["files"]}
    for kind in COLUMNS:
        for split in SPLITS:
            assert f"{kind}/{split}.jsonl" in listed and f"parquet/{kind}/{split}.parquet" in listed
    for path, item in listed.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == item["sha256"], path
