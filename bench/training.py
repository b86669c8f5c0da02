"""The student's trainer against a plain transformers Trainer, and its MFU on a GPU.

    python bench/training.py                                   # CPU, SmolLM2-135M, ESConv chats
    python bench/training.py --dialogues 48 --steps 4 --batch-size 4
    PYTHONUNBUFFERED=1 python bench/training.py --device cuda --random-model qwen2-0.5b --steps 30
    PYTHONUNBUFFERED=1 python bench/training.py --device cuda --random-model qwen2-0.5b --steps 30 \
        --batch-size 64 --lora-dropout 0 --compile                    # the fastest measured
    python bench/training.py --device cpu --random-model tiny --steps 3   # the GPU path, in small

Both sides train the same base with the same LoRA (rank 8 on q/k/v/o), the same chats, the same
batch size and number of steps:
  (a) ours: training.sft (length-grouped batches, no attention mask, the output layer on the
      assistant positions only);
  (b) plain: transformers' Trainer on a PEFT model, random order, each batch padded to its
      longest chat with an attention mask, the loss on every token, as a first script would.
Each prints `name key=value ...` lines:
  train_ours tokens_per_s=… steps=… timed_steps=… seconds=… padding=…
  train_plain tokens_per_s=… (same keys)
  train_ratio ratio=…                       (ours / plain)
  mfu_ours mfu=… tflops=… …                 (--random-model only; plain likewise)
  mfu6n_ours mfu=… tflops=… …               (the 6N convention, apart)
Tokens are real tokens (padding not counted), for both sides alike. The first step of each side
is warm-up and is not timed: tokens/s = tokens of steps 2..N / time from the end of step 1 to the
end of step N.

Data. By default the first --dialogues chats of ESConv's train.txt (EXTES_ESCONV_DIR, else the
shared data folder beside the repository; read in place, never copied): seeker turns become
user messages, supporter turns assistant messages, consecutive turns of one speaker are merged,
and a short system prompt comes first. With --random-model there is no tokenizer and no data
file: chats are random token ids with ESConv's length profile as SmolLM2's tokenizer counts it
(log-normal, median 665 tokens, sigma 0.32, 64 to --max-length tokens; measured: median 658,
95th percentile 1118), cut into alternating user (12-52 tokens) and assistant (10-40 tokens)
turns, so that ~44% of tokens are assistant tokens, as in ESConv.

Random models, built from a config in code (no download): `qwen2-0.5b` is Qwen2-0.5B's shape
(hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151936, tied embeddings);
`tiny` is 2 layers of 64 for testing this path on a CPU. On CUDA the weights are bf16 and
attention is PyTorch's SDPA; the LoRA weights stay float32 under bf16 autocast.

FLOPs per chat of L real tokens, P of them predicted (ours: assistant targets; plain: all), for
MFU = FLOPs / time / --peak-tflops (989: H100/H200 bf16 dense):
  frozen linear layers, N_body weights: forward 2*N_body*L + input gradients 2*N_body*L
      (no weight gradients: the base does not train);
  LoRA, N_lora = sum of r*(d_in + d_out): 6*N_lora*L (forward, input and weight gradients);
  causal attention, per layer, d = heads*head_dim: forward 2*d*L^2 + backward 4*d*L^2;
  output layer, N_head = hidden*vocabulary: 4*N_head*P (forward and input gradient).
Recomputation, norms, activations and the optimizer are not counted. The 6N figure (mfu6n_*)
is 6*(N_body + N_head)*L, the full fine-tuning convention, printed only for comparison.

Measured on one H100 80GB (torch 2.11, transformers 5.17), qwen2-0.5b, 30 steps:
  batch 32, LoRA dropout 0.05 (the defaults)   69k tokens/s  MFU 12.4%  (6N: 20.8%)  50 GiB
  batch 32, dropout 0                           72k tokens/s  MFU 12.8%  (6N: 21.4%)  43 GiB
  batch 64, dropout 0, --compile               134k tokens/s  MFU 23.9%  (6N: 40.2%)  56 GiB
The plain Trainer ran out of memory at batch 32 (full-vocabulary logits for every position).
A profile of an eager step (batch 32): 158 ms of GPU kernels in a 340 ms step, so the step is
bound by the CPU launching ~5000 small kernels (PEFT's per-layer additions, norms, casts);
compiling the layers fuses them. Reaching 40% by this count needs fewer, larger kernels still
(e.g. CUDA graphs over a few bucketed shapes, or fused norm/rotary/LoRA kernels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data import IGNORE, Encoded, batch_schedule, choose_max_length  # noqa: E402
from training.sft import TrainConfig  # noqa: E402

SYSTEM = "You are a kind, patient listener who helps people with what troubles them."


# ---- data ---------------------------------------------------------------------------------------


def esconv_chats(limit: int, split: str = "train") -> list[dict[str, Any]]:
    """The first `limit` dialogues of ESConv's `split` as chats (read in place)."""
    folder = Path(os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))
    chats = []
    with (folder / f"{split}.txt").open(encoding="utf-8") as lines:
        for line in islice(lines, limit):
            messages = [{"role": "system", "content": SYSTEM}]
            for turn in json.loads(line)["dialog"]:
                role = "user" if turn["speaker"] == "usr" else "assistant"
                if messages[-1]["role"] == role:
                    messages[-1]["content"] += " " + turn["text"].strip()
                else:
                    messages.append({"role": role, "content": turn["text"].strip()})
            if any(m["role"] == "assistant" for m in messages):
                chats.append({"messages": messages})
    return chats


def random_chats(count: int, vocab: int, max_length: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        length = min(max_length, max(64, round(math.exp(rng.gauss(math.log(665), 0.32)))))
        input_ids = [rng.randrange(vocab) for _ in range(length)]
        labels: list[int] = []
        assistant = False
        while len(labels) < length:
            span = rng.randint(10, 40) if assistant else rng.randint(12, 52)
            part = input_ids[len(labels) : len(labels) + span]
            labels += part if assistant else [IGNORE] * len(part)
            assistant = not assistant
        chats.append(Encoded(input_ids, labels))
    return chats


# ---- models -------------------------------------------------------------------------------------

SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    },
}


def random_model(shape: str, device: str, seed: int) -> Any:
    """A randomly initialised Qwen2 model, built directly on the device (same seed, same weights)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    config = Qwen2Config(**SHAPES[shape], use_cache=False)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=torch.bfloat16 if cuda else torch.float32,
            attn_implementation="sdpa" if cuda else None,
        )
    return model


# ---- FLOPs --------------------------------------------------------------------------------------


def flop_counts(model: Any) -> dict[str, int]:
    """Weights of the frozen linear layers (body), the LoRA matrices and the output layer, plus
    the attention width and depth, read off the model itself."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = lora = 0
    for name, module in inner.get_decoder().named_modules():
        if isinstance(module, torch.nn.Linear):
            size = module.in_features * module.out_features
            if "lora_" in name:
                lora += size
            else:
                body += size
    head = inner.get_output_embeddings()
    config = inner.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "body": body,
        "lora": lora,
        "head": head.in_features * head.out_features,
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * head_dim,
    }


def step_flops(counts: dict[str, int], lengths: list[int], predicted: int) -> tuple[float, float]:
    """(FLOPs as the module docstring counts them, FLOPs by the 6N convention) of one batch."""
    tokens = sum(lengths)
    linear = (4 * counts["body"] + 6 * counts["lora"]) * tokens
    attention = 6 * counts["layers"] * counts["attention_width"] * sum(n * n for n in lengths)
    head = 4 * counts["head"] * predicted
    return float(linear + attention + head), float(6 * (counts["body"] + counts["head"]) * tokens)


# ---- the two trainers ---------------------------------------------------------------------------


def run_ours(
    model: Any,
    chats: list[Encoded],
    config: TrainConfig,
    pad_id: int,
    device: str,
    profile: bool = False,
) -> dict[str, Any]:
    from training.sft import fit

    profiler = _profiler(device) if profile else None
    result = fit(
        model,
        chats,
        config,
        {},
        pad_id=pad_id,
        device=device,
        on_progress=(lambda p: None if p.message else profiler.step()) if profiler else None,
    )
    if profiler is not None:
        profiler.stop()
        key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=key, row_limit=25))
    # The batches fit() took, step by step (its order is a function of the seed and step).
    lengths = [len(c) for c in chats]
    batches = list(islice(batch_schedule(lengths, config.batch_size, config.seed), result.steps))
    timed = [[chats[j] for j in batch] for batch in batches[1:]]
    tokens = sum(len(c) for batch in timed for c in batch)
    multiple = 64 if device.startswith("cuda") else 1  # as fit() pads
    return {
        "tokens_per_s": result.tokens_per_s,
        "seconds": tokens / result.tokens_per_s,
        "steps": result.steps,
        "timed": [
            (
                [len(c) for c in batch],
                sum(x != IGNORE for c in batch for x in c.labels[1:]),
                multiple * math.ceil(max(len(c) for c in batch) / multiple),
            )
            for batch in timed
        ],
        "final_loss": result.final_loss,
    }


def _profiler(device: str) -> Any:
    """A profiler that records step 3 (steps 1 and 2 are warm-up), already started."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    profiler = profile(
        activities=activities, schedule=schedule(wait=1, warmup=1, active=1, repeat=1)
    )
    profiler.start()
    return profiler


class PadToLongest:
    """Pads a batch to its longest chat; labels are the input ids with pads ignored. Records the
    lengths of each batch, in the order the Trainer asks for them."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.lengths: list[list[int]] = []

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
            mask[row, : len(feature["input_ids"])] = 1
        self.lengths.append([len(f["input_ids"]) for f in features])
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": input_ids.masked_fill(mask == 0, IGNORE),
        }


def run_plain(
    model: Any, chats: list[Encoded], config: TrainConfig, pad_id: int, device: str
) -> dict[str, Any]:
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    cuda = device.startswith("cuda")

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    clock, collator = Clock(), PadToLongest(pad_id)
    steps = config.max_steps or 1
    with tempfile.TemporaryDirectory(prefix="extes-bench-plain-") as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=config.batch_size,
            max_steps=steps,
            learning_rate=config.lr,
            warmup_steps=max(1, round(0.05 * steps)),
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=cuda,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=config.seed,
        )
        dataset = [{"input_ids": c.input_ids} for c in chats]
        trainer = Trainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock]
        )
        trainer.remove_callback(PrinterCallback)  # its summary line is not ours to print
        trainer.train()
    timed = collator.lengths[1 : len(clock.ends)]
    tokens = sum(sum(batch) for batch in timed)
    seconds = clock.ends[-1] - clock.ends[0]
    return {
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "steps": len(clock.ends),
        "timed": [(batch, sum(batch), max(batch)) for batch in timed],
    }


def padding(timed: list[tuple[list[int], int, int]]) -> float:
    """Share of the batches' positions that are padding."""
    real = sum(sum(lengths) for lengths, _, _ in timed)
    positions = sum(len(lengths) * width for lengths, _, width in timed)
    return 1 - real / positions


# ---- main ---------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as training.sft
    import torch

    from training.sft import add_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    batch_size = args.batch_size or (32 if device == "cuda" else 4)
    max_length = args.max_length or 1152  # ~95th percentile of ESConv chats (1118), rounded up
    config = TrainConfig(
        out=tempfile.mkdtemp(prefix="extes-bench-training-"),
        max_steps=args.steps,
        batch_size=batch_size,
        lora_r=args.lora_r,
        lora_dropout=args.lora_dropout,
        max_length=max_length,
        save_every=0,
        device=device,
    )

    if args.random_model:
        vocab = SHAPES[args.random_model]["vocab_size"]
        count = max(args.dialogues, batch_size * args.steps)
        chats = random_chats(count, int(vocab), max_length, config.seed)
        pad_id = 0

        def build() -> Any:
            return add_lora(random_model(args.random_model, device, seed=1), config)

        what = f"{args.random_model} (random), {count} random chats"
    else:
        from transformers import AutoTokenizer

        from training.common import load_model, resolve_base
        from training.data import encode_chat

        base = resolve_base(args.base)
        tokenizer = AutoTokenizer.from_pretrained(base)
        encoded = [encode_chat(tokenizer, c["messages"]) for c in esconv_chats(args.dialogues)]
        config.max_length = max_length = args.max_length or choose_max_length(
            [len(e) for e in encoded], 8192
        )
        chats = [c for c in (e.truncated(max_length) for e in encoded) if c is not None]
        pad_id = tokenizer.pad_token_id

        def build() -> Any:
            torch.manual_seed(config.seed)
            return add_lora(load_model(base, device), config)

        what = f"{Path(base).name}, {len(chats)} ESConv chats"

    print(
        f"# {what}, batch {batch_size}, max_length {max_length}, {args.steps} steps, {device}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}",
        flush=True,
    )
    model = build()
    if args.compile:
        compile_layers(model)
    counts = flop_counts(model)
    try:
        ours = run_ours(model, chats, config, pad_id, device, args.profile)
    except torch.OutOfMemoryError:
        print(f"train_ours error=out_of_memory batch_size={batch_size}", flush=True)
        return
    report("ours", ours, counts, args, batch_size)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    if args.no_plain:
        return
    model = build()
    try:
        plain = run_plain(model, chats, config, pad_id, device)
    except torch.OutOfMemoryError:
        print(f"train_plain error=out_of_memory batch_size={batch_size}", flush=True)
        return
    report("plain", plain, counts, args, batch_size)
    print(f"train_ratio ratio={ours['tokens_per_s'] / plain['tokens_per_s']:.3f}", flush=True)


def compile_layers(model: Any) -> None:
    """torch.compile each decoder layer (shapes marked dynamic: every batch has its own length)."""
    inner = model.get_base_model()
    for layer in inner.get_decoder().layers:
        layer.compile(dynamic=True)


def report(
    name: str, run: dict[str, Any], counts: dict[str, int], args: argparse.Namespace, batch: int
) -> None:
    print(
        f"train_{name} tokens_per_s={run['tokens_per_s']:.1f} steps={run['steps']} "
        f"timed_steps={len(run['timed'])} seconds={run['seconds']:.2f} "
        f"padding={padding(run['timed']):.3f} batch_size={batch}{_memory()}"
        + (f" final_loss={run['final_loss']:.4f}" if run.get("final_loss") is not None else ""),
        flush=True,
    )
    if not args.random_model:
        return
    honest = six_n = 0.0
    for lengths, predicted, _ in run["timed"]:
        flops, convention = step_flops(counts, lengths, predicted)
        honest, six_n = honest + flops, six_n + convention
    peak = args.peak_tflops * 1e12
    tokens = sum(sum(lengths) for lengths, _, _ in run["timed"])
    for label, flops in (("mfu", honest), ("mfu6n", six_n)):
        achieved = flops / run["seconds"]
        print(
            f"{label}_{name} mfu={achieved / peak:.4f} tflops={achieved / 1e12:.1f} "
            f"flops_per_token={flops / tokens:.4g} peak_tflops={args.peak_tflops:g}",
            flush=True,
        )


def _memory() -> str:
    """peak_gib=… on CUDA (then the peak is reset for the next run), else nothing."""
    import torch

    if not torch.cuda.is_available():
        return ""
    peak = torch.cuda.max_memory_allocated() / 2**30
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    torch.cuda.reset_peak_memory_stats()
    return f" peak_gib={peak:.1f} alloc_retries={retries}"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dialogues", type=int, default=48, help="ESConv chats (or random ones)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of each trainer")
    parser.add_argument("--batch-size", type=int, help="chats per step (default 4; 32 on cuda)")
    parser.add_argument("--max-length", type=int, help="tokens per chat (default: from the data)")
    parser.add_argument("--base", help="base model folder (default: the local SmolLM2)")
    parser.add_argument("--random-model", choices=sorted(SHAPES), help="random weights, no data")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="for MFU (bf16 dense)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Trainer")
    parser.add_argument("--profile", action="store_true", help="print the kernels of step 3")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: torch's; 1 is steadier on a busy box)"
    )
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args())
