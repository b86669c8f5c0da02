"""LoRA fine-tuning of the student on a release's SFT files.

    python -m training.sft --data var/releases/r1 --out var/runs/r1-sft --max-steps 200
    python -m training.sft --data var/releases/r1 --out var/runs/r1-sft --resume   # after a stop
    python -m training.sft --data DIR --out DIR --variant sft_dri --epochs 2 --device cuda

`--data` is a release folder or a folder that holds train.jsonl itself. From a release, `sft` trains
on DIR/sft/train.jsonl (whole dialogues, every supporter reply in the loss) and `sft_dri` on that
plus DIR/sft_dri/train.jsonl (DRI prompt-completion examples, the loss on the completion alone);
both validate on DIR/sft/valid.jsonl when present, so their validation losses compare. The base defaults to the local SmolLM2-135M-Instruct.
Writes OUT/adapter/ (the PEFT adapter, training_config.json with everything needed to reproduce
the run, and a model card) and OUT/checkpoints/step-N/ every --save-every steps.

Why a loop of our own on transformers + peft rather than TRL's SFTTrainer:
- assistant-only loss: TRL takes the masks from {% generation %} markers in the chat template, and
  SmolLM2's template has none; the masks here come from rendering prefixes (training/data.py);
- the Django job needs a progress call after every step and a cancel check that checkpoints and
  returns, and a resume that continues the very same batch order, learning-rate schedule and
  random state; with the Trainer that is callbacks plus its own checkpoint layout;
- the output layer runs only on the assistant positions (training/common.py: token_loss);
- the GPU benchmark (bench/training.py) runs this exact loop on a machine with no trl and no
  datasets installed.
What TRL would add beyond that (packing, many dataset formats) we do not need: length-grouped
batches already keep padding low.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.common import (
    load_model,
    offline,
    package_versions,
    resolve_base,
    resolve_device,
    token_loss,
)
from training.data import (
    Encoded,
    batch_schedule,
    choose_max_length,
    collate,
    encode_example,
    length_grouped_batches,
    read_examples,
    sha256_file,
    uses_tags,
    variant_files,
)

KEEP_CHECKPOINTS = 2  # older step-N folders are deleted once a newer one is complete


def _unset(help_text: str) -> Any:
    """A field that is None unless given (the run then works the value out)."""
    return field(default=None, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Everything a run depends on; `data` and `out` are required. The command line's flags are
    these fields (see make_parser)."""

    # ---- data and output
    data: str = field(
        default="",
        metadata={"help": "release folder, or a folder with train.jsonl", "required": True},
    )
    out: str = field(
        default="", metadata={"help": "run folder: adapter/ and checkpoints/", "required": True}
    )
    base: str | None = _unset("base model folder (default: the local SmolLM2-135M-Instruct)")
    variant: str = field(
        default="sft",
        metadata={
            "help": "release data: sft (whole dialogues) or sft_dri (those and the DRI completions)",
            "choices": ["sft", "sft_dri"],
        },
    )
    # ---- length of the run: --max-steps wins over --epochs
    max_steps: int | None = _unset("optimizer steps (default: --epochs over the data)")
    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    # ---- optimisation. 2e-4 is a usual LoRA rate: the adapter starts at zero (B = 0) and only
    # ~0.7% of SmolLM2's weights train, so it takes a larger step than full fine-tuning would.
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (AdamW)"})
    # 4 ESConv-sized chats (~700 tokens each) make ~3k tokens a step: ~20 s on two CPU cores
    # with SmolLM2-135M.
    batch_size: int = field(default=4, metadata={"help": "chats per optimizer step"})
    # ---- LoRA: rank 8 on the attention projections is 0.68% of SmolLM2-135M's weights
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scale numerator (scale alpha/r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "comma-separated module names that get adapters"},
    )
    max_length: int | None = _unset(
        "tokens per chat; longer chats are cut (default: the 95th percentile of the training "
        "chats' lengths, rounded up to 64, at most the model's context)"
    )
    # ---- run control
    seed: int = field(default=0, metadata={"help": "seed of the adapter init, order and dropout"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps (0: never)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint"})
    no_validation: bool = field(
        default=False, metadata={"help": "skip the validation loss on DIR/sft/valid.jsonl"}
    )
    device: str = field(
        default="auto", metadata={"help": "where to train", "choices": ["auto", "cpu", "cuda"]}
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config from a dict such as training_config.json; keys that are not fields (the
        resolved extras) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class Progress:
    """Sent after every optimizer step (message empty), and at phase changes with a message
    ("Tokenizing", "Loading the model", "Resumed at ...", "Validating", "Stopped", "Done")."""

    step: int
    total_steps: int
    loss: float | None
    tokens_per_s: float
    eta_s: float | None
    epoch: float
    message: str = ""


@dataclass
class TrainResult:
    adapter_dir: Path  # OUT/adapter, or the checkpoint folder when stopped
    steps: int
    final_loss: float | None
    losses: list[tuple[int, float]]
    tokens_per_s: float  # real (non-padding) tokens per second, after the first step
    stopped: bool
    config: dict[str, Any]  # resolved: see training_config.json
    valid_loss: float | None = None


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a LoRA adapter as `config` says; see the module docstring for the files written."""
    offline()
    # Every batch has its own length, so activations come in ever-different sizes: growable
    # segments keep the CUDA allocator from fragmenting (read when CUDA starts; no effect on CPU).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    if not config.out:
        raise ValueError("config.out (the run folder) is required")
    report = on_progress or (lambda progress: None)
    device = resolve_device(config.device)
    base = resolve_base(config.base)
    # "train" is the whole dialogues (or a plain folder's file), "train_dri" the DRI completions.
    files = dict(
        zip(("train", "train_dri"), variant_files(config.data, config.variant), strict=False)
    )
    valid = files["train"].with_name("valid.jsonl")  # whole dialogues for both variants
    if valid.is_file():
        files["valid"] = valid
    raw = {name: read_examples(path) for name, path in files.items()}
    raw_sets = {"train": raw["train"] + raw.get("train_dri", [])}
    if "valid" in raw:
        raw_sets["valid"] = raw["valid"]
    if not raw_sets["train"]:
        raise ValueError(
            f"{', '.join(str(p) for n, p in files.items() if n != 'valid')} hold no examples"
        )

    report(Progress(0, 0, None, 0.0, None, 0.0, "Tokenizing"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = {
        split: [encode_example(tokenizer, e) for e in examples]
        for split, examples in raw_sets.items()
    }
    model_max = _model_max(base)
    max_length = config.max_length or choose_max_length(
        [len(e) for e in encoded["train"]], model_max
    )
    sets = {split: _cut(examples, max_length) for split, examples in encoded.items()}
    if not sets["train"]:
        raise ValueError("no training chat keeps an assistant token within max_length")

    report(Progress(0, 0, None, 0.0, None, 0.0, "Loading the model"))
    torch.manual_seed(config.seed)  # the adapter's initial weights
    model = add_lora(load_model(base, device), config)
    trainable, total = _count_parameters(model)
    resolved = config.to_dict() | {
        "base": base,
        "max_length": max_length,
        "device": device,
        "dtype": "bfloat16" if device.startswith("cuda") else "float32",
        "data_files": {
            split: {
                "path": str(path.resolve()),
                "sha256": sha256_file(path),
                "examples": len(raw[split]),
            }
            for split, path in files.items()
        },
        "examples_kept": {split: len(examples) for split, examples in sets.items()},
        "strategy_tags": uses_tags(raw_sets["train"]),
        "release": _release(Path(config.data)),
        "trainable_parameters": trainable,
        "parameters": total,
        "packages": package_versions(),
        "python": sys.version.split()[0],
    }
    return fit(
        model,
        sets["train"],
        config,
        resolved,
        pad_id=pad_id,
        device=device,
        valid=None if config.no_validation else sets.get("valid"),
        on_progress=report,
        should_stop=should_stop,
    )


def add_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _model_max(base: str) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(base), "max_position_embeddings", 2048))


def _cut(examples: list[Encoded], max_length: int) -> list[Encoded]:
    cut = (e.truncated(max_length) for e in examples)
    return [e for e in cut if e is not None]


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _release(data: Path) -> dict[str, Any] | None:
    """Name and checksum from the release manifest, when --data is a release folder."""
    manifest = data / "manifest.json"
    if not manifest.is_file():
        return None
    values = json.loads(manifest.read_text(encoding="utf-8"))
    return {"name": values.get("release"), "checksum": values.get("checksum")}


def fit(
    model: Any,
    examples: list[Encoded],
    config: TrainConfig,
    resolved: dict[str, Any],
    *,
    pad_id: int,
    device: str,
    valid: list[Encoded] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """The training loop on already-encoded chats and a model with adapters (used by `train` and
    by the GPU benchmark, which brings a random model and random token ids)."""
    import torch

    report = on_progress or (lambda progress: None)
    out = Path(config.out)
    lengths = [len(e) for e in examples]
    per_epoch = len(length_grouped_batches(lengths, config.batch_size, config.seed))
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
    resolved = resolved | {"total_steps": total, "batches_per_epoch": per_epoch}

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    # Linear warm-up over the first 5% of steps (Adam's moment estimates are noisy at first),
    # then a linear decay to zero at the last step.
    warmup = max(1, round(0.05 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, (total - s) / max(1, total - warmup))
    )

    step, losses = 0, list[tuple[int, float]]()
    last = latest_checkpoint(out) if config.resume else None
    if last is not None:
        step, losses = _restore(last, model, optimizer, scheduler, resolved, device)
        report(Progress(step, total, None, 0.0, None, step / per_epoch, f"Resumed at {last}"))
    start_step, saved_at = step, step

    cuda = device.startswith("cuda")
    # On a GPU the base weights are bf16 and the adapters float32 (PEFT's default, so that
    # Adam's small updates are not rounded away); autocast runs their products in bf16. PEFT
    # would first copy each adapted layer's input to float32, only for autocast to copy it
    # back: that round trip is switched off.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    if cuda:
        for module in model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = False
    model.train()
    # On a GPU, rows are padded to a multiple of 64 tokens (at most 63 pads a row): shapes then
    # repeat from step to step, so the kernels' per-shape plans are built once, not every step.
    multiple = 64 if cuda else 1
    schedule = batch_schedule(lengths, config.batch_size, config.seed, start_step=step)
    started = time.perf_counter()
    first_done: float | None = None  # end of this session's first step: warm-up stays out
    tokens_seen = tokens_after_first = 0
    stopped = False
    with _attention_backends(cuda):
        while step < total:
            batch = collate([examples[j] for j in next(schedule)], pad_id, multiple)
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with autocast:
                loss_sum, count = token_loss(model, input_ids, labels)
            loss = loss_sum / max(1, count)  # mean over the step's assistant tokens
            loss.backward()
            # Clipping at 1.0 keeps one odd batch (a very long reply, a noisy label) from undoing
            # the adapter; it rarely binds once the loss settles.
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            value = float(loss.item())  # waits for the GPU: the timings below are real
            losses.append((step, value))
            now = time.perf_counter()
            tokens_seen += batch["tokens"]
            if first_done is None:
                first_done = now
            else:
                tokens_after_first += batch["tokens"]
            elapsed = now - started
            report(
                Progress(
                    step=step,
                    total_steps=total,
                    loss=value,
                    tokens_per_s=tokens_seen / elapsed,
                    eta_s=elapsed / (step - start_step) * (total - step),
                    epoch=step / per_epoch,
                )
            )
            if config.save_every and step % config.save_every == 0 and step < total:
                save_checkpoint(out, step, model, optimizer, scheduler, losses, resolved)
                saved_at = step
            if step < total and should_stop is not None and should_stop():
                stopped = True
                break

    final_loss = losses[-1][1] if losses else None
    timed = (time.perf_counter() - first_done) if first_done is not None else 0.0
    if step > start_step + 1 and timed > 0:
        tokens_per_s = tokens_after_first / timed
    else:
        tokens_per_s = tokens_seen / max(1e-9, time.perf_counter() - started)
    resolved = resolved | {"steps": step, "final_loss": final_loss}

    if stopped:
        saved = out / "checkpoints" / f"step-{step}"
        if saved_at != step:
            save_checkpoint(out, step, model, optimizer, scheduler, losses, resolved)
        report(Progress(step, total, final_loss, tokens_per_s, None, step / per_epoch, "Stopped"))
        return TrainResult(saved, step, final_loss, losses, tokens_per_s, True, resolved)

    valid_loss = None
    if valid:
        report(Progress(step, total, final_loss, tokens_per_s, 0.0, step / per_epoch, "Validating"))
        valid_loss = mean_loss(model, valid, config.batch_size, pad_id, device)
    # tokens_seen: real (non-padding) tokens of the chats trained on in this session.
    resolved = resolved | {"valid_loss": valid_loss, "tokens_seen": tokens_seen}
    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    _write_json(adapter_dir / "training_config.json", resolved)
    report(Progress(step, total, final_loss, tokens_per_s, 0.0, step / per_epoch, "Done"))
    return TrainResult(
        adapter_dir, step, final_loss, losses, tokens_per_s, False, resolved, valid_loss
    )


def _attention_backends(cuda: bool) -> Any:
    """On a GPU, FlashAttention first: PyTorch may prefer cuDNN's attention on Hopper, which
    builds a plan for every new sequence length (measured on an H100: ~2 ms of CPU per layer
    per step, more than the GPU's work)."""
    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # a PyTorch without priorities: its own order among these
        return sdpa_kernel(order)


def mean_loss(
    model: Any, examples: list[Encoded], batch_size: int, pad_id: int, device: str
) -> float:
    """Mean cross-entropy per assistant token, without dropout or gradients."""
    import torch

    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda j: len(examples[j]))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    with torch.no_grad(), autocast:
        for k in range(0, len(order), batch_size):
            batch = collate([examples[j] for j in order[k : k + batch_size]], pad_id)
            loss, n = token_loss(model, batch["input_ids"].to(device), batch["labels"].to(device))
            total, count = total + float(loss), count + n
    model.train()
    return total / max(1, count)


# ---- checkpoints ------------------------------------------------------------------------------
# OUT/checkpoints/step-N/ holds the adapter (PEFT files), trainer_state.pt (optimizer, scheduler,
# random states) and state.json (step, losses, resolved config). A folder appears complete or not
# at all: it is written under a temporary name and renamed.


def _step_of(path: Path | None) -> int:
    return int(path.name.removeprefix("step-")) if path is not None else 0


def latest_checkpoint(out: Path) -> Path | None:
    folders = [p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file()]
    return max(folders, key=_step_of, default=None)


def save_checkpoint(
    out: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    losses: list[tuple[int, float]],
    resolved: dict[str, Any],
) -> Path:
    import torch

    root = out / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
        tmp / "trainer_state.pt",
    )
    # The data position is the step: batch_schedule(start_step=step) continues the same order.
    _write_json(tmp / "state.json", {"step": step, "losses": losses, "config": resolved})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    older = sorted((p for p in root.glob("step-*") if p != final), key=_step_of)
    for stale in older[: max(0, len(older) - (KEEP_CHECKPOINTS - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


# What must match between a checkpoint and the run that resumes it.
_RESUME_KEYS = ("base", "max_length", "batch_size", "seed", "lora_r", "lora_alpha", "lr")


def _restore(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, resolved: dict[str, Any], device: str
) -> tuple[int, list[tuple[int, float]]]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    saved = state["config"]
    changed = [k for k in (*_RESUME_KEYS, "total_steps") if saved.get(k) != resolved.get(k)]
    if any(
        (saved["data_files"].get(name) or {}).get("sha256")
        != (resolved["data_files"].get(name) or {}).get("sha256")
        for name in ("train", "train_dri")
    ):
        changed.append("training data")
    if changed:
        raise ValueError(f"cannot resume from {folder}: changed since: {', '.join(changed)}")
    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors", device=device))
    trainer = torch.load(folder / "trainer_state.pt", map_location="cpu")
    optimizer.load_state_dict(trainer["optimizer"])  # moves the moments to the parameters' device
    scheduler.load_state_dict(trainer["scheduler"])
    # Dropout continues with the numbers the interrupted run would have drawn next.
    torch.set_rng_state(trainer["rng"]["torch"])
    if "cuda" in trainer["rng"] and device.startswith("cuda"):
        torch.cuda.set_rng_state(trainer["rng"]["cuda"])
    return int(state["step"]), [(int(s), float(v)) for s, v in state["losses"]]


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    values = vars(args)
    values["target_modules"] = [m.strip() for m in values["target_modules"].split(",") if m]
    config = TrainConfig.from_dict(values)

    def show(progress: Progress) -> None:
        if progress.message:
            print(progress.message, flush=True)
        if progress.loss is not None and not progress.message:
            eta = f"{progress.eta_s:.0f}s" if progress.eta_s is not None else "?"
            print(
                f"step {progress.step}/{progress.total_steps} loss={progress.loss:.4f} "
                f"tokens/s={progress.tokens_per_s:.0f} epoch={progress.epoch:.2f} eta={eta}",
                flush=True,
            )

    result = train(config, on_progress=show)
    if result.stopped:
        print(f"stopped at step {result.steps}; checkpoint: {result.adapter_dir}")
        return 1
    from training.card import write_card_from_config

    write_card_from_config(result.adapter_dir)
    print(f"adapter: {result.adapter_dir} (steps={result.steps}, loss={result.final_loss:.4f})")
    return 0


def make_parser() -> argparse.ArgumentParser:
    """Flags from TrainConfig's fields and their help texts."""
    parser = argparse.ArgumentParser(
        prog="python -m training.sft", description="LoRA fine-tuning of the student."
    )
    defaults = TrainConfig()
    length = parser.add_mutually_exclusive_group()
    for spec in fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(defaults, spec.name)
        options = dict(spec.metadata)
        target = length if spec.name in ("max_steps", "epochs") else parser
        if isinstance(default, bool):
            target.add_argument(flag, action="store_true", **options)
        elif isinstance(default, list):
            target.add_argument(flag, default=",".join(default), **options)
        else:
            kind = _OPTIONAL_TYPES.get(spec.name, type(default))
            target.add_argument(flag, type=kind, default=default, **options)
    return parser


_OPTIONAL_TYPES = {"base": str, "max_steps": int, "max_length": int}  # fields that default to None


if __name__ == "__main__":
    sys.exit(main())
