"""A trained student's weakest replies, sent back to annotators as ranking rounds.

From a finished training job's scored test turns, a lead picks a rule and how many: the turns
where the student did worst become a new ranking round of their gap (curation.review.rounds),
the student's reply among the original and the teacher's DRI candidates, unmarked and shuffled
like every ranking. Where the gap has no teacher candidates, a DRI job for those turns is queued
and the rounds wait until it ends. Releases turn the rankings into preference pairs.

`weakest` is plain data in, plain data out; `send_back` writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from curation.models import SAFETY_HELD, Candidate, RankRound, ReleaseDialogue, Strategy, Turn
from curation.review import rounds
from training.data import split_tag
from training.models import ReplyPool, TrainingJob

RULES = {
    "likelihood": "Lowest likelihood of the written reply under the student (highest loss per token)",
    "overlap": "Lowest word overlap with the written reply (unigram F1)",
    "strategy": "Strategy mismatch: the student's strategy tag differs from the written reply's",
}

# What each rule's score measures (the strategy rule orders its mismatches by word overlap).
MEASURES = {"likelihood": "loss per token", "overlap": "unigram F1", "strategy": "unigram F1"}


@dataclass(frozen=True)
class Weak:
    """One scored test turn picked by a rule; `score` is what the rule sorted by."""

    dialogue_id: int
    message: int  # the assistant message's index in the SFT example (0 is the system prompt)
    reply: str
    reference: str
    score: float


def rule_problem(rule: str, samples: list[dict[str, Any]]) -> str:
    """Why this rule cannot pick from these samples ("" when it can)."""
    if rule not in RULES:
        return f"unknown rule {rule!r}: one of {', '.join(RULES)}"
    if not samples:
        return "the job has no scored replies: it was not evaluated"
    if rule == "likelihood" and not any(_nll_per_token(s) is not None for s in samples):
        return (
            "the scores hold no likelihood of the written replies (experiments keep none; jobs "
            "scored by an older version neither)"
        )
    if rule == "overlap" and not any(_f1(s) is not None for s in samples):
        return "the job's scores have no word overlap (scored by an older version)"
    if rule == "strategy" and not any(split_tag(s["reference"])[0] for s in samples):
        return (
            "the release's replies carry no strategy tags, so the student names no strategy to "
            "compare: train on a release written with strategy tags"
        )
    return ""


def weakest(samples: list[dict[str, Any]], rule: str, count: int) -> list[Weak]:
    """The `count` turns the student did worst on by `rule`, worst first (ties by id, turn).
    `samples` are a job's rows (training.jobs.side_by_side)."""
    problem = rule_problem(rule, samples)
    if problem:
        raise ValueError(problem)
    scored: list[tuple[float, dict[str, Any]]] = []
    for sample in samples:
        if rule == "likelihood":
            value = _nll_per_token(sample)
            key = None if value is None else -value  # the highest loss first
        elif rule == "overlap":
            key = _f1(sample)
        else:
            wanted, _ = split_tag(sample["reference"])
            written, _ = split_tag(sample["student"])
            if wanted is None or (written or "").casefold() == wanted.casefold():
                continue
            key = _f1(sample) or 0.0  # the mismatches, least overlap first
        if key is not None and math.isfinite(key):
            scored.append((key, sample))
    scored.sort(key=lambda pair: (pair[0], str(pair[1]["id"]), pair[1]["turn"]))
    return [
        Weak(
            int(sample["id"]),
            int(sample["turn"]),
            sample["student"],
            sample["reference"],
            -key if rule == "likelihood" else key,
        )
        for key, sample in scored[: max(0, count)]
    ]


def _nll_per_token(sample: dict[str, Any]) -> float | None:
    scores = sample.get("student_scores") or {}
    nll, tokens = scores.get("nll"), scores.get("tokens")
    return nll / tokens if nll is not None and tokens else None


def _f1(sample: dict[str, Any]) -> float | None:
    value = (sample.get("student_scores") or {}).get("unigram_f1")
    return None if value is None else float(value)


@dataclass
class Outcome:
    """What send_back did: rounds opened now, rounds waiting for the teacher, turns skipped
    (with why), and the DRI job queued for the waiting ones."""

    opened: list[int] = field(default_factory=list)  # RankRound ids
    waiting: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    dri_turns: list[int] = field(default_factory=list)


def decoding_of(job: TrainingJob) -> dict[str, Any]:
    """How the student's scored replies were decoded, as its evaluation recorded it."""
    from training.jobs import run_dir

    path = run_dir(job) / "eval" / "student" / "metrics.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("decoding") or {})
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Origin:
    """Whose replies go back: a training job's student, or one trained arm of an experiment.
    `mark` goes into every round's source and the student's provenance; a turn sent from the
    same origin before is not sent again."""

    release: Any
    samples: list[dict[str, Any]]
    training_job_id: int | None
    mark: dict[str, Any]  # {"training_job": id} or {"experiment": id, "arm": name}
    provenance: dict[str, Any]  # release, variant, base model, adapter, decoding
    name: str = "this job"  # in "sent back from this job already"


def job_origin(job: TrainingJob) -> Origin:
    if job.status != TrainingJob.Status.DONE:
        raise ValueError(
            f"{job} is {job.get_status_display().lower()}: only a finished job's replies"
        )
    return Origin(
        release=job.release,
        samples=job.samples,
        training_job_id=job.pk,
        mark={"training_job": job.pk},
        provenance={
            "release": job.release_id,
            "variant": job.variant,
            "base_model": job.resolved_config.get("base") or job.base_model,
            "adapter": job.adapter_dir,
            "decoding": decoding_of(job),
        },
    )


def send_back(
    job: TrainingJob | Origin,
    rule: str,
    count: int,
    lead: Any,
    pool: ReplyPool | None = None,
    samples: list[dict[str, Any]] | None = None,
    snapshots: dict[int, Any] | None = None,
) -> Outcome:
    """Open a ranking round for each of the `count` weakest turns of a finished job (or another
    origin): of the test turns it was scored on, or of a pool's `samples` (with the `snapshots`
    they were made from). A turn sent from the same origin before, held by the safety queue,
    waiting for the teacher already, or changed since (reopened and edited) is skipped and said
    why."""
    from generation import crisis_gate

    origin = job if isinstance(job, Origin) else job_origin(job)
    picked = weakest(origin.samples if samples is None else samples, rule, count)
    outcome = Outcome()
    if snapshots is None:
        snapshots = dict(
            ReleaseDialogue.objects.filter(
                release=origin.release, dialogue_id__in=[w.dialogue_id for w in picked]
            ).values_list("dialogue_id", "snapshot")
        )
    contexts = "test" if pool is None else "pool"
    tags = {s.name.casefold(): s for s in Strategy.objects.all()}
    with transaction.atomic():
        for weak in picked:
            where = f"dialogue {weak.dialogue_id}, reply {weak.message}"
            turn, why = _turn_of(weak, snapshots.get(weak.dialogue_id))
            if turn is None:
                outcome.skipped.append((where, why))
                continue
            where = f"dialogue {turn.dialogue_id}, turn {turn.index}"
            turn = Turn.objects.select_for_update().get(pk=turn.pk)
            why = _not_sendable(turn, origin)
            if why:
                outcome.skipped.append((where, why))
                continue
            tag, text = split_tag(weak.reply)
            student = Candidate.objects.create(
                turn=turn,
                text=text.strip() or weak.reply,
                author=Candidate.Author.STUDENT,
                strategy=tags.get((tag or "").casefold()),
                provenance={
                    "source": "student",
                    **origin.mark,
                    **origin.provenance,
                    "rule": rule,
                    "score": weak.score,
                    "contexts": contexts,
                    "pool": None if pool is None else pool.pk,
                    "sent_by": lead.get_username() if lead else None,
                },
            )
            keys = rounds.keys(turn, 1)  # the original and the teacher's candidates
            waiting = len(keys) == 1
            row = RankRound.objects.create(
                turn=turn,
                number=rounds.current(turn) + 1,
                status=RankRound.Status.WAITING if waiting else RankRound.Status.OPEN,
                keys=[*keys, f"c{student.pk}"],
                source={
                    "kind": "student",
                    **origin.mark,
                    "rule": rule,
                    "score": weak.score,
                    "measure": MEASURES[rule],
                    "contexts": contexts,
                },
                training_job_id=origin.training_job_id,
                created_by=lead,
            )
            # The gate every DRI candidate passes: a reply at risk sends its dialogue to a lead
            # first (the round waits out of the queue while the dialogue is held).
            crisis = crisis_gate.check([student.text])
            if crisis.flagged:
                turn.dialogue.flag_by_gate(
                    "student reply gate",
                    list(crisis.categories),
                    list(crisis.matches),
                    [r.as_dict() for r in crisis.reasons],
                )
            (outcome.waiting if waiting else outcome.opened).append(row.pk)
            if waiting:
                outcome.dri_turns.append(turn.pk)
    return outcome


def _turn_of(weak: Weak, snapshot: Any) -> tuple[Turn | None, str]:
    """The stored turn a scored reply was written for, found through the release's snapshot
    (the SFT example's messages are the snapshot's turns after the system prompt)."""
    if snapshot is None:
        return None, "the dialogue is not in the job's release (or the pool)"
    snap = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    turns = snap["turns"]
    if not 1 <= weak.message <= len(turns):
        return None, "the reply's place is not in the released dialogue"
    index = turns[weak.message - 1]["index"]
    turn = Turn.objects.filter(dialogue_id=weak.dialogue_id, index=index).first()
    if turn is None or turn.role != Turn.Role.SUPPORTER:
        return None, "the dialogue no longer has that supporter turn"
    if split_tag(weak.reference)[1].strip() != turns[weak.message - 1]["text"].strip():
        return None, "the reply scored is not the released turn's text"
    return turn, ""


def _not_sendable(turn: Turn, origin: Origin) -> str:
    if turn.dialogue.safety_status in SAFETY_HELD:
        return "the dialogue is held by the safety queue"
    sent = RankRound.objects.filter(turn=turn)
    if origin.training_job_id is not None:
        sent = sent.filter(training_job_id=origin.training_job_id)
    else:
        sent = sent.filter(**{f"source__{k}": v for k, v in origin.mark.items()})
    if sent.exists():
        return f"sent back from {origin.name} already"
    if RankRound.objects.filter(turn=turn, status=RankRound.Status.WAITING).exists():
        return "a round for this gap is waiting for the teacher's candidates already"
    return ""


def queue_teacher(outcome: Outcome, lead: Any) -> str:
    """Queue a DRI job for the gaps that had no teacher candidates (run after send_back's
    transaction committed); returns a note for the lead ("" when nothing had to be queued).
    With the job queue down the rounds open at once with the original and the student's reply,
    and the note says so: nothing waits for a job no worker will run."""
    if not outcome.dri_turns:
        return ""
    from config.celery import QUEUE_UNREACHABLE, BrokerUnreachable
    from generation.models import GenerationJob, new_job
    from generation.tasks import start_job
    from generation.teacher import Sampling, TeacherConfig

    with transaction.atomic():
        dri = new_job(
            GenerationJob.Kind.DRI,
            teacher=TeacherConfig.from_env().as_dict(),
            sampling=Sampling().as_dict(),
            created_by=lead,
            dri_turn_ids=outcome.dri_turns,
        )
        RankRound.objects.filter(pk__in=outcome.waiting).update(dri_job_id=dri.pk)
    try:
        start_job.delay(dri.pk)
    except BrokerUnreachable:
        dri.finish_unstarted(f"{QUEUE_UNREACHABLE} The rounds opened without DRI candidates.")
        return (
            f"{QUEUE_UNREACHABLE} The teacher wrote no candidates for {len(outcome.waiting)} "
            "gaps that had none: their rounds are open with the original and the student's "
            "reply only."
        )
    return (
        f"The teacher writes candidates for {len(outcome.waiting)} gaps that had none "
        f"({dri}); their rounds open when it ends."
    )


def targeted_plan(
    job: TrainingJob, rule: str, scenarios: list[str], total: int, emphasis: float = 0.5
) -> dict[str, Any]:
    """training.targeting's plan from this job's scored test turns: each reply's scenario and
    strategy are its released dialogue's (the frozen snapshot)."""
    from generation.runner import DEFAULT_SHARES
    from training import targeting

    ids = {int(s["id"]) for s in job.samples if str(s.get("id", "")).isdigit()}
    snaps = dict(
        ReleaseDialogue.objects.filter(release=job.release, dialogue_id__in=ids).values_list(
            "dialogue_id", "snapshot"
        )
    )

    def snap_of(sample: Any) -> dict[str, Any] | None:
        found = snaps.get(int(sample["id"])) if str(sample.get("id", "")).isdigit() else None
        return json.loads(found) if isinstance(found, str) else found

    def scene_of(sample: Any) -> str | None:
        snap = snap_of(sample)
        return snap["scene"] if snap else None

    def strategy_of(sample: Any) -> str | None:
        snap, message = snap_of(sample), int(sample["turn"])
        if not snap or not 1 <= message <= len(snap["turns"]):
            return None
        return snap["turns"][message - 1].get("strategy")

    found = targeting.plan(
        job.samples, scene_of, strategy_of, rule, scenarios, total, DEFAULT_SHARES, emphasis
    )
    return found | {"training_job": job.pk, "release": job.release.name}


# ---- a pool of accepted dialogues that no release holds: scored by a training worker -----------


def pool_dialogues(size: int | None = None) -> Any:
    """Accepted dialogues outside every release, not held for safety, the oldest first: where a
    student's replies can be scored and their rankings still reach a training split."""
    from curation.models import Dialogue

    found = (
        Dialogue.objects.releasable()
        .exclude(pk__in=ReleaseDialogue.objects.values("dialogue_id"))
        .order_by("id")
    )
    return found if size is None else found[:size]


def run_pool(pool_id: int, worker: str) -> None:
    """Score the student on its pool and send the weakest replies (a training worker's task)."""
    from training.evaluate import Stopped
    from training.runs import RunReporter, heartbeat

    pool = ReplyPool.objects.select_related("training_job__release", "created_by")
    found = pool.filter(pk=pool_id).first()
    if found is None or not found.claim(worker):
        return
    reporter: RunReporter[ReplyPool] = RunReporter(found)
    reporter.log(f"Attempt {found.attempts} on {worker}")
    try:
        with heartbeat(found):
            _score_pool(found, reporter)
    except Stopped:
        if reporter.reason == "cancelled":
            found.finish(ReplyPool.Status.CANCELLED, phase="Cancelled")
        elif reporter.reason == "shutdown":  # its next worker scores the pool again
            found.held().update(status=ReplyPool.Status.QUEUED, phase="Queued again")
    except Exception as exc:
        reporter.fail(exc)


def _score_pool(pool: ReplyPool, reporter: Any) -> None:
    from django.conf import settings

    from curation.releases.build import _snapshots, sft_example
    from training.evaluate import evaluate
    from training.jobs import run_dir

    job = pool.training_job
    ids = list(pool_dialogues(pool.pool_size).values_list("pk", flat=True))
    if not ids:
        raise ValueError(
            "no accepted dialogue is outside every release: accept some (or import them) first"
        )
    reporter.set(force=True, phase=f"Writing {len(ids)} dialogues of the pool")
    snaps = _snapshots(ids, include_dri=False)
    tags = bool(job.release.file_options.get("strategy_tags"))
    folder = run_dir(job) / f"pool-{pool.pk}"
    (folder / "sft").mkdir(parents=True, exist_ok=True)
    with (folder / "sft" / "test.jsonl").open("w", encoding="utf-8") as out:
        for pk in ids:
            out.write(json.dumps(sft_example(snaps[pk], tags), ensure_ascii=False) + "\n")
    reporter.set(force=True, phase="Scoring the student's replies")
    result = evaluate(
        folder,
        adapter=job.adapter_dir,
        max_new_tokens=settings.TRAINING_EVAL_MAX_NEW_TOKENS,
        on_progress=lambda done, total: reporter.set(replies_done=done, replies_total=total),
        batch_size=settings.TRAINING_EVAL_BATCH,
        should_stop=reporter.should_stop,
    )
    rows = [
        {
            "id": s["id"],
            "turn": s["turn"],
            "reference": s["reference"],
            "student": s["reply"],
            "student_scores": s.get("scores"),
        }
        for s in result["samples"]
    ]
    reporter.set(force=True, phase="Sending the weakest replies")
    outcome = send_back(
        job, pool.rule, pool.count, pool.created_by, pool=pool, samples=rows, snapshots=snaps
    )
    note = queue_teacher(outcome, pool.created_by)
    reporter.log(f"Scored {len(rows)} replies; sent {len(outcome.opened) + len(outcome.waiting)}")
    reporter.flush()
    pool.finish(
        ReplyPool.Status.DONE,
        phase="Done",
        outcome={
            "scored": len(rows),
            "opened": len(outcome.opened),
            "waiting": len(outcome.waiting),
            "skipped": outcome.skipped[:50],
            "note": note,
        },
    )


# ---- an experiment's arm --------------------------------------------------------------------


def experiment_origin(experiment: Any, arm: str) -> Origin:
    """One trained arm of a finished experiment: its replies to the scored test turns
    (replies.jsonl), each scored for word overlap from the texts as the evaluation scores it
    (the experiment keeps no per-reply likelihood, so that rule cannot pick here)."""
    from training import experiments, noise
    from training.experiment import TRAINED

    if experiment.status != "done":
        raise ValueError(f"{experiment} is not finished: only a finished experiment's replies")
    if arm not in experiment.arms or arm not in TRAINED:
        raise ValueError(f"{arm!r} is not a trained arm of {experiment}")
    folder = experiments.run_dir(experiment)
    try:
        lines = [
            json.loads(text)
            for text in (folder / "replies.jsonl").read_text(encoding="utf-8").splitlines()
            if text.strip()
        ]
        refs = [split_tag(line["reference"])[1] for line in lines]
        hyps = [split_tag(line[arm])[1] for line in lines]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the experiment's replies.jsonl cannot be read ({exc})") from None
    scores = noise.per_reply(refs, hyps)
    samples = [
        {
            "id": line["id"],
            "turn": line["turn"],
            "reference": line["reference"],
            "student": line[arm],
            "student_scores": score,
        }
        for line, score in zip(lines, scores, strict=True)
    ]
    seed = folder / f"{arm}-seed0"
    adapter = seed / "dpo" / "adapter" if arm == "sft_dpo" else seed / "adapter"
    return Origin(
        release=experiment.release,
        samples=samples,
        training_job_id=None,
        mark={"experiment": experiment.pk, "arm": arm},
        provenance={
            "release": experiment.release_id,
            "variant": arm,
            "base_model": experiment.report.get("base") or experiment.base_model,
            "adapter": str(adapter),
            "decoding": experiment.report.get("decoding") or experiment.decoding,
        },
        name=f"this experiment's {arm} arm",
    )
