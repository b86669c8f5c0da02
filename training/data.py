"""Training examples: release files in, token ids with an assistant-only loss mask out.

A release folder holds `sft/{train,valid,test}.jsonl`, one whole dialogue a line (`messages` with
system/user/assistant roles, every assistant reply trained), and `sft_dri/...`, one DRI example a
line in TRL's prompt-completion form (`prompt`: the chat up to a masked supporter turn;
`completion`: the one assistant reply written for it, the only tokens trained). Both carry
strategies, scenario, id and source. SFT + DRI trains on the two together (`variant_files`). No
Django and no torch at import time: the GPU benchmark and the Django task both import this.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE = -100  # label of a token that does not count in the loss (PyTorch's default ignore_index)
ROLES = ("system", "user", "assistant")
# A strategy tag as written by releases built with tags: "[Reflection of Feelings] I hear ..."
TAG = re.compile(r"\[([^\[\]\n]{1,80})\] ")
# End-of-turn markers of common chat templates; the one that follows an assistant reply is trained
# too, so that the model learns to stop.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


def split_tag(text: str) -> tuple[str | None, str]:
    """("Question", "How are you?") for "[Question] How are you?"; (None, text) without a tag."""
    match = TAG.match(text)
    if match is None:
        return None, text
    return match.group(1).strip(), text[match.end() :]


def data_folder(data_dir: str | Path, variant: str, split: str = "train") -> Path:
    """The folder holding `<split>.jsonl`: `data_dir/<variant>/` of a release, else `data_dir`."""
    root = Path(data_dir)
    for folder in (root / variant, root):
        if (folder / f"{split}.jsonl").is_file():
            return folder
    raise FileNotFoundError(
        f"no {split}.jsonl in {root / variant} or {root}: pass a release folder or a folder "
        f"holding {split}.jsonl"
    )


def variant_files(data_dir: str | Path, variant: str, split: str = "train") -> list[Path]:
    """The files that hold `split` of `variant`: in a release folder, sft/<split>.jsonl, and for
    `sft_dri` sft_dri/<split>.jsonl as well (the DRI completions only; curation.releases.build);
    a folder that holds <split>.jsonl itself gives that one file for either variant."""
    root = Path(data_dir)
    folder = data_folder(root, "sft", split)
    files = [folder / f"{split}.jsonl"]
    dri = root / "sft_dri" / f"{split}.jsonl"
    if variant == "sft_dri" and folder != root and dri.is_file():
        files.append(dri)
    return files


def has_lines(path: Path) -> bool:
    """Whether a JSON Lines file exists and holds a line that is not blank (read up to it)."""
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as lines:
        return any(line.strip() for line in lines)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The examples of a JSON Lines file, each checked at this boundary (see `check_example`)."""
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            example = json.loads(line)
            try:
                check_example(example)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            examples.append(example)
    return examples


def chat_of(example: dict[str, Any]) -> list[dict[str, str]]:
    """The whole chat of an example: its `messages`, or its `prompt` then its `completion`."""
    if "completion" in example:
        return [*example["prompt"], *example["completion"]]
    return example["messages"]


def check_example(example: dict[str, Any]) -> None:
    """An optional system message first, then user and assistant turns alternating, every content
    a string, and at least one assistant turn to learn from. A prompt-completion example is
    checked as the chat of the two together, its completion being one assistant message."""
    if "completion" in example:
        prompt, completion = example.get("prompt"), example["completion"]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("'prompt' must be a non-empty list")
        if (
            not isinstance(completion, list)
            or len(completion) != 1
            or completion[0].get("role") != "assistant"
        ):
            raise ValueError("'completion' must be one assistant message")
        messages: Any = [*prompt, *completion]
    else:
        messages = example.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
    for k, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {k}: unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {k}: content must be a string")
        if role == "system" and k != 0:
            raise ValueError(f"message {k}: a system message may only come first")
        if k > 0 and role == messages[k - 1]["role"]:
            raise ValueError(f"message {k}: two {role} messages in a row")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message to learn from")


def uses_tags(examples: list[dict[str, Any]]) -> bool:
    """Whether every assistant turn starts with a strategy tag (a release built with tags)."""
    replies = [m["content"] for e in examples for m in chat_of(e) if m["role"] == "assistant"]
    return bool(replies) and all(split_tag(text)[0] is not None for text in replies)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # the token id where it counts in the loss, IGNORE elsewhere

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    def truncated(self, max_length: int) -> Encoded | None:
        """The first `max_length` tokens; None when no trained token is left."""
        cut = Encoded(self.input_ids[:max_length], self.labels[:max_length])
        return cut if cut.trained else None


def render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], first: int = 0
) -> tuple[str, list[range]]:
    """The rendered chat and, for each assistant turn from message `first` on, the character
    range of its reply plus the end-of-turn marker right after it.

    Chat templates such as SmolLM2's carry no generation markers, so the ranges are found by
    rendering prefixes: the text before turn i is the chat up to i with the generation prompt, and
    the reply is located after it. This relies on one property, checked for every turn: a longer
    conversation renders as an extension of a shorter one.
    """
    text = render(tokenizer, messages)
    markers = [tokenizer.eos_token, *END_OF_TURN] if tokenizer.eos_token else list(END_OF_TURN)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first:
            continue
        before = render(tokenizer, messages[:i], prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"turn {i}: the chat template does not render a conversation as an extension "
                "of its beginning, so assistant tokens cannot be told apart"
            )
        content = message["content"]
        start = through.find(content, len(before))
        if start < 0:  # some templates trim the content
            content = content.strip()
            start = through.find(content, len(before))
        if start < 0:
            raise ValueError(f"turn {i}: the reply is not in the rendered chat")
        end = start + len(content)
        marker = next((m for m in markers if through.startswith(m, end)), "")
        spans.append(range(start, end + len(marker)))
    return text, spans


def encode_example(tokenizer: Any, example: dict[str, Any]) -> Encoded:
    """A release line encoded: a whole chat with every assistant reply trained, or a
    prompt-completion example with the completion alone trained."""
    if "completion" in example:
        return encode_completion(tokenizer, example["prompt"], example["completion"])
    return encode_chat(tokenizer, example["messages"])


def encode_completion(
    tokenizer: Any, prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> Encoded:
    """Token ids of the chat `prompt` + `completion`; labels keep only the completion's reply and
    its end-of-turn marker, none of the prompt (its assistant turns included)."""
    return encode_chat(tokenizer, [*prompt, *completion], first=len(prompt))


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], first: int = 0) -> Encoded:
    """Token ids of the rendered chat; labels keep only the assistant replies from message
    `first` on and their end-of-turn marker.

    Each piece (context, reply, context, ...) is tokenized on its own, so no token straddles a
    boundary, and a reply is cut into tokens exactly as the model produces it after the
    generation prompt.
    """
    text, spans = assistant_spans(tokenizer, messages, first)
    pieces: list[str] = []
    trained: list[bool] = []
    position = 0
    for span in spans:
        pieces += [text[position : span.start], text[span.start : span.stop]]
        trained += [False, True]
        position = span.stop
    pieces.append(text[position:])
    trained.append(False)
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, train in zip(
        tokenizer(pieces, add_special_tokens=False)["input_ids"], trained, strict=True
    ):
        input_ids += ids
        labels += ids if train else [IGNORE] * len(ids)
    return Encoded(input_ids, labels)


def choose_max_length(lengths: list[int], model_max: int, quantile: float = 0.95) -> int:
    """A length that keeps `quantile` of the examples whole, rounded up to a multiple of 64 and at
    most the model's context. The longest few examples are cut rather than letting them set the
    memory peak of a whole run."""
    if not lengths:
        return min(64, model_max)
    ordered = sorted(lengths)
    at = ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]
    return min(model_max, 64 * math.ceil(at / 64))


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of example indices with similar lengths, in random order.

    The examples are shuffled, then taken in windows of 64 batches; inside a window they are
    sorted by length and cut into batches, so a batch pads to a length close to all of its
    members. Windows keep batches different from one epoch (seed) to the next.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 64 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda j: lengths[j], reverse=True)
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_schedule(
    lengths: list[int], batch_size: int, seed: int, start_step: int = 0
) -> Iterator[list[int]]:
    """The batches of steps start_step+1, start_step+2, ... over as many epochs as it takes. Epoch
    e is shuffled with seed*1_000_003+e, so the order is a function of the step alone: that is
    what lets a resumed run see exactly the batches an uninterrupted one would."""
    per_epoch = len(length_grouped_batches(lengths, batch_size, seed))
    epoch, index = divmod(start_step, per_epoch)
    while True:
        batches = length_grouped_batches(lengths, batch_size, seed * 1_000_003 + epoch)
        yield from batches[index:]
        epoch, index = epoch + 1, 0


def collate(examples: list[Encoded], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """Right-padded `input_ids` and `labels` tensors (width rounded up to `multiple`), and the
    count of real tokens.

    No attention mask: with right padding and causal attention, no real token ever attends to a
    pad (pads only come after it), and pads carry no loss. Leaving the mask out lets attention
    take its fused causal kernel.
    """
    import torch

    width = multiple * math.ceil(max(len(e) for e in examples) / multiple)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example)] = torch.tensor(example.input_ids)
        labels[row, : len(example)] = torch.tensor(example.labels)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "tokens": sum(len(e) for e in examples),
    }
