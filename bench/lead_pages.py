"""Server time of the leads' pages on a large, busy studio.

    python bench/lead_pages.py [--dialogues 100000] [--labelled-turns 80000] [--annotators 40]
                               [--requests 20]

Fills a fresh SQLite database with N dialogues of 16 turns (copies of the seed dialogues with
fresh hashes); enough of them reviewed that --labelled-turns supporter turns carry labels from
two annotators each, drawn from --annotators people (with disagreements, skips and rankings left
out: the dialogues are accepted, the labels differ on about one turn in five). Then, with the
Django test client and a lead logged in, measures:
    lead_dashboard          GET /lead/
    lead_agreement_cached   GET /lead/agreement/ while nothing changes
    lead_agreement_changed  GET /lead/agreement/ after one new label before each request: what a
                            lead sees on a studio where annotators are at work (above
                            EXTES_LEAD_FIGURES_INLINE_MAX labels: the last figures, marked as
                            such, while a worker is asked for new ones; the request to the
                            worker is counted here, not sent)
and prints `name dialogues=N labelled_turns=M p50_ms=… p95_ms=… queries=…`, then
    lead_agreement_refresh dialogues=N labelled_turns=M seconds=…
the time the worker takes to compute new figures (how stale the page's figures can be).
Target (issue 16): p95 < 500 ms for each at 100,000 dialogues and 80,000 labelled turns.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(dialogues: int, labelled_turns: int, annotators: int, requests: int) -> None:
    os.environ["EXTES_DATA_DIR"] = tempfile.mkdtemp(prefix="extes-bench-lead-")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from curation.lead import insights
    from curation.models import Dialogue, TurnLabel

    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115
    start = time.perf_counter()
    _fill(dialogues, labelled_turns, annotators)
    labelled = TurnLabel.objects.values("turn_id").distinct().count()
    total = Dialogue.objects.count()
    print(
        f"fill dialogues={total} labelled_turns={labelled} "
        f"seconds={time.perf_counter() - start:.1f}",
        flush=True,
    )

    lead = User.objects.create_user("bench-lead", password="bench-password-1")
    lead.groups.add(Group.objects.get(name="lead"))
    client = Client(HTTP_HOST="localhost")
    client.force_login(lead)

    def timed(url: str) -> tuple[float, int]:
        connection.queries_log.clear()  # full after the fill: a full log counts no new query
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, response.status_code
        return elapsed, len(queries)

    changing = list(TurnLabel.objects.order_by("id").values_list("id", "strategy_id")[:requests])
    strategies = sorted({s for _, s in changing if s is not None})
    asked: list[int] = []
    insights._send_refresh = lambda: asked.append(1) or True  # type: ignore[assignment]
    insights.refresh_agreement()  # the figures a worker computed last
    results: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for name, url, change in (
        ("lead_dashboard", "/lead/", False),
        ("lead_agreement_cached", "/lead/agreement/", False),
        ("lead_agreement_changed", "/lead/agreement/", True),
    ):
        timed(url)  # the first request of a page compiles templates and fills caches
        times = []
        for index in range(requests):
            if change:  # an annotator changes a label: the figures must follow
                label_id, strategy = changing[index % len(changing)]
                other = strategies[(strategies.index(strategy) + 1) % len(strategies)]
                TurnLabel.objects.filter(pk=label_id).update(
                    strategy_id=other, updated_at=timezone.now()
                )
            ms, counts[name] = timed(url)
            times.append(ms)
        results[name] = times
    for name, times in results.items():
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
        print(
            f"{name} dialogues={total} labelled_turns={labelled} "
            f"p50_ms={statistics.median(times):.1f} p95_ms={p95:.1f} queries={counts[name]}"
        )
    refreshed = insights.refresh_agreement()
    print(
        f"lead_agreement_refresh dialogues={total} labelled_turns={labelled} "
        f"seconds={refreshed.seconds:.2f} worker_asked={len(asked)}"
    )


def _fill(target: int, labelled_turns: int, annotators: int) -> None:
    """Copies of the seed dialogues, 16 turns each; the first ones reviewed and labelled by two
    annotators until `labelled_turns` supporter turns carry labels."""
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.utils import timezone

    from curation.models import Dialogue, Review, Strategy, Turn, TurnLabel

    rng = random.Random(16)
    seeds = list(Dialogue.objects.filter(origin="seed").order_by("id"))
    turns = {d.pk: list(Turn.objects.filter(dialogue=d).order_by("index")[:16]) for d in seeds}
    people = [
        User.objects.create_user(f"annotator{i:02d}", password="x-password-1")
        for i in range(annotators)
    ]
    extes = list(Strategy.objects.filter(taxonomy="extes").values_list("pk", flat=True))
    made = Dialogue.objects.count()
    labelled = 0
    copy = 0
    now = timezone.now()
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
                    provenance={"round": 1 + i % 3, "prompt_version": "bench"},
                )
                for i, d in enumerate(batch)
            )
            made_turns = Turn.objects.bulk_create(
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
            if labelled < labelled_turns:
                by_dialogue: dict[int, list[Turn]] = {}
                for turn in made_turns:
                    if turn.role == "supporter":
                        by_dialogue.setdefault(turn.dialogue_id, []).append(turn)
                reviewed = []
                for n in new:
                    if labelled >= labelled_turns:
                        break
                    reviewed.append(n)
                    labelled += len(by_dialogue.get(n.pk, []))
                pairs = {n.pk: rng.sample(people, 2) for n in reviewed}
                reviews = Review.objects.bulk_create(
                    Review(
                        dialogue=n,
                        annotator=u,
                        decision="accept",
                        based_on_version=1,
                        submitted_at=now,
                    )
                    for n in reviewed
                    for u in pairs[n.pk]
                )
                labels = []
                for review in reviews:
                    for turn in by_dialogue.get(review.dialogue_id, []):
                        strategy = turn.strategy_id
                        if strategy is None or rng.random() < 0.2:
                            strategy = rng.choice(extes)
                        labels.append(TurnLabel(review=review, turn=turn, strategy_id=strategy))
                TurnLabel.objects.bulk_create(labels)
                Dialogue.objects.filter(pk__in=[n.pk for n in reviewed]).update(
                    reviews_done=2, status="accepted", settled_at=now
                )
        made += len(batch)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=100_000)
    parser.add_argument("--labelled-turns", type=int, default=80_000)
    parser.add_argument("--annotators", type=int, default=40)
    parser.add_argument("--requests", type=int, default=20)
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    main(args.dialogues, args.labelled_turns, args.annotators, args.requests)
