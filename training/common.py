"""What training and evaluation share: where the base model is, which device and precision, and
the loss on assistant tokens. Heavy libraries are imported inside functions."""

from __future__ import annotations

import functools
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


def package_versions(*extra: str) -> dict[str, str]:
    """Installed versions of PACKAGES and of `extra` ones ("missing" where not installed)."""
    versions = {}
    for name in (*PACKAGES, *extra):
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
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    # Position t predicts token t+1.
    targets = labels[:, 1:]
    keep = targets != IGNORE
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    head = inner.get_output_embeddings()
    if hidden.requires_grad and head.bias is None and not head.weight.requires_grad:
        loss = _head_loss().apply(hidden, head.weight, targets)
    else:
        loss = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, len(targets), HEAD_CHUNK):
            logits = head(hidden[start : start + HEAD_CHUNK]).float()
            loss = loss + F.cross_entropy(
                logits, targets[start : start + HEAD_CHUNK], reduction="sum"
            )
    return loss, len(targets)


HEAD_CHUNK = 4096  # rows of logits alive at once: 4096 x 152k float32 is 2.5 GB


@functools.cache
def _head_loss() -> Any:
    """The autograd function below, defined on first use (torch is imported late here)."""
    import torch

    class HeadLoss(torch.autograd.Function):
        """Summed cross-entropy of `hidden @ weight.T` against `targets`, a chunk of rows at a
        time, for a frozen output layer.

        The gradient with respect to `hidden` (softmax minus one-hot, times the weight) is
        computed in the forward pass, chunk by chunk, so the logits (tokens x vocabulary, the
        largest tensor of a step with a 152k vocabulary) never all exist at once and none is
        kept for the backward pass. Same numbers as `cross_entropy(reduction="sum")`.
        """

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any) -> Any:
            exact = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits: in float32
            total = torch.zeros((), dtype=exact, device=hidden.device)
            grad = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], HEAD_CHUNK):
                rows = slice(start, start + HEAD_CHUNK)
                logits = (hidden[rows] @ weight.t()).to(exact)
                picked = targets[rows]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, picked[:, None]).squeeze(1)).sum()
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(picked), device=probs.device), picked] -= 1
                grad[rows] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            (grad,) = ctx.saved_tensors
            return grad * grad_output.to(grad.dtype), None, None

    return HeadLoss
