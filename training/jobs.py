"""What a training job does, as plain functions: the Celery task (training/tasks.py) calls `run`.

A job trains a LoRA adapter on its release's SFT files (training.sft), scores the base model and
the student on the release's test dialogues (training.evaluate), and writes the model card. Its
run folder (TRAINING_DIR/job-<id>/) keeps checkpoints, so a job whose worker died, was stopped
or was cancelled continues from the last one when it runs again; what is already done (the
adapter, the base model's scores) is not done twice.

torch and transformers load inside these functions only: Django and the default Celery worker
import this module and must not touch torch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from curation.models import Release
from curation.releases.build import ensure_files
from training.models import TrainingJob
from training.runs import RunReporter, heartbeat

logger = logging.getLogger(__name__)

# TrainConfig fields a job sets from its own columns or its run folder, not from hyperparameters.
OWN_FIELDS = ("data", "out", "base", "variant", "seed", "resume")
STEP_LINE_SECONDS = 10  # the log gets a line per step at most this often (the row has them all)
EVALUATED = ("base", "student")  # scored in this order


class Stop(Exception):
    """The job is to stop where it is: cancelled, worker shutting down, or taken by another."""


# ---- inputs -----------------------------------------------------------------------------------


def run_dir(job: TrainingJob) -> Path:
    return Path(settings.TRAINING_DIR) / f"job-{job.pk}"


def release_files(release: Release) -> Path:
    """The folder of a ready release with its files (curation's one writer of it writes them
    from the stored snapshots when they are missing)."""
    if release.status != Release.Status.READY:
        raise ValueError(f"release {release.name} is {release.get_status_display().lower()}")
    return ensure_files(release)


def local_model_folder() -> Path:
    from generation.localmodel import FOLDER_NAME

    return Path(settings.MODELS_DIR) / FOLDER_NAME


def find_base(base_model: str) -> Path | None:
    """The folder of a base model given as a path or as a folder name under MODELS_DIR; None
    when it is neither (it may still be a name in the offline model cache)."""
    for candidate in (Path(base_model).expanduser(), Path(settings.MODELS_DIR) / base_model):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    return None


def check_base(base_model: str) -> str | None:
    """Why `base_model` cannot be loaded offline, or None when it can (empty: the local model)."""
    if not base_model or find_base(base_model) is not None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return f"{base_model}: no such folder with a config.json"
    try:
        if isinstance(try_to_load_from_cache(base_model, "config.json"), str):
            return None
    except ValueError:  # not shaped like a model name (a path that does not exist, say)
        pass
    return f"{base_model}: no such folder with a config.json, and not in the offline model cache"


def resolve_base(base_model: str) -> str:
    """What training and evaluation load: a folder, or a cached name. The local SmolLM2 is
    converted on first use (about 40 s)."""
    if not base_model:
        from generation.localmodel import ensure_local_model

        return str(ensure_local_model(settings.MODELS_DIR))
    found = find_base(base_model)
    return str(found) if found is not None else base_model


@dataclass(frozen=True)
class LengthSuggestion:
    tokens: int | None
    how: str


def suggest_max_length(release: Release, variant: str, base_model: str) -> LengthSuggestion:
    """The max length the trainer would choose (95th percentile of the training chats), counted
    with the base model's tokenizer when its folder is here; no torch, no chat template, so the
    count adds a few tokens per message for the template's markers."""
    from training.data import chat_of, choose_max_length, read_examples, variant_files

    if not (release.folder / "sft" / "train.jsonl").is_file():
        return LengthSuggestion(None, "the release's files are not written yet")
    chats = [
        [m["content"] for m in chat_of(example)]
        for path in variant_files(release.folder, variant)
        for example in read_examples(path)
    ]
    folder = find_base(base_model) if base_model else local_model_folder()
    model_max = 2048
    counter = None
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model_max = int(config.get("max_position_embeddings") or model_max)
        counter = _token_counter(folder)
    per_message = 5  # e.g. "<|im_start|>assistant\n" before and "<|im_end|>\n" after a message
    if counter is not None:
        lengths = [sum(counter(text) + per_message for text in chat) for chat in chats]
        how = "95th percentile of the training chats, counted with the base model's tokenizer"
    else:
        # About four characters per token for English prose with a BPE vocabulary.
        lengths = [sum(math.ceil(len(text) / 4) + per_message for text in chat) for chat in chats]
        how = "95th percentile of the training chats, estimated at four characters a token"
    return LengthSuggestion(choose_max_length(lengths, model_max), how)


def _token_counter(folder: Path) -> Any:
    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def train_config(job: TrainingJob, data: Path, base: str) -> Any:
    from training.sft import TrainConfig

    values = {k: v for k, v in job.hyperparameters.items() if k not in OWN_FIELDS}
    return TrainConfig.from_dict(
        values
        | {
            "data": str(data),
            "out": str(run_dir(job)),
            "base": base,
            "variant": job.variant,
            "seed": job.seed,
            # The run folder is the job's own: any checkpoint in it is this job's to continue.
            "resume": True,
        }
    )


# ---- progress ---------------------------------------------------------------------------------


class Reporter(RunReporter[TrainingJob]):
    """A job's progress: the training steps with their losses, then the evaluation's replies."""

    def __init__(self, job: TrainingJob) -> None:
        super().__init__(job)
        self.losses: list[list[float]] = [list(point) for point in job.losses]
        self.step_logged = -math.inf
        self.stage = "Training"  # the phase shown while steps run

    def training(self, progress: Any) -> None:
        if progress.message:
            self.log(progress.message)
            values: dict[str, Any] = {"phase": progress.message}
            if progress.message.startswith("Resumed"):
                # Steps after the checkpoint are trained again: their old losses go.
                self.losses = [p for p in self.losses if p[0] <= progress.step]
                values |= {"resumed_from": progress.step, "losses": self.losses}
            if progress.total_steps:
                values |= {"step": progress.step, "total_steps": progress.total_steps}
            self.set(force=True, **values)
            return
        if progress.loss is None:
            return
        self.losses = [p for p in self.losses if p[0] < progress.step]
        self.losses.append([progress.step, round(progress.loss, 5)])
        now = time.monotonic()
        if now - self.step_logged >= STEP_LINE_SECONDS or progress.step == progress.total_steps:
            self.step_logged = now
            self.log(
                f"step {progress.step}/{progress.total_steps} loss {progress.loss:.4f} "
                f"{progress.tokens_per_s:.0f} tokens/s"
            )
        self.set(
            phase=self.stage,
            step=progress.step,
            total_steps=progress.total_steps,
            loss=progress.loss,
            tokens_per_s=progress.tokens_per_s,
            eta_s=progress.eta_s,
            losses=self.losses,
        )

    def evaluation(self, name: str, done: int, total: int) -> None:
        """After each reply of `name`: the models are scored one after the other on the same
        `total` turns, so the bar counts the replies of all of them."""
        if self.should_stop():
            raise Stop(self.reason)
        before = EVALUATED.index(name) * total
        self.set(
            force=done in (0, total),  # the first and the last always land
            phase=f"Evaluating the {name}: {done} of {total} replies",
            replies_done=before + done,
            replies_total=len(EVALUATED) * total,
        )


# ---- the job ----------------------------------------------------------------------------------


def run(job_id: int, worker: str) -> None:
    """Run a queued job to its end (or to where it is stopped)."""
    job = TrainingJob.objects.select_related("release").filter(pk=job_id).first()
    if job is None or not job.claim(worker):
        logger.info("training job %s is not queued: nothing to do", job_id)
        return
    reporter = Reporter(job)
    reporter.log(f"Attempt {job.attempts} on {worker}")
    try:
        with heartbeat(job):
            _run(job, reporter)
    except Stop:
        _stopped(job, reporter)
    except Exception as exc:
        logger.exception("training job %s failed", job_id)
        reporter.fail(exc)


def _run(job: TrainingJob, reporter: Reporter) -> None:
    from training.card import HYPERPARAMETERS, write_model_card

    reporter.set(force=True, phase="Preparing the release's files", run_dir=str(run_dir(job)))
    data = release_files(job.release)
    base = resolve_base(job.base_model)
    adapter = run_dir(job) / "adapter"
    if (adapter / "training_config.json").is_file():
        reporter.log("The adapter is trained already: evaluating")
    elif job.variant == TrainingJob.Variant.SFT_DPO:
        _train_sft_then_dpo(job, reporter, data, base)
    else:
        from training.sft import train

        result = train(
            train_config(job, data, base),
            on_progress=reporter.training,
            should_stop=reporter.should_stop,
        )
        if result.stopped:
            raise Stop(reporter.reason)
        reporter.losses = [[step, round(loss, 5)] for step, loss in result.losses]
        reporter.set(losses=reporter.losses)
    resolved = json.loads((adapter / "training_config.json").read_text(encoding="utf-8"))
    hyperparameters = {k: resolved[k] for k in HYPERPARAMETERS if resolved.get(k) is not None}
    hyperparameters["valid_loss"] = valid_loss_text(resolved)
    reporter.flush()
    from training.evaluate import replies_to_score

    def card_for(**outcome: Any) -> Path:
        if job.variant == TrainingJob.Variant.SFT_DPO:
            from training.dpo import write_dpo_card

            return write_dpo_card(
                adapter, resolved, metrics=outcome.get("metrics"), variant=job.variant
            )
        return write_model_card(
            adapter,
            base=base,
            release_name=job.release.name,
            release_checksum=job.release.checksum,
            variant=job.variant,
            hyperparameters=hyperparameters,
            **outcome,
        )

    if not job.evaluate or not replies_to_score(data):
        why = not_evaluated_reason(job)
        job.end_training(adapter, resolved, evaluating=False)
        card = card_for(metrics=None, not_evaluated=f"Not evaluated: {why}.")
        reporter.log(f"Done, not evaluated: {why}")
        reporter.flush()
        job.finish(TrainingJob.Status.DONE, phase="Done, not evaluated", model_card=str(card))
        return

    job.end_training(adapter, resolved, evaluating=True)
    adapters = {"base": None, "student": adapter}
    reports = {
        name: _evaluate(job, reporter, data, base, adapters[name], name) for name in EVALUATED
    }
    card = card_for(metrics=reports["student"]["metrics"])
    reporter.log("Done")
    reporter.flush()
    job.finish(
        TrainingJob.Status.DONE,
        phase="Done",
        metrics={name: finite(report["metrics"]) for name, report in reports.items()},
        samples=side_by_side(reports["base"]["samples"], reports["student"]["samples"]),
        model_card=str(card),
        report=str(run_dir(job) / "eval" / "student" / "report.html"),
    )


# Job hyperparameters of the DPO stage of an sft_dpo job (the rest are the SFT stage's).
DPO_HYPERPARAMETERS = {
    "dpo_beta": "beta",
    "dpo_lr": "learning_rate",
    "dpo_max_steps": "max_steps",
}


def _train_sft_then_dpo(job: TrainingJob, reporter: Reporter, data: Path, base: str) -> None:
    """An sft_dpo job's training: SFT on the release's dialogues into RUN/sft/, then DPO on its
    preference pairs from that adapter (also the reference) into RUN/adapter/. Each stage
    continues from its own checkpoints; a finished SFT stage is not trained again."""
    from training.data import has_lines
    from training.dpo import DPOTrainConfig, train_dpo

    if not has_lines(data / "dpo" / "train.jsonl"):
        raise ValueError(
            f"release {job.release.name} has no preference pairs (dpo/train.jsonl is empty): "
            "rank DRI candidates, then cut a release, to train with DPO"
        )
    sft_out = run_dir(job) / "sft"
    if (sft_out / "adapter" / "training_config.json").is_file():
        reporter.log("The SFT stage is trained already")
    else:
        from training.sft import train

        config = train_config(job, data, base)
        config.out, config.variant = str(sft_out), TrainingJob.Variant.SFT.value
        reporter.stage = "Training (SFT)"
        result = train(config, on_progress=reporter.training, should_stop=reporter.should_stop)
        if result.stopped:
            raise Stop(reporter.reason)
    reporter.log("Preference training (DPO) on the release's pairs, from the SFT adapter")
    reporter.stage = "Preference training (DPO)"
    reporter.losses = []  # the chart follows the stage that runs
    stage = {
        field: job.hyperparameters[key]
        for key, field in DPO_HYPERPARAMETERS.items()
        if job.hyperparameters.get(key) is not None
    }
    shared = {k: job.hyperparameters.get(k) for k in ("batch_size", "max_length", "save_every")}
    preferred = train_dpo(
        DPOTrainConfig(
            data=str(data),
            out=str(run_dir(job)),
            adapter=str(sft_out / "adapter"),
            base=base,
            seed=job.seed,
            resume=True,
            **{k: v for k, v in shared.items() if v is not None},
            **stage,
        ),
        on_progress=reporter.training,
        should_stop=reporter.should_stop,
    )
    if preferred.stopped:
        raise Stop(reporter.reason)
    reporter.losses = [[step, round(loss, 5)] for step, loss in preferred.losses]
    reporter.set(losses=reporter.losses)


def not_evaluated_reason(job: TrainingJob) -> str:
    if not job.release.counts.get("test"):
        return "the release has no test split"
    return "it was started with 'train without evaluation'"


def valid_loss_text(resolved: dict[str, Any]) -> str | float:
    """The validation loss, or why there is none."""
    if resolved.get("valid_loss") is not None:
        return float(resolved["valid_loss"])
    if not (resolved.get("data_files", {}).get("valid") or {}).get("examples"):
        return "no validation split"
    return "none (no validation chat within max length)"


def _evaluate(
    job: TrainingJob, reporter: Reporter, data: Path, base: str, adapter: Path | None, name: str
) -> dict[str, Any]:
    """evaluate()'s result for one model, kept in the run folder and reused when the job runs
    again with the same settings."""
    from training.evaluate import evaluate

    out = run_dir(job) / "eval" / name
    limit, max_new_tokens = settings.TRAINING_EVAL_LIMIT, settings.TRAINING_EVAL_MAX_NEW_TOKENS
    stamp = {"limit": limit, "max_new_tokens": max_new_tokens, "base": base, "metrics": "esconv"}
    kept = out / "settings.json"
    if (
        (out / "metrics.json").is_file()
        and kept.is_file()
        and json.loads(kept.read_text()) == stamp
    ):
        reporter.log(f"Scores of the {name} kept from an earlier attempt")
        return dict(json.loads((out / "metrics.json").read_text(encoding="utf-8")))
    reporter.log(
        f"Evaluating the {name} on {'every test reply' if limit is None else f'up to {limit} test replies'}"
    )
    result = evaluate(
        data,
        base=base,
        adapter=adapter,
        limit=limit,
        max_new_tokens=max_new_tokens,
        out_dir=out,
        on_progress=lambda done, total: reporter.evaluation(name, done, total),
        batch_size=settings.TRAINING_EVAL_BATCH,
    )
    (out / "settings.json").write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return result


def finite(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores with NaN and infinities as None: JSON columns refuse them."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in scores.items()
    }


def side_by_side(base: list[dict[str, Any]], student: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scored turn: its context, the written reply, and both models' replies."""
    by_turn = {(s["id"], s["turn"]): s for s in base}
    rows = []
    for s in student:
        b = by_turn.get((s["id"], s["turn"]), {})
        rows.append(
            {
                "id": s["id"],
                "turn": s["turn"],
                "context": s["context"],
                "reference": s["reference"],
                "base": b.get("reply", ""),
                "student": s["reply"],
                # Per-reply scores, for training.noise (absent in scores kept from old runs).
                "base_scores": b.get("scores"),
                "student_scores": s.get("scores"),
            }
        )
    return rows


def _stopped(job: TrainingJob, reporter: Reporter) -> None:
    """End an attempt that was asked to stop; the checkpoint is kept for a later resume."""
    if reporter.reason == "taken":
        logger.info("training job %s was taken over: this attempt ends", job.pk)
        return
    if reporter.reason == "shutdown":
        reporter.log("The worker is shutting down: queued again, to continue from the checkpoint")
        reporter.set(force=True, status=TrainingJob.Status.QUEUED, phase="Queued again")
        return
    reporter.flush()
    reporter.log(f"Cancelled at step {job.step}")
    reporter.flush()
    job.finish(TrainingJob.Status.CANCELLED, phase=f"Cancelled at step {job.step}")
