"""Import every ESConv dialogue into a fresh database, export them, and compare with json.dump.

    python bench/import_export.py [--esconv-dir DIR] [--repeat N] [--files train valid test]

Prints one line per figure:
    import dialogues=1300 seconds=… dialogues_per_s=…
    export dialogues=1300 seconds=… dialogues_per_s=…
    json_dump dialogues=1300 seconds=…
    export_vs_json_dump ratio=…
Targets (issue 2): import of the 1,300 under 10 s on 2 cores; export within 3x of json.dump.
Runs on a fresh SQLite file in a temporary data folder, or with --database-url on a fresh test
database created next to that URL's database (e.g. postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(esconv_dir: Path, files: list[str], repeat: int, database_url: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["EXTES_DATA_DIR"] = tempfile.mkdtemp(prefix="extes-bench-")
    os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test.utils import get_runner

    from curation.exporting import extes_records, write_extes
    from curation.importing import import_file
    from curation.models import Dialogue

    runner = get_runner(settings)(verbosity=0, interactive=False)
    old_config = runner.setup_databases() if database_url else None
    if not database_url:
        call_command("migrate", verbosity=0)
    print(f"database engine={settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")
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
    parser.add_argument("--files", nargs="+", default=["train.txt", "valid.txt", "test.txt"])
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--repeat", type=int, default=3, help="export runs; the median is reported")
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(args.esconv_dir, args.files, args.repeat, args.database_url)
