"""Preference training (DPO) of the student on a release's DPO pairs, with TRL's DPOTrainer.

    python -m training.dpo --data var/releases/r1 --out var/runs/r1-dpo --adapter ADAPTER
    python -m training.dpo --data var/releases/r1 --out var/runs/r1-dpo --max-steps 200
    python -m training.dpo --data var/releases/r1/dpo --out var/runs/r1-dpo --beta 0.1 --epochs 2
    python -m training.dpo --data DIR --out DIR --adapter ADAPTER --resume   # after a stop

`--data` is a release folder or its dpo/ folder: train.jsonl there holds one pair a line,
`prompt` (the chat up to a supporter turn) with the `chosen` and the `rejected` reply (each a
list of one assistant message; plain strings for all three work too). valid.jsonl beside it, when
present, is scored before and after training. The base defaults to the one the adapter was
trained on, else the local SmolLM2-135M-Instruct.

With `--adapter ADAPTER` (an SFT run's OUT/adapter, from python -m training.sft), that adapter is trained further and the reference
of the DPO loss is the SFT model itself: TRL copies the loaded adapter into a second, frozen one
named "ref" and runs the reference pass through it. Without it, a fresh LoRA (training.sft's
settings) is trained and the reference is the base model (the adapter switched off).

Writes OUT/adapter/ (the PEFT adapter, training_config.json with everything needed to reproduce
the run, eval.json with the validation figures before and after, and a model card) and Trainer
checkpoints in OUT/checkpoints/checkpoint-N/ every --save-every steps and when stopped.

Why TRL here, when training.sft has a loop of its own: the DPO loss needs a reference pass, pairs
batched as chosen-then-rejected with the prompt shared, and completion masks; TRL keeps those
(and the variants of the loss) maintained, and its conversational format is exactly what a
release writes. The masks come from TRL's own prefix comparison of the rendered prompt and
prompt + reply, which works with SmolLM2's template (no generation markers needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.common import load_model, offline, package_versions, resolve_base, resolve_device
from training.data import check_example, data_folder, sha256_file
from training.sft import Progress, TrainConfig, _count_parameters, _model_max, _release, _write_json

KEEP_CHECKPOINTS = 2  # Trainer deletes older checkpoint-N folders past this many
SFT = TrainConfig()  # a fresh LoRA here has the settings of training.sft's


class BadPairs(ValueError):
    """A DPO file that cannot be trained on; the message names the file and the line."""


def _unset(help_text: str) -> Any:
    """A field that is None unless given (the run then works the value out)."""
    return field(default=None, metadata={"help": help_text})


@dataclass
class DPOTrainConfig:
    """Everything a run depends on; `data` and `out` are required. The command line's flags are
    these fields (see make_parser)."""

    # ---- data and output
    data: str = field(
        default="",
        metadata={
            "help": "release folder, or a folder with train.jsonl of pairs",
            "required": True,
        },
    )
    out: str = field(
        default="", metadata={"help": "run folder: adapter/ and checkpoints/", "required": True}
    )
    adapter: str | None = _unset(
        "SFT adapter folder to start from; it is also the reference (default: a fresh LoRA, "
        "the base as reference)"
    )
    base: str | None = _unset(
        "base model folder (default: the one the --adapter was trained on, else the local "
        "SmolLM2-135M-Instruct)"
    )
    # ---- length of the run: --max-steps wins over --epochs
    max_steps: int | None = _unset("optimizer steps (default: --epochs over the pairs)")
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs"})
    # ---- the loss and optimisation
    beta: float = field(
        default=0.1,
        metadata={"help": "strength of the pull towards the reference (DPO's beta)"},
    )
    # A starting point, not tuned: a quarter of the SFT rate. DPO's gradient does not fade as
    # cross-entropy's does, and with beta 0.1 a few large steps already separate the pairs.
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    batch_size: int = field(default=4, metadata={"help": "pairs per optimizer step"})
    max_length: int | None = _unset(
        "tokens of prompt + reply; longer pairs lose the end of their replies, and pairs whose "
        "prompt alone fills it are left out (default: the model's context, nothing cut)"
    )
    # ---- a fresh LoRA (ignored with --adapter, which brings its own)
    lora_r: int = field(default=SFT.lora_r, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=SFT.lora_alpha, metadata={"help": "LoRA scale numerator"})
    lora_dropout: float = field(
        default=SFT.lora_dropout,
        metadata={"help": "dropout on the LoRA input (TRL switches dropout off for DPO)"},
    )
    target_modules: list[str] = field(
        default_factory=lambda: list(SFT.target_modules),
        metadata={"help": "comma-separated module names that get adapters"},
    )
    # ---- run control
    seed: int = field(default=0, metadata={"help": "seed of the adapter init and the order"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps (0: never)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint"})
    no_validation: bool = field(
        default=False, metadata={"help": "skip the figures on valid.jsonl before and after"}
    )
    device: str = field(
        default="auto", metadata={"help": "where to train", "choices": ["auto", "cpu", "cuda"]}
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DPOTrainConfig:
        """The config from a dict such as training_config.json; keys that are not fields (the
        resolved extras) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class DPOResult:
    adapter_dir: Path  # OUT/adapter, or the checkpoint folder when stopped
    steps: int
    final_loss: float | None
    losses: list[tuple[int, float]]
    tokens_per_s: float  # prompt and reply tokens of both sides, per second of training
    stopped: bool
    config: dict[str, Any]  # resolved: see training_config.json
    before: dict[str, float] | None = None  # validation figures (see preference_figures)
    after: dict[str, float] | None = None


# ---- data --------------------------------------------------------------------------------------


def dpo_files(data: str | Path) -> dict[str, Path]:
    """train.jsonl (and valid.jsonl when present) of a release's dpo/ folder, or of `data`
    itself when it holds train.jsonl."""
    folder = data_folder(data, "dpo")
    files = {"train": folder / "train.jsonl"}
    if (folder / "valid.jsonl").is_file():
        files["valid"] = folder / "valid.jsonl"
    return files


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The pairs of a DPO file as {"prompt", "chosen", "rejected"}, each checked here so that a
    bad line is reported by file and line rather than deep inside TRL. Either all three are
    strings, or the prompt is a chat and each reply one assistant message, the same on every
    line (TRL tells the format from the first pair and applies it to all)."""
    pairs: list[dict[str, Any]] = []
    first_kind: str | None = None
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                kind = _check_pair(value)
            except json.JSONDecodeError as error:
                raise BadPairs(f"{path}:{number}: not JSON: {error.msg}") from None
            except ValueError as error:
                raise BadPairs(f"{path}:{number}: {error}") from None
            if first_kind is None:
                first_kind = kind
            elif kind != first_kind:
                raise BadPairs(f"{path}:{number}: a {kind} pair after {first_kind} ones")
            pairs.append({k: value[k] for k in ("prompt", "chosen", "rejected")})
    if not pairs:
        raise BadPairs(f"{path}: no pairs in the file")
    return pairs


def _check_pair(value: Any) -> str:
    """ "chat" or "text", the format of a valid pair; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("a pair must be a JSON object")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in value]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    prompt = value["prompt"]
    if isinstance(prompt, str):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(value[key], str) or not value[key].strip():
                raise ValueError(f"{key!r} must be a non-empty string, as the prompt is one")
        return "text"
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("'prompt' must be a non-empty list of messages or a string")
    for key in ("chosen", "rejected"):
        reply = value[key]
        if not (isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], dict)):
            raise ValueError(f"{key!r} must be a list of one assistant message")
        if reply[0].get("role") != "assistant":
            raise ValueError(f"{key!r} must be an assistant message")
        try:  # roles, contents and turn order of the whole chat, as for SFT
            check_example({"messages": [*prompt, *reply]})
        except ValueError as error:
            raise ValueError(f"prompt + {key}: {error}") from None
    return "chat"


# ---- metrics ----------------------------------------------------------------------------------

# TRL's evaluation metrics, under the names written to eval.json.
FIGURES = {
    "accuracy": "eval_rewards/accuracies",
    "margin": "eval_rewards/margins",
    "chosen_reward": "eval_rewards/chosen",
    "rejected_reward": "eval_rewards/rejected",
    "loss": "eval_loss",
    "chosen_logp": "eval_logps/chosen",
    "rejected_logp": "eval_logps/rejected",
}


def preference_figures(metrics: dict[str, float]) -> dict[str, float]:
    """The DPO figures from `DPOTrainer.evaluate()`'s metrics. A pair's implicit reward for a
    reply is beta * (log p_policy - log p_reference) of the reply's tokens; accuracy is the share
    of pairs whose chosen reward is strictly above the rejected one (a tie counts as wrong, so a
    policy equal to its reference scores 0), margin the mean of chosen minus rejected."""
    missing = [key for key in FIGURES.values() if key not in metrics]
    if missing:
        raise KeyError(f"DPOTrainer.evaluate() gave no {', '.join(missing)}")
    return {name: float(metrics[key]) for name, key in FIGURES.items()}


def even_batch(pairs: int, most: int) -> int:
    """The largest batch size up to `most` that divides `pairs`.

    TRL's evaluation figures are means of per-batch means; with every batch the same size that
    is the mean over pairs, as the figures claim to be."""
    return next(size for size in range(min(most, pairs), 0, -1) if pairs % size == 0)


def _figure_line(label: str, figures: dict[str, float]) -> str:
    return (
        f"{label}: accuracy={figures['accuracy']:.3f} margin={figures['margin']:+.4f} "
        f"chosen={figures['chosen_reward']:+.4f} rejected={figures['rejected_reward']:+.4f} "
        f"loss={figures['loss']:.4f}"
    )


# ---- training ---------------------------------------------------------------------------------


def train_dpo(
    config: DPOTrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DPOResult:
    """Train as `config` says; see the module docstring for the files written. `on_progress` gets
    training.sft's Progress (after each step, and at phase changes with a message), so the job
    that shows an SFT run shows this one; `should_stop()` is asked after each step, and a yes
    checkpoints and returns a stopped result."""
    offline()
    if not config.out:
        raise ValueError("config.out (the run folder) is required")
    report = on_progress or (lambda progress: None)
    out = Path(config.out)
    files = dpo_files(config.data)
    if config.no_validation:
        files.pop("valid", None)
    pairs = {split: read_pairs(path) for split, path in files.items()}
    device = resolve_device(config.device)
    start = _start_adapter(config.adapter)
    base = config.base or (start or {}).get("base") or resolve_base(None)

    report(Progress(0, 0, None, 0.0, None, 0.0, "Loading the model"))
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = load_model(base, device)
    peft_config = None
    if start is not None:
        from peft import PeftModel

        # DPOTrainer sees a PeftModel with an adapter and no ref_model: it copies the adapter to
        # a frozen "ref" one and computes the reference through it, so the reference is this
        # SFT model, not the base.
        model = PeftModel.from_pretrained(model, start["path"], is_trainable=True)
    else:
        from peft import LoraConfig

        # Built by TRL after it seeds with args.seed; B = 0, so policy = reference at the start.
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
    max_length = config.max_length or _model_max(base)
    cuda = device.startswith("cuda")
    args = DPOConfig(
        output_dir=str(out / "checkpoints"),
        beta=config.beta,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        max_length=max_length,
        # As training.sft: a linear warm-up over the first 5% of the steps (transformers' starts
        # at 0, so the first step of a short run does not move), then a linear decay to zero.
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=config.seed,
        # float32 on the CPU; on a GPU bf16 weights (load_model) under bf16 autocast.
        bf16=cuda,
        use_cpu=not cuda,
        # TRL turns it on by default; these small models fit without it, and it costs a second
        # forward pass per step.
        activation_checkpointing=False,
        logging_steps=1,  # a Progress (with its loss) after every step
        eval_strategy="no",  # the figures are taken before and after, below
        save_strategy="steps" if config.save_every else "no",
        save_steps=config.save_every or 500,
        save_total_limit=KEEP_CHECKPOINTS,
        report_to=[],
        push_to_hub=False,
        disable_tqdm=True,
    )
    datasets = {split: Dataset.from_list(rows) for split, rows in pairs.items()}
    progress = _ProgressCallback(report, should_stop)
    trainer: Any = DPOTrainer(  # Any: its datasets and model are typed as unions
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("valid"),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress.callback()],
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the logs go to on_progress instead
    kept = {"train": len(trainer.train_dataset)}  # TRL leaves out pairs whose prompt fills it
    if trainer.eval_dataset is not None:
        kept["valid"] = len(trainer.eval_dataset)
    validate = bool(kept.get("valid"))
    if not kept["train"]:
        raise BadPairs(f"{files['train']}: no pair's prompt fits in max_length={max_length}")
    _check_reference(trainer.model, start is not None)

    trainable, total = _count_parameters(trainer.model)
    resolved = config.to_dict() | {
        "method": "dpo",
        "base": base,
        "start_adapter": start,
        "reference": "the start adapter (frozen copy)" if start else "the base model",
        "max_length": max_length,
        "device": device,
        "dtype": "bfloat16" if cuda else "float32",
        "loss_type": list(args.loss_type),
        "data_files": {
            split: {
                "path": str(path.resolve()),
                "sha256": sha256_file(path),
                "pairs": len(pairs[split]),
                "pairs_kept": kept.get(split, 0),
            }
            for split, path in files.items()
        },
        "release": _release_of(files["train"].parent),
        "trainable_parameters": trainable,
        "parameters": total,
        "packages": package_versions("trl", "datasets"),
        "python": sys.version.split()[0],
    }
    progress.resolved = resolved

    before = None
    if validate:
        report(Progress(0, 0, None, 0.0, None, 0.0, "Validating before training"))
        trainer.args.per_device_eval_batch_size = even_batch(kept["valid"], config.batch_size)
        before = preference_figures(trainer.evaluate())

    last = _last_checkpoint(out) if config.resume else None
    if last is not None:
        _check_resume(last, resolved)
        progress.resumed_from = last
    trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    step = trainer.state.global_step
    final_loss = progress.losses[-1][1] if progress.losses else None
    resolved = resolved | {
        "total_steps": trainer.state.max_steps,
        "steps": step,
        "final_loss": final_loss,
    }
    epoch = float(trainer.state.epoch or 0.0)
    if progress.stopped:
        saved = out / "checkpoints" / f"checkpoint-{step}"
        report(
            Progress(
                step, trainer.state.max_steps, final_loss, progress.rate(), None, epoch, "Stopped"
            )
        )
        return DPOResult(
            saved, step, final_loss, progress.losses, progress.rate(), True, resolved, before
        )

    after = None
    if validate:
        report(Progress(step, step, final_loss, progress.rate(), 0.0, epoch, "Validating"))
        after = preference_figures(trainer.evaluate())
    resolved = resolved | {"valid_before": before, "valid_after": after}
    adapter_dir = out / "adapter"
    # Only the trained adapter: the frozen "ref" copy is the start adapter, already on disk.
    trainer.model.save_pretrained(adapter_dir, selected_adapters=["default"])
    _write_json(adapter_dir / "training_config.json", resolved)
    if before is not None and after is not None:
        _write_json(
            adapter_dir / "eval.json",
            {
                "split": "valid",
                "pairs": kept["valid"],
                "beta": config.beta,
                "before": before,
                "after": after,
            },
        )
    write_dpo_card(adapter_dir, resolved)
    report(Progress(step, step, final_loss, progress.rate(), 0.0, epoch, "Done"))
    return DPOResult(
        adapter_dir,
        step,
        final_loss,
        progress.losses,
        progress.rate(),
        False,
        resolved,
        before,
        after,
    )


def _start_adapter(adapter: str | None) -> dict[str, Any] | None:
    """Path, checksum and recorded base of the SFT adapter to start from."""
    if not adapter:
        return None
    folder = Path(adapter)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: --adapter takes a PEFT adapter folder")
    peft_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    recorded = folder / "training_config.json"
    sft = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else {}
    base = sft.get("base") or peft_config.get("base_model_name_or_path")
    return {
        "path": str(folder.resolve()),
        "sha256": sha256_file(weights),
        # The base it was trained on, when that folder is here; else --base or the default.
        "base": base if base and Path(base).is_dir() else None,
        "release": sft.get("release"),
        "steps": sft.get("steps"),
    }


def _check_reference(model: Any, from_adapter: bool) -> None:
    """What DPOTrainer made of the model is what this module promises: from an SFT adapter a
    frozen "ref" copy of it beside the trained "default"; otherwise one fresh adapter, the
    reference being the base. Guards against a TRL release that changes how it picks the
    reference."""
    names = set(model.peft_config)
    expected = {"default", "ref"} if from_adapter else {"default"}
    if names != expected:
        raise RuntimeError(f"DPOTrainer made adapters {sorted(names)}, not {sorted(expected)}")
    for name, parameter in model.named_parameters():
        if parameter.requires_grad != (".default." in name):
            raise RuntimeError(f"{name}: requires_grad={parameter.requires_grad}")


def _release_of(folder: Path) -> dict[str, Any] | None:
    """The release manifest's name and checksum, for a release's dpo/ folder or a release."""
    return _release(folder.parent) if folder.name == "dpo" else _release(folder)


class _ProgressCallback:
    """Progress after each step, and the cancel check, as a transformers TrainerCallback (made by
    `callback()`, so that transformers is imported only when training)."""

    def __init__(
        self, report: Callable[[Progress], None], should_stop: Callable[[], bool] | None
    ) -> None:
        self.report = report
        self.should_stop = should_stop
        self.losses: list[tuple[int, float]] = []
        self.stopped = False
        self.resumed_from: Path | None = None
        self.resolved: dict[str, Any] = {}
        self.started = 0.0
        self.ended: float | None = None
        self.start_step = 0
        self.tokens = 0.0

    def rate(self) -> float:
        """Tokens per second of this session's training (evaluation and saving left out)."""
        end = self.ended if self.ended is not None else time.perf_counter()
        elapsed = end - self.started if self.started else 0.0
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                owner.started = time.perf_counter()
                owner.start_step = state.global_step
                # On resume, the losses before the checkpoint, from its trainer_state.json.
                owner.losses = [
                    (int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e
                ]
                if owner.resumed_from is not None:
                    owner.report(
                        Progress(
                            state.global_step,
                            state.max_steps,
                            None,
                            0.0,
                            None,
                            float(state.epoch or 0.0),
                            f"Resumed at {owner.resumed_from}",
                        )
                    )

            def on_log(
                self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
            ) -> None:
                if not logs or "loss" not in logs:
                    return  # evaluation figures, or the end-of-training summary
                step, loss = state.global_step, float(logs["loss"])
                owner.losses = [p for p in owner.losses if p[0] < step] + [(step, loss)]
                # TRL's num_tokens: every token of both sides of the pairs trained on so far.
                owner.tokens = float(logs.get("num_tokens", 0.0))
                done = step - owner.start_step
                elapsed = time.perf_counter() - owner.started
                eta = elapsed / done * (state.max_steps - step) if done > 0 else None
                owner.report(
                    Progress(
                        step, state.max_steps, loss, owner.rate(), eta, float(state.epoch or 0.0)
                    )
                )
                # Asked after the step's Progress, as training.sft does. Trainer logs before it
                # decides on saving, so the checkpoint of this step is written, then it stops.
                if owner.should_stop is not None and step < state.max_steps and owner.should_stop():
                    owner.stopped = True
                    control.should_training_stop = True
                    control.should_save = True

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                owner.ended = time.perf_counter()

            def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                _write_json(folder / "dpo_run.json", owner.resolved)

        return Callback()


def _last_checkpoint(out: Path) -> Path | None:
    folders = [
        p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "dpo_run.json").is_file()
    ]
    return max(folders, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


# What must match between a checkpoint and the run that resumes it.
_RESUME_KEYS = (
    "base",
    "max_length",
    "batch_size",
    "seed",
    "beta",
    "learning_rate",
    "max_steps",
    "epochs",
)


def _check_resume(folder: Path, resolved: dict[str, Any]) -> None:
    saved = json.loads((folder / "dpo_run.json").read_text(encoding="utf-8"))
    changed = [k for k in _RESUME_KEYS if saved.get(k) != resolved.get(k)]
    if (saved.get("start_adapter") or {}).get("sha256") != (
        resolved.get("start_adapter") or {}
    ).get("sha256"):
        changed.append("start adapter")
    if saved["data_files"]["train"]["sha256"] != resolved["data_files"]["train"]["sha256"]:
        changed.append("training pairs")
    if changed:
        raise ValueError(f"cannot resume from {folder}: changed since: {', '.join(changed)}")


# ---- the model card ---------------------------------------------------------------------------

CARD_HYPERPARAMETERS = (
    "beta",
    "learning_rate",
    "batch_size",
    "max_steps",
    "epochs",
    "steps",
    "max_length",
    "seed",
    "loss_type",
    "final_loss",
)


def write_dpo_card(
    adapter_dir: Path,
    resolved: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    variant: str = "dpo",
) -> Path:
    """training.card's model card, its data line saying what DPO trained on, and a section with
    the start adapter and the validation figures before and after; `metrics`, the student's
    evaluation when a training job has scored it (the job's `variant`, sft_dpo)."""
    from training.card import write_model_card

    release = resolved.get("release") or {}
    hyperparameters = {
        k: resolved[k]
        for k in CARD_HYPERPARAMETERS
        if resolved.get(k) is not None and not (k == "epochs" and resolved.get("max_steps"))
    }
    if not resolved.get("start_adapter"):
        hyperparameters |= {k: resolved[k] for k in ("lora_r", "lora_alpha", "target_modules")}
    path = write_model_card(
        adapter_dir,
        base=resolved["base"],
        release_name=release.get("name"),
        release_checksum=release.get("checksum"),
        variant=variant,
        hyperparameters=hyperparameters,
        metrics=metrics,
        not_evaluated="Replies not scored yet: run `python -m training.evaluate --adapter` on "
        "it. The preference figures are below.",
    )
    start = resolved.get("start_adapter")
    section = [
        "## Preference training (DPO)",
        "",
        (
            f"Started from the SFT adapter `{start['path']}` (sha256 `{start['sha256'][:12]}`), "
            "which was also the reference model."
            if start
            else "Started from a fresh LoRA adapter; the reference model was the base."
        ),
        "",
    ]
    before, after = resolved.get("valid_before"), resolved.get("valid_after")
    if before and after:
        section += [
            f"On the release's validation pairs (beta {resolved['beta']}): a reply's reward is "
            "beta times its log-probability under the adapter minus under the reference; "
            "accuracy is the share of pairs whose chosen reply gets the higher reward.",
            "",
            "| figure | before | after |",
            "| --- | --- | --- |",
        ]
        section += [f"| {k} | {before[k]:.4g} | {after[k]:.4g} |" for k in FIGURES]
    else:
        section.append("No validation pairs were scored.")
    text = path.read_text(encoding="utf-8").splitlines()
    text = [
        "- Data: DPO pairs (a chat, a chosen and a rejected supporter reply); the loss counts "
        "the replies only."
        if line.startswith("- Data variant:")
        else line
        for line in text
    ]
    at = text.index("## Intended use") if "## Intended use" in text else len(text)
    path.write_text("\n".join([*text[:at], *section, "", *text[at:]]), encoding="utf-8")
    return path


# ---- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    values = vars(parser.parse_args(argv))
    values["target_modules"] = [m.strip() for m in values["target_modules"].split(",") if m]
    config = DPOTrainConfig.from_dict(values)

    def show(progress: Progress) -> None:
        if progress.message:
            print(progress.message, flush=True)
        elif progress.loss is not None:
            eta = f"{progress.eta_s:.0f}s" if progress.eta_s is not None else "?"
            print(
                f"step {progress.step}/{progress.total_steps} loss={progress.loss:.4f} "
                f"tokens/s={progress.tokens_per_s:.0f} epoch={progress.epoch:.2f} eta={eta}",
                flush=True,
            )

    try:
        result = train_dpo(config, on_progress=show)
    except (BadPairs, FileNotFoundError) as error:
        parser.error(str(error))  # exits with status 2
    if result.stopped:
        print(f"stopped at step {result.steps}; checkpoint: {result.adapter_dir}")
        return 1
    for label, figures in (("before", result.before), ("after", result.after)):
        if figures is not None:
            print(_figure_line(label, figures))
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "?"
    print(f"adapter: {result.adapter_dir} (steps={result.steps}, loss={loss})")
    return 0


def make_parser() -> argparse.ArgumentParser:
    """Flags from DPOTrainConfig's fields and their help texts."""
    parser = argparse.ArgumentParser(
        prog="python -m training.dpo", description="Preference training (DPO) of the student."
    )
    defaults = DPOTrainConfig()
    length = parser.add_mutually_exclusive_group()
    for spec in fields(DPOTrainConfig):
        flags = ["--" + spec.name.replace("_", "-")]
        if spec.name == "learning_rate":
            flags.append("--lr")  # training.sft's name for it
        default = getattr(defaults, spec.name)
        options = dict(spec.metadata)
        target = length if spec.name in ("max_steps", "epochs") else parser
        if isinstance(default, bool):
            target.add_argument(*flags, action="store_true", **options)
        elif isinstance(default, list):
            target.add_argument(*flags, default=",".join(default), **options)
        else:
            kind = _OPTIONAL_TYPES.get(spec.name, type(default))
            target.add_argument(*flags, type=kind, default=default, **options)
    return parser


# fields that default to None
_OPTIONAL_TYPES = {"adapter": str, "base": str, "max_steps": int, "max_length": int}


if __name__ == "__main__":
    sys.exit(main())
