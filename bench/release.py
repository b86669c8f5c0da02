"""A release of N dialogues with all its files, against a bare json.dump of the same dialogues.

    python bench/release.py [--dialogues 100000]

Fills a fresh SQLite database with N accepted dialogues of 16 turns (copies of the seeds, as
bench/review.py does), then times freezing the release and writing every file (ExTES JSON, SFT,
SFT+DRI, DPO, ESConv, Parquet, the card and its charts, the manifest) the way the worker does it
(one pass), then the same files again from the stored snapshots (export_release's way), and, as
the baseline, a bare `json.dump` of the same dialogues as ExTES records. Prints:
    release dialogues=N writer=… freeze_and_json_s=… parquet_card_manifest_s=… total_s=…
            peak_rss_mib=… child_peak_rss_mib=…   (one line)
    export_release dialogues=N seconds=… identical_files=True
    json_dump dialogues=N seconds=…
    release_vs_json_dump ratio=…
Targets (issues 5 and 16): at most 2x json.dump, peak memory under 1 GiB and flat. The release
runs in a fresh process after the fill, and its peak memory is read from /proc (VmHWM), so it is
its own (the baseline's in-memory list comes after that figure is taken). `--writer` picks who
writes the JSON and Parquet files (`auto`: as the worker does, by the release's size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(dialogues: int, writer: str) -> None:
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
    command = [sys.executable, __file__, "--release-in", str(data), "--writer", writer]
    subprocess.run(command, check=True)


def _setup(data: Path) -> None:
    os.environ["EXTES_DATA_DIR"] = str(data)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def run_release(data: Path, writer_kind: str) -> None:
    _setup(data)
    from curation.models import Dialogue, Release
    from curation.releases.build import (
        ChildWriter,
        ReleaseWriter,
        Writer,
        extes_record,
        freeze,
        new_release,
        snapshots,
        write_files,
        writer_for,
    )

    count = Dialogue.objects.count()

    # The worker's way: snapshots go to the database and to the files in one pass.
    start = time.perf_counter()
    release = new_release("bench-release")
    folder = data / "release"
    writer: Writer
    if writer_kind == "one":
        writer = ReleaseWriter(release, folder)
    elif writer_kind == "child":
        writer = ChildWriter(release, folder)
    else:
        writer = writer_for(release, folder, count)
    freeze(release, sink=writer)
    frozen = time.perf_counter()
    writer.finish()
    done = time.perf_counter()
    Release.objects.filter(pk=release.pk).update(status="ready")
    from curation.releases.writer import peak_kib

    peak = peak_kib() / 1024  # this process's own (VmHWM), not the filling parent's
    child_peak = getattr(writer, "child_peak_mib", None) or 0  # the child writer's own
    print(
        f"release dialogues={count} writer={type(writer).__name__} freeze_and_json_s={frozen - start:.1f} "
        f"parquet_card_manifest_s={done - frozen:.1f} total_s={done - start:.1f} "
        f"peak_rss_mib={peak:.0f} child_peak_rss_mib={child_peak:.0f}",
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
    parser.add_argument(
        "--writer",
        choices=("auto", "one", "child"),
        default="auto",
        help="auto: as the worker picks (settings.RELEASE_CHILD_WRITER_FROM); one: every file "
        "written in the freezing process; child: JSON and Parquet in a second process",
    )
    parser.add_argument("--release-in", type=Path, help=argparse.SUPPRESS)  # the child's part
    return parser


if __name__ == "__main__":
    arguments = make_parser().parse_args()
    if arguments.release_in:
        run_release(arguments.release_in, arguments.writer)
    else:
        main(arguments.dialogues, arguments.writer)
