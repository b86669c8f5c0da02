"""What training and evaluation share: where the base model is, which device and precision, and
the loss on assistant tokens. Heavy libraries are imported inside functions."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

from training.data import IGNORE

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "accelerate")


def offline() -> None:
    # Before transformers is imported: nothing may reach for the model hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def models_dir() -> Path:
    return Path(os.environ.get("EXTES_MODELS_DIR", ROOT / "var" / "models"))


def resolve_base(base: str | None) -> str:
    """`base` itself, or the local SmolLM2-135M-Instruct (converted on first use, ~40 s)."""
    if base:
        return str(base)
    from generation.localmodel import ensure_local_model

    return str(ensure_local_model(models_dir()))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def load_model(base: str, device: str) -> Any:
    """The base model for training: float32 with the default attention on the CPU (bf16 kernels
    there are slow or missing); bf16 weights with PyTorch's fused attention (SDPA) on a GPU."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda"):
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    else:
        kwargs = {"dtype": torch.float32}
    model: Any = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    model.config.use_cache = False
    return model.to(device)


def token_loss(model: Any, input_ids: Any, labels: Any) -> tuple[Any, int]:
    """(summed cross-entropy, number of tokens) over the positions whose label is not IGNORE.

    The output layer runs only on those positions: with SmolLM2's 49k-word vocabulary it is a
    fifth of the matrix work per token, and about half of the tokens (system and user turns)
    never need it. `model` is a causal LM, with or without a PEFT wrapper.
    """
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    # Position t predicts token t+1.
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())
