"""Import every ESConv dialogue into a fresh database, export them, and compare with json.dump;
with --dialogues, time the import of larger files against reading them with json.loads.

    python bench/import_export.py [--esconv-dir DIR] [--repeat N] [--files train valid test]
    python bench/import_export.py --dialogues 5000 20000 100000 [--database-url URL]

Prints one line per figure:
    import dialogues=1300 seconds=… dialogues_per_s=…
    export dialogues=1300 seconds=… dialogues_per_s=…
    json_dump dialogues=1300 seconds=…
    export_vs_json_dump ratio=…
Targets (issue 2): import of the 1,300 under 10 s on 2 cores; export within 3x of json.dump.

With --dialogues, per size N instead, each in a fresh process so that peaks do not mix:
    scaled_file dialogues=N mib=…
    scaled_json_loads dialogues=N seconds=…
    scaled_import dialogues=N seconds=… dialogues_per_s=…
    scaled_import_vs_json_loads dialogues=N ratio=…
    scaled_import_peak_rss dialogues=N mib=…
The file is ESConv's dialogues copied up to N, every turn's text carrying the copy's number so
that none is a duplicate, as one JSON Lines file; json_loads is a bare json.loads of each of its
lines, timed in the same process. The import saves the dialogues for the crisis gate's worker, as
by default (EXTES_SAFETY_SCREEN=worker), without sending the worker its message. Targets (issue
"streaming import"): ratio at most 12 at 20k and 100k on SQLite, the same order on PostgreSQL;
peak RSS at 20k at most 1.5x the peak at 5k.

Runs on a fresh SQLite file in a temporary data folder, or with --database-url on a fresh test
database created next to that URL's database (e.g. postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FILES = ["train.txt", "valid.txt", "test.txt"]


def main(esconv_dir: Path, files: list[str], repeat: int, database_url: str) -> None:
    old_config, runner = _setup(database_url)
    from curation.exporting import extes_records, write_extes
    from curation.importing import import_file
    from curation.models import Dialogue

    try:
        start = time.perf_counter()
        for name in files:
            report = import_file(esconv_dir / name, "esconv")
            assert not report.rejected, report.lines()
        import_seconds = time.perf_counter() - start
        count = Dialogue.objects.count()
        print(
            f"import dialogues={count} seconds={import_seconds:.2f} "
            f"dialogues_per_s={count / import_seconds:.0f}"
        )

        export_times, dump_times = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            write_extes(Dialogue.objects.all(), io.StringIO())
            export_times.append(time.perf_counter() - start)

            records = list(extes_records(Dialogue.objects.all()))  # the same records, in memory
            start = time.perf_counter()
            json.dump(records, io.StringIO(), ensure_ascii=False, indent=2)
            dump_times.append(time.perf_counter() - start)
        export_s, dump_s = statistics.median(export_times), statistics.median(dump_times)
        print(
            f"export dialogues={count} seconds={export_s:.2f} dialogues_per_s={count / export_s:.0f}"
        )
        print(f"json_dump dialogues={count} seconds={dump_s:.2f}")
        print(f"export_vs_json_dump ratio={export_s / dump_s:.2f}")
    finally:
        if old_config is not None:
            runner.teardown_databases(old_config)


def scaled(esconv_dir: Path, sizes: list[int], database_url: str) -> None:
    """One fresh process per size (`scaled_one`), its lines passed on as they come."""
    for size in sizes:
        command = [sys.executable, __file__, "--esconv-dir", str(esconv_dir), "--one-size"]
        command += [str(size), "--database-url", database_url]
        subprocess.run(command, check=True)


def scaled_one(esconv_dir: Path, size: int, database_url: str) -> None:
    old_config, runner = _setup(database_url)
    from django.conf import settings

    from curation import screening
    from curation.importing import import_file

    folder = Path(settings.DATA_DIR)
    path = folder / f"esconv-{size}.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for record in _copies(esconv_dir, size):
            out.write(json.dumps(record) + "\n")
    print(f"scaled_file dialogues={size} mib={path.stat().st_size / 2**20:.0f}", flush=True)

    start = time.perf_counter()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            json.loads(line)
    loads_seconds = time.perf_counter() - start
    print(f"scaled_json_loads dialogues={size} seconds={loads_seconds:.2f}", flush=True)

    try:
        # Saved SCREENING for a worker, as by default; the message to it is left out, so that no
        # broker is needed and no worker elsewhere gets ids of this scratch database.
        with mock.patch.object(screening, "send"):
            start = time.perf_counter()
            report = import_file(path, "esconv", screen="worker", rejects_path=folder / "r.jsonl")
            seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        assert (report.imported, sum(report.rejected.values())) == (size, 0), report.lines()
    finally:
        if old_config is not None:
            runner.teardown_databases(old_config)
        shutil.rmtree(folder)  # the file, and the SQLite database (a GB at 100k)
    print(
        f"scaled_import dialogues={size} seconds={seconds:.2f} dialogues_per_s={size / seconds:.0f}"
    )
    print(f"scaled_import_vs_json_loads dialogues={size} ratio={seconds / loads_seconds:.1f}")
    print(f"scaled_import_peak_rss dialogues={size} mib={peak:.0f}", flush=True)


def _copies(esconv_dir: Path, size: int) -> Iterator[dict[str, Any]]:
    """ESConv's dialogues over and over until SIZE, each turn's text ending in its dialogue's
    number: every one differs from the others, and keeps ESConv's shape and drift."""
    records = [
        json.loads(line)
        for name in FILES
        for line in (esconv_dir / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    for number in range(size):
        record = records[number % len(records)]
        dialog = [{**turn, "text": f"{turn['text']} ({number})"} for turn in record["dialog"]]
        yield {**record, "dialog": dialog}


def _setup(database_url: str) -> tuple[Any, Any]:
    """Django on a fresh database: (what teardown_databases needs or None, the test runner)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["EXTES_DATA_DIR"] = tempfile.mkdtemp(prefix="extes-bench-")
    os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test.utils import get_runner

    runner = get_runner(settings)(verbosity=0, interactive=False)
    old_config = None
    if database_url:
        # A test database of our own: a test run elsewhere may be using the default test name.
        connections["default"].settings_dict["TEST"]["NAME"] = f"test_bench_{os.getpid()}"
        old_config = runner.setup_databases()
    else:
        call_command("migrate", verbosity=0)
    print(f"database engine={settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
    return old_config, runner


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--esconv-dir",
        type=Path,
        default=Path(
            os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv")
        ),
    )
    parser.add_argument("--files", nargs="+", default=FILES)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--repeat", type=int, default=3, help="export runs; the median is reported")
    parser.add_argument(
        "--dialogues",
        type=int,
        nargs="+",
        metavar="N",
        help="time the import of ESConv copied up to N dialogues instead, a process per N",
    )
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)  # one --dialogues size
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    if args.one_size:
        scaled_one(args.esconv_dir, args.one_size, args.database_url)
    elif args.dialogues:
        scaled(args.esconv_dir, args.dialogues, args.database_url)
    else:
        main(args.esconv_dir, args.files, args.repeat, args.database_url)
