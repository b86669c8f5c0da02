"""A release of N dialogues with all its files, against a bare json.dump of the same dialogues.

    python bench/release.py [--dialogues 100000]

Fills a fresh SQLite database with N accepted dialogues of 16 turns (copies of the seeds, as
bench/review.py does), then times freezing the release and writing every file (ExTES JSON, SFT,
SFT+DRI, DPO, ESConv, Parquet, the card and its charts, the manifest) the way the worker does it
(one pass), then the same files again from the stored snapshots (export_release's way), and, as
the baseline, a bare `json.dump` of the same dialogues as ExTES records. Prints:
    release dialogues=N freeze_and_json_s=… parquet_card_manifest_s=… total_s=… peak_rss_mib=…
    export_release dialogues=N seconds=… identical_files=True
    json_dump dialogues=N seconds=…
    release_vs_json_dump ratio=…
Targets (issue 5): at most 2x json.dump, peak memory under 1 GiB. The release runs in a fresh
process after the fill, so its peak memory is its own (the baseline's in-memory list comes after
that figure is taken).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(dialogues: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="extes-bench-release-"))
    _setup(data)
    from django.core.management import call_command
    from review import _fill  # the same synthetic table as bench/review.py

    from curation.models import Dialogue

    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115
    _fill(dialogues)
    Dialogue.objects.update(status="accepted")
    from django.db import connections

    connections.close_all()
    subprocess.run([sys.executable, __file__, "--release-in", str(data)], check=True)


def _setup(data: Path) -> None:
    os.environ["EXTES_DATA_DIR"] = str(data)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def run_release(data: Path) -> None:
    _setup(data)
    from curation.models import Dialogue, Release
    from curation.releases.build import (
        ReleaseWriter,
        extes_record,
        freeze,
        new_release,
        snapshots,
        write_files,
    )

    count = Dialogue.objects.count()

    # The worker's way: snapshots go to the database and to the files in one pass.
    start = time.perf_counter()
    release = new_release("bench-release")
    writer = ReleaseWriter(release, data / "release")
    freeze(release, sink=writer)
    frozen = time.perf_counter()
    writer.finish()
    done = time.perf_counter()
    Release.objects.filter(pk=release.pk).update(status="ready")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"release dialogues={count} freeze_and_json_s={frozen - start:.1f} "
        f"parquet_card_manifest_s={done - frozen:.1f} total_s={done - start:.1f} "
        f"peak_rss_mib={peak:.0f}",
        flush=True,
    )
    # export_release's way: the same files again from the stored snapshots.
    began = time.perf_counter()
    write_files(release, data / "export")
    export = time.perf_counter() - began
    same = (data / "release" / "manifest.json").read_bytes() == (
        data / "export" / "manifest.json"
    ).read_bytes()
    print(f"export_release dialogues={count} seconds={export:.1f} identical_files={same}")

    records = [extes_record(snap) for _, snap in snapshots(release)]
    began = time.perf_counter()
    with (data / "baseline.json").open("w", encoding="utf-8") as out:
        json.dump(records, out)  # bare: the standard library's defaults
    baseline = time.perf_counter() - began
    print(f"json_dump dialogues={len(records)} seconds={baseline:.1f}")
    print(f"release_vs_json_dump ratio={(done - start) / baseline:.2f}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=100_000)
    parser.add_argument("--release-in", type=Path, help=argparse.SUPPRESS)  # the child's part
    return parser


if __name__ == "__main__":
    arguments = make_parser().parse_args()
    if arguments.release_in:
        run_release(arguments.release_in)
    else:
        main(arguments.dialogues)
