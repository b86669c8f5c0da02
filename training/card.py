"""The model card (README.md) written beside a trained adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Shown in this order when present; other metrics follow. ESConv's convention, 0-100 (see
# training.metrics); the last block names the keys of evaluations stored before it.
METRIC_NAMES = {
    "bleu-1": "BLEU-1",
    "bleu-2": "BLEU-2",
    "bleu-3": "BLEU-3",
    "bleu-4": "BLEU-4",
    "rouge-l": "ROUGE-L",
    "distinct-1": "Distinct-1",
    "distinct-2": "Distinct-2",
    "distinct-3": "Distinct-3",
    "unigram-f1": "Unigram F1",
    "length": "Tokens per reply",
    "perplexity": "Perplexity",
    "strategy-accuracy": "Strategy accuracy (%)",
    "samples": "Replies scored",
    "bleu1": "BLEU-1 (sacreBLEU, 0-1)",
    "bleu2": "BLEU-2 (sacreBLEU, 0-1)",
    "bleu4": "BLEU-4 (sacreBLEU, 0-1)",
    "rouge_l": "ROUGE-L (F1, 0-1)",
    "distinct1": "Distinct-1 (0-1)",
    "distinct2": "Distinct-2 (0-1)",
    "unigram_f1": "Unigram F1 (0-1)",
    "strategy_accuracy": "Strategy accuracy (0-1)",
    "reply_words": "Words per reply",
}


def write_model_card(
    adapter_dir: str | Path,
    *,
    base: str,
    release_name: str | None,
    release_checksum: str | None,
    variant: str,
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any] | None,
    not_evaluated: str = "Not evaluated yet: run `python -m training.evaluate --adapter` on it.",
) -> Path:
    """Write adapter_dir/README.md and return its path. `metrics` maps metric names (as in
    evaluate's metrics.json) to values; None leaves the table out and says `not_evaluated`."""
    adapter_dir = Path(adapter_dir)
    lines = [
        "# ExTES Studio student adapter",
        "",
        "A LoRA adapter that fine-tunes a small chat model to reply as an emotional-support "
        "listener, trained on dialogues curated in ExTES Studio.",
        "",
        "## Training data and base",
        "",
        f"- Base model: `{base}`",
        f"- Release: {release_name or 'not a release folder'}",
        f"- Release checksum: `{release_checksum or 'unknown'}`",
        f"- Data variant: `{variant}` ("
        + (
            "whole dialogues plus the DRI replies for masked turns"
            if variant == "sft_dri"
            else "whole dialogues"
        )
        + "); the loss counts the supporter's replies only.",
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {_cell(value)} |" for name, value in hyperparameters.items()]
    lines += ["", "## Evaluation", ""]
    if metrics:
        lines += [
            "Scored on the release's test dialogues: one greedy reply per supporter turn, from the "
            "real context, against the reply written there. Perplexity is that of the written "
            "replies under the model.",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        ordered = [k for k in METRIC_NAMES if k in metrics] + sorted(
            k for k in metrics if k not in METRIC_NAMES
        )
        lines += [f"| {METRIC_NAMES.get(k, k)} | {_cell(metrics[k])} |" for k in ordered]
    else:
        lines.append(not_evaluated)
    lines += [
        "",
        "## Intended use",
        "",
        "Research and teaching: comparing how curated self-chat data changes a small model's "
        "supportive replies, and demonstrating the method end to end. It is a component for "
        "people who study or build such systems, and its replies are meant to be read by them.",
        "",
        "## Limits",
        "",
        "- A model of this size keeps little context and few facts; its replies can be generic, "
        "repetitive, or beside the point, and it can contradict itself within a dialogue.",
        "- It learned from dialogues written by another language model and checked by a few "
        "annotators; their blind spots and the scenarios of the release bound what it has seen.",
        "- The automatic scores above compare wording with one reference reply; a good reply "
        "that says something else scores low. They do not measure whether a reply helps.",
        "",
        "## Safety",
        "",
        "- It is not a therapist, counsellor or crisis service, and must not be presented as one "
        "or deployed to people in distress without human oversight.",
        "- It cannot recognise an emergency reliably. Any product around it needs its own "
        "detection of risk (self-harm, abuse, danger to others) that hands the person to human "
        "help and to local emergency or crisis lines.",
        "- It may give advice that sounds confident and is wrong, including about health, "
        "medication or law. Its replies are not professional advice.",
        "- Tell users that they are talking to a machine, and do not keep what they confide "
        "longer than the purpose needs.",
        "",
    ]
    path = adapter_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value).replace("|", "\\|")


HYPERPARAMETERS = (
    "lr",
    "batch_size",
    "max_steps",
    "epochs",
    "steps",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_length",
    "seed",
    "strategy_tags",
    "final_loss",
    "valid_loss",
)


def write_card_from_config(adapter_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """The card for an adapter written by training.sft, from its training_config.json."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "training_config.json").read_text(encoding="utf-8"))
    release = config.get("release") or {}
    return write_model_card(
        adapter_dir,
        base=config["base"],
        release_name=release.get("name"),
        release_checksum=release.get("checksum"),
        variant=config.get("variant", "sft"),
        hyperparameters={
            k: config[k]
            for k in HYPERPARAMETERS
            if config.get(k) is not None and not (k == "epochs" and config.get("max_steps"))
        },
        metrics=metrics,
    )
