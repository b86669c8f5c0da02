"""Server time of the annotators' hot paths on a large table.

    python bench/review.py [--dialogues 100000] [--requests 200]

Fills a fresh SQLite database with N dialogues of 16 turns (copies of the seed dialogues with
fresh hashes), a third of them already reviewed by other annotators, then, with the Django test
client, measures 200 requests each of:
    next          POST /review/next/ (after a submit it finds the dialogue the submit claimed)
    review_page   GET /review/<id>/
    label_save    POST /review/<id>/label/ (htmx), which checks the live hold
    submit        POST /review/<id>/submit/: stores the review, settles the dialogue when it
                  was the last review, and claims the next dialogue
and prints `name dialogues=N p50_ms=… p95_ms=… queries=…` (queries of the last request).
Targets (issue 4): p95 < 100 ms each, and the same query count at 1k and 100k dialogues.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(dialogues: int, requests: int) -> None:
    os.environ["EXTES_DATA_DIR"] = tempfile.mkdtemp(prefix="extes-bench-review-")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from curation.models import Dialogue, Strategy, Turn

    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115
    start = time.perf_counter()
    _fill(dialogues)
    print(
        f"fill dialogues={Dialogue.objects.count()} seconds={time.perf_counter() - start:.1f}",
        flush=True,
    )

    user = User.objects.create_user("bench-annotator", password="bench-password-1")
    user.groups.add(Group.objects.get(name="annotator"))
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    strategy = Strategy.objects.get(taxonomy="extes", name="Affirmation").pk

    def timed(call, *args, **kwargs):
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            response = call(*args, **kwargs)
            elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code in (200, 204, 302), response.status_code
        return elapsed, len(queries), response

    results: dict[str, list[float]] = {
        "next": [],
        "review_page": [],
        "label_save": [],
        "submit": [],
    }
    counts: dict[str, int] = {}
    for _ in range(requests):
        ms, counts["next"], response = timed(client.post, "/review/next/")
        results["next"].append(ms)
        url = response.url
        ms, counts["review_page"], _ = timed(client.get, url)
        results["review_page"].append(ms)
        dialogue_id = int(url.rstrip("/").split("/")[-1])
        turn = Turn.objects.filter(dialogue_id=dialogue_id, role="supporter").order_by("index")[0]
        ms, counts["label_save"], _ = timed(
            client.post,
            f"{url}label/",
            {"turn": turn.pk, "strategy": strategy},
            headers={"HX-Request": "true"},
        )
        results["label_save"].append(ms)
        ms, counts["submit"], _ = timed(client.post, f"{url}submit/", {"decision": "accept"})
        results["submit"].append(ms)
    total = Dialogue.objects.count()
    for name, times in results.items():
        p95 = statistics.quantiles(times, n=20)[-1]
        print(
            f"{name} dialogues={total} p50_ms={statistics.median(times):.1f} p95_ms={p95:.1f} "
            f"queries={counts[name]}"
        )


def _fill(target: int) -> None:
    """Copies of the seed dialogues, 16 turns each; every third one reviewed by two others."""
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.utils import timezone

    from curation.models import Dialogue, Review, Turn

    seeds = list(Dialogue.objects.filter(origin="seed").order_by("id"))
    turns = {d.pk: list(Turn.objects.filter(dialogue=d).order_by("index")[:16]) for d in seeds}
    others = [User.objects.create_user(f"other{i}", password="x-password-1") for i in range(2)]
    made = Dialogue.objects.count()
    copy = 0
    while made < target:
        copy += 1
        batch = [seeds[i % len(seeds)] for i in range(min(2000, target - made))]
        with transaction.atomic():
            new = Dialogue.objects.bulk_create(
                Dialogue(
                    scenario_id=d.scenario_id,
                    description=d.description,
                    origin="generated",
                    source_file="bench",
                    content_hash=f"bench-{copy}-{i}-{d.content_hash[:40]}",
                    raw={},
                    status="pending",
                )
                for i, d in enumerate(batch)
            )
            Turn.objects.bulk_create(
                Turn(
                    dialogue_id=n.pk,
                    index=t.index,
                    role=t.role,
                    text=t.text,
                    strategy_id=t.strategy_id,
                )
                for old, n in zip(batch, new, strict=True)
                for t in turns[old.pk]
            )
            reviewed = new[::3]
            Review.objects.bulk_create(
                Review(
                    dialogue=n,
                    annotator=u,
                    decision="accept",
                    based_on_version=1,
                    submitted_at=timezone.now(),
                )
                for n in reviewed
                for u in others
            )
            Dialogue.objects.filter(pk__in=[n.pk for n in reviewed]).update(
                reviews_done=2, status="accepted"
            )
        made += len(batch)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(args.dialogues, args.requests)
