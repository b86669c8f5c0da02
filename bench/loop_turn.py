"""One turn of the studio's loop on ESConv, with the studio's own code at every step.

    python bench/loop_turn.py [--dialogues 1300] [--pool 20] [--steps 40] [--eval-replies 80]
        [--send 30] [--candidates 2] [--dpo-steps 20] [--max-new-tokens 40]

In a fresh SQLite database under a temporary folder:
  1. ESConv's train, valid and test files are imported (the first --dialogues records in all);
     all but the last --pool are accepted and frozen into release r1.
  2. A training job trains the student (LoRA on SmolLM2-135M-Instruct, --steps steps) on r1 and
     scores it against its base on r1's test split (--eval-replies replies), as a worker does.
  3. The last --pool dialogues are accepted (outside every release): a reply pool scores the
     student on every supporter turn of them and sends the --send weakest by reference
     likelihood to annotators. ESConv has no DRI candidates, so a DRI job with the configured
     teacher (by default the local SmolLM2, --candidates replies a gap) writes them first.
  4. Two scripted annotators rank every round through the rank queue: the written reply first,
     the teacher's candidates second (tied), the student's reply last. They stand in for people:
     the figures say what the loop does with such rankings, not what people would rank.
  5. Release r2 (every accepted dialogue, the rankings with them) is cut; its DPO pairs are
     counted by origin.
  6. An experiment on r2 trains the `sft` and `sft_dpo` arms to the same budget (DPO: --dpo-steps
     steps on r2's training pairs) and compares them on r2's test split with 95% intervals.

Prints one line per step, `name key=value ...`, then the experiment's metrics per arm and the
paired difference of sft_dpo against sft. Minutes on a 2-core CPU at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ESCONV = Path(os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))


def line(name: str, **values: Any) -> None:
    shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    print(f"{name} {shown}", flush=True)


def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="extes-loop-"))
    os.environ["EXTES_DATA_DIR"] = str(data)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from curation.models import Candidate, Dialogue, Ranking, RankRound
    from curation.releases.build import create_release
    from curation.review import ranking
    from generation import runner
    from generation.models import GenerationJob
    from training import jobs, sendback
    from training.experiment import run_experiment
    from training.jobs import release_files
    from training.models import ReplyPool, TrainingJob

    settings.TRAINING_DIR = data / "training"
    settings.TRAINING_EVAL_LIMIT = args.eval_replies
    settings.TRAINING_EVAL_MAX_NEW_TOKENS = args.max_new_tokens
    settings.REVIEWS_PER_DIALOGUE = 2
    settings.SAFETY_SCREEN = "inline"  # the crisis gate screens the import here, not on a worker
    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115

    started = time.monotonic()
    records = data / "esconv.jsonl"
    with records.open("w", encoding="utf-8") as out:
        kept = 0
        for split in ("train", "valid", "test"):
            for text in (ESCONV / f"{split}.txt").read_text(encoding="utf-8").splitlines():
                if text.strip() and kept < args.dialogues:
                    out.write(text + "\n")
                    kept += 1
    call_command("import_dialogues", str(records), format="esconv", stdout=open(os.devnull, "w"))  # noqa: SIM115
    esconv = Dialogue.objects.exclude(origin="seed").order_by("id")  # the studio's seeds stay out
    ids = list(esconv.values_list("pk", flat=True))
    held = ids[-args.pool :]
    esconv.exclude(pk__in=held).update(status=Dialogue.Status.ACCEPTED)
    r1 = create_release("r1")
    line(
        "loop_import",
        dialogues=len(ids),
        safety_held=len(ids) - esconv.unflagged().count(),
        r1_train=r1.counts.get("train"),
        r1_valid=r1.counts.get("valid"),
        r1_test=r1.counts.get("test"),
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    lead = User.objects.create_user("lead", password="lead-pass-123", is_staff=True)
    lead.groups.add(Group.objects.get(name="lead"))
    job = TrainingJob.objects.create(
        release=r1,
        hyperparameters={"max_steps": args.steps, "batch_size": 4, "max_length": 768},
        created_by=lead,
    )
    jobs.run(job.pk, "loop")
    job.refresh_from_db()
    if job.status != TrainingJob.Status.DONE:
        raise SystemExit(f"training job: {job.status} {job.error}")
    base, student = job.metrics["base"], job.metrics["student"]
    line(
        "loop_student",
        steps=job.step,
        replies=student["samples"],
        base_f1=base["unigram-f1"],
        student_f1=student["unigram-f1"],
        base_ppl=base["perplexity"],
        student_ppl=student["perplexity"],
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    Dialogue.objects.filter(pk__in=held).update(status=Dialogue.Status.ACCEPTED)
    dri_jobs: list[int] = []
    import generation.tasks

    generation.tasks.start_job.delay = dri_jobs.append  # run below, in this process
    pool = ReplyPool.objects.create(
        training_job=job, rule="likelihood", count=args.send, pool_size=args.pool, created_by=lead
    )
    sendback.run_pool(pool.pk, "loop")
    pool.refresh_from_db()
    if pool.status != ReplyPool.Status.DONE:
        raise SystemExit(f"pool: {pool.status} {pool.error}")
    line(
        "loop_pool",
        dialogues=args.pool,
        scored=pool.outcome["scored"],
        sent=pool.outcome["opened"] + pool.outcome["waiting"],
        skipped=len(pool.outcome["skipped"]),
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    for dri_id in dri_jobs:
        GenerationJob.objects.filter(pk=dri_id).update(dri_candidates=args.candidates)
        runner.run_inline(dri_id, concurrency=1)
    teacher = Candidate.objects.filter(author=Candidate.Author.TEACHER).count()
    line(
        "loop_teacher",
        gaps=sum(len(GenerationJob.objects.get(pk=i).dri_turn_ids) for i in dri_jobs),
        candidates=teacher,
        rounds_open=RankRound.objects.filter(status=RankRound.Status.OPEN).count(),
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    students = set(
        Candidate.objects.filter(author=Candidate.Author.STUDENT).values_list("pk", flat=True)
    )
    for name in ("ann", "bo"):
        annotator = User.objects.create_user(name, password=f"{name}-pass-123")
        annotator.groups.add(Group.objects.get(name="annotator"))
        while (turn := ranking.claim_next(annotator)) is not None:
            shown = [item["key"] for item in ranking.items(turn, annotator)]
            original = [k for k in shown if k.startswith("t")]
            student = [k for k in shown if k.startswith("c") and int(k[1:]) in students]
            rest = sorted(k for k in shown if k not in original and k not in student)
            order = [group for group in (original, rest, student) if group]
            ranking.save(turn, annotator, order, [], shown, "")
    line(
        "loop_rankings",
        rounds=RankRound.objects.count(),
        rankings=Ranking.objects.filter(round__gte=2).count(),
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    r2 = create_release("r2")
    folder = release_files(r2)
    stats = json.loads((folder / "stats.json").read_text())["statistics"]
    train_pairs = [
        json.loads(text) for text in (folder / "dpo" / "train.jsonl").read_text().splitlines()
    ]
    line(
        "loop_release",
        dialogues=sum(r2.counts.values()),
        **{f"pairs_{k}": v for k, v in stats["dpo_pairs"].items()},
        train_pairs=len(train_pairs),
        train_student_pairs=sum("-student-" in p["id"] for p in train_pairs),
        seconds=time.monotonic() - started,
    )

    started = time.monotonic()
    report = run_experiment(
        folder,
        data / "experiment",
        arms=["sft", "sft_dpo"],
        max_steps=args.steps,
        limit=args.eval_replies,
        max_new_tokens=args.max_new_tokens,
        dpo={"max_steps": args.dpo_steps},
        log=lambda text: None,
    )
    line("loop_experiment", replies=report["replies_scored"], seconds=time.monotonic() - started)
    for arm, found in report["arms"].items():
        for metric, value in found["metrics"].items():
            if value is None:
                continue
            low, high = found["ci"].get(metric, [None, None])
            line("loop_arm", arm=arm, metric=metric, value=value, low=low, high=high)
    versus = report["arms"]["sft_dpo"].get("versus", {}).get("sft", {})
    for metric, found in versus.items():
        low, high = found["ci"]
        line(
            "loop_sft_dpo_vs_sft",
            metric=metric,
            difference=found["difference"],
            low=low,
            high=high,
            p=found["p"],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=1300)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-replies", type=int, default=80)
    parser.add_argument("--send", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--dpo-steps", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    main(parser.parse_args())
