"""Time the dialogue list page (the annotators' home) as the table grows.

    python bench/dialogue_list.py [--dialogues 20000] [--requests 30]
    python bench/dialogue_list.py --database-url postgres://postgres@127.0.0.1:5432/postgres

Fills a fresh database (SQLite in a temporary folder, or with --database-url a test database
created next to that URL's) with the 1,300 ESConv dialogues, then copies of them up to
--dialogues, and requests the list unfiltered, filtered by status, by scenario, by text (words
in most dialogues, "my job", and a rare one, "landlord", in 3 of ESConv's), and a deep keyset
page. The copies go in through the ORM, so the search index's triggers index them as they would
an import. The requests run in a fresh process once the table is filled, as a web server's
would. Prints one line per view:
    list_<case> dialogues=N p50_ms=… p95_ms=… queries=…
Target (issue "full-text search"): list_text p95 under 100 ms at 100,000 dialogues on SQLite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(esconv_dir: Path, dialogues: int, requests: int, database_url: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["EXTES_DATA_DIR"] = tempfile.mkdtemp(prefix="extes-bench-")
    os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test.utils import get_runner

    if database_url:
        # A test database of our own: a test run elsewhere may be using the default test name.
        runner = get_runner(settings)(verbosity=0, interactive=False)
        connections["default"].settings_dict["TEST"]["NAME"] = f"test_bench_{os.getpid()}"
        old_config = runner.setup_databases()
        try:
            _run(esconv_dir, dialogues, requests)
        finally:
            runner.teardown_databases(old_config)
    else:
        call_command("migrate", verbosity=0)
        _run(esconv_dir, dialogues, requests)


def _run(esconv_dir: Path, dialogues: int, requests: int) -> None:
    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction

    from curation.importing import import_file
    from curation.models import Dialogue, Turn

    start = time.perf_counter()
    for name in ("train.txt", "valid.txt", "test.txt"):
        import_file(esconv_dir / name, "esconv")
    _copy_until(dialogues, Dialogue, Turn, transaction)
    print(
        f"fill dialogues={Dialogue.objects.count()} seconds={time.perf_counter() - start:.1f}",
        flush=True,
    )
    Dialogue.objects.filter(id__lt=Dialogue.objects.count() // 3).update(status="accepted")
    User.objects.create_user("bench", password="bench-password-1").groups.add(
        Group.objects.get(name="lead")  # leads see every dialogue
    )
    # The requests run in a fresh process, as a web server's would, not in this one, which holds
    # the fill's objects: timed here, a rare word's search had a p95 of 112 ms at 100,000, and
    # in a fresh process on the same database its four slowest of 30 took 25-26 ms.
    from django.db import connections

    url = connection.settings_dict
    database = (
        ""
        if connection.vendor == "sqlite"
        else (
            f"postgres://{url['USER']}:{url['PASSWORD']}@{url['HOST']}:{url['PORT']}/{url['NAME']}"
        )
    )
    connections.close_all()
    env = {**os.environ, "DATABASE_URL": database}
    command = [sys.executable, __file__, "--requests", str(requests), "--time-only"]
    subprocess.run(command, check=True, env=env)


def time_requests(requests: int) -> None:
    """The list's views, timed (in the process `main` starts once the table is filled)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from curation.models import Dialogue, Scenario

    dialogues = Dialogue.objects.count()
    user = User.objects.get(username="bench")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    scenario = Scenario.objects.get(name="Depression and Low Mood").pk
    middle = Dialogue.objects.order_by("id").values_list("id", flat=True)[dialogues // 2]
    cases: dict[str, dict[str, Any]] = {
        "unfiltered": {},
        "status": {"status": "accepted"},
        "scenario": {"scenario": scenario},
        "text": {"q": "my job"},
        "text_rare": {"q": "landlord"},
        "deep_page": {"before": middle},
        "htmx_partial": {"origin": "imported"},
    }
    total = Dialogue.objects.count()
    for case, params in cases.items():
        headers = {"HX-Request": "true"} if case == "htmx_partial" else {}
        client.get("/dialogues/", params, headers=headers)  # warm
        times = []
        for _ in range(requests):
            with CaptureQueriesContext(connection) as queries:
                start = time.perf_counter()
                response = client.get("/dialogues/", params, headers=headers)
                times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        p95 = statistics.quantiles(times, n=20)[-1]
        # How many the search finds, to show that it finds them (the page shows 50).
        found = f" matches={Dialogue.objects.search(params['q']).count()}" if "q" in params else ""
        print(
            f"list_{case} dialogues={total} p50_ms={statistics.median(times):.1f} "
            f"p95_ms={p95:.1f} queries={len(queries)}{found}",
            flush=True,
        )


def _copy_until(target: int, Dialogue, Turn, transaction) -> None:
    """Copy existing dialogues (with new hashes) until the table holds `target` rows."""
    originals = list(Dialogue.objects.order_by("id"))
    turns: dict[int, list] = {}
    for turn in Turn.objects.order_by("dialogue_id", "index"):
        turns.setdefault(turn.dialogue_id, []).append(turn)
    copy_number = 0
    while Dialogue.objects.count() < target:
        copy_number += 1
        batch = originals[: target - Dialogue.objects.count()]
        with transaction.atomic():
            made = Dialogue.objects.bulk_create(
                Dialogue(
                    scenario_id=d.scenario_id,
                    description=d.description,
                    origin=d.origin,
                    source_file=d.source_file,
                    source_record=d.source_record,
                    source_format=d.source_format,
                    content_hash=f"{d.content_hash[:56]}{copy_number:08d}",
                    raw=d.raw,
                    repairs=d.repairs,
                )
                for d in batch
            )
            Turn.objects.bulk_create(
                Turn(
                    dialogue_id=new.pk,
                    index=t.index,
                    role=t.role,
                    text=t.text,
                    strategy_id=t.strategy_id,
                )
                for old, new in zip(batch, made, strict=True)
                for t in turns[old.pk]
            )


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
    parser.add_argument("--dialogues", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL URL: the bench runs on a fresh test database created next to it",
    )
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    if args.time_only:  # the filled database: EXTES_DATA_DIR or DATABASE_URL from `main`
        time_requests(args.requests)
    else:
        main(args.esconv_dir, args.dialogues, args.requests, args.database_url)
