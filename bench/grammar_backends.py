"""Grammar-constrained JSON from the local teacher (SmolLM2-135M-Instruct): which grammar library.

    python bench/grammar_backends.py                 # K=2 outputs of up to M=300 new tokens
    python bench/grammar_backends.py --outputs 4 --max-new-tokens 800 --backends xgrammar

The model asks for one ExTES dialogue (about "Anxiety and Panic") as a JSON object. Each
installed library constrains decoding to the ExTES dialogue schema as a transformers logits
processor; the same prompt is also run unconstrained (the baseline), all in this one process, with
the same sampling and seed, K sequences in one generate() (num_return_sequences=K).

Figures, one line each:
  grammar backend=baseline when=start|end steps=… tokens_per_s=… ms_per_step=…
  grammar backend=NAME version=… compile_s=… first_call_s=… tokens_per_s=… ms_per_step=…
        overhead_ms_per_token=… mask_ms_per_token=… finished=…/K valid=…/K
  grammar_features backend=NAME minLength=ok maxLength=ok minItems=ok … (what the grammar rejects)
  grammar backend=NAME status=missing install="pip install …"

compile_s: schema -> grammar/index for this tokenizer (tokenizer preprocessing included; once
per schema, then cached). first_call_s: the extra time of one 4-token generate() right after
compiling, over an unconstrained one (lazy set-up…), not counted in the figures that follow.
overhead_ms_per_token: wall time per decoding step, constrained minus the (start) baseline's;
the baseline is forced to run all M steps (min_new_tokens) so that its per-step figure is
steady, and is run again at the end to show how much the machine's speed drifted meanwhile.
mask_ms_per_token: time spent inside the logits processor per step (the direct cost).
finished: sequences that ended on EOS; valid: finished and validating against the schema
(jsonschema when installed, else a small checker for the keywords the schema uses).
A grammar only guarantees a valid prefix: a sequence cut at M tokens is never valid, so with a
small M `valid` mostly counts how often the model closes the dialogue in time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

STRATEGIES = [
    "Reflective Statements",
    "Clarification",
    "Emotional Validation",
    "Empathetic Statements",
    "Affirmation",
    "Offer Hope",
    "Avoid Judgment and Criticism",
    "Suggest Options",
    "Collaborative Planning",
    "Provide Different Perspectives",
    "Reframe Negative Thoughts",
    "Share Information",
    "Normalize Experiences",
    "Promote Self-Care Practices",
    "Stress Management",
    "Others",
]

DIALOGUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["description", "content"],
    "properties": {
        "description": {"type": "string", "minLength": 10, "maxLength": 400},
        "content": {
            "type": "array",
            "minItems": 8,
            "maxItems": 12,
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["User"],
                        "properties": {
                            "User": {"type": "string", "minLength": 2, "maxLength": 300}
                        },
                    },
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["AI Strategy", "AI"],
                        "properties": {
                            "AI Strategy": {"type": "string", "enum": STRATEGIES},
                            "AI": {"type": "string", "minLength": 2, "maxLength": 300},
                        },
                    },
                ]
            },
        },
    },
}

SYSTEM = (
    "You write realistic emotional-support conversations between a user and an AI supporter. "
    "You answer with one JSON object and nothing else."
)
USER = (
    'Write an emotional-support conversation about "Anxiety and Panic" as one JSON object with '
    'two keys: "description", one or two sentences saying what the conversation is about, and '
    '"content", a list of 8 to 12 turns that alternate between the user and the AI, starting '
    'with the user. A user turn is {"User": "..."}; an AI turn is {"AI Strategy": "...", '
    '"AI": "..."}, where the strategy is one of: ' + ", ".join(STRATEGIES) + "."
)


# ---------------------------------------------------------------------------------------------
# Validation of the outputs


def validates(value: Any, schema: dict[str, Any]) -> bool:
    try:
        import jsonschema
    except ImportError:
        return _small_check(value, schema)
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _small_check(value: Any, schema: dict[str, Any]) -> bool:
    """The keywords DIALOGUE_SCHEMA and the test schemas use, nothing more."""
    if "anyOf" in schema:
        return any(_small_check(value, option) for option in schema["anyOf"])
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind == "string":
        return isinstance(value, str) and (
            schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
        )
    if kind == "array":
        if not isinstance(value, list):
            return False
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(_small_check(item, schema.get("items", {})) for item in value)
    if kind == "object":
        if not isinstance(value, dict):
            return False
        properties = schema.get("properties", {})
        if any(key not in value for key in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        return all(_small_check(value[key], sub) for key, sub in properties.items() if key in value)
    return True


# ---------------------------------------------------------------------------------------------
# The backends: each compiles a schema for the tokenizer, builds a fresh logits processor for
# one generate() call, and says whether a token sequence (then EOS) is accepted.


class Backend:
    name = ""
    module = ""
    pip = ""

    def installed(self) -> bool:
        import importlib.util

        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str:
        return importlib.metadata.version(self.pip)

    def compile(self, tokenizer: Any, schema: dict[str, Any], eos_ids: list[int]) -> Any:
        raise NotImplementedError

    def processor(self, compiled: Any, batch: int) -> Any:
        raise NotImplementedError

    def accepts(self, compiled: Any, tokens: list[int], eos: int) -> bool:
        raise NotImplementedError


class XGrammar(Backend):
    """xgrammar as shipped: its compiler and its own transformers processor (contrib.hf)."""

    name = "xgrammar"
    module = "xgrammar"
    pip = "xgrammar"

    def compile(self, tokenizer: Any, schema: dict[str, Any], eos_ids: list[int]) -> Any:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=len(tokenizer), stop_token_ids=eos_ids
        )
        compiler = xgrammar.GrammarCompiler(info)
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def processor(self, compiled: Any, batch: int) -> Any:
        import xgrammar.contrib.hf

        return xgrammar.contrib.hf.LogitsProcessor(compiled)

    def accepts(self, compiled: Any, tokens: list[int], eos: int) -> bool:
        import xgrammar

        matcher = xgrammar.GrammarMatcher(compiled)
        return all(matcher.accept_token(t) for t in tokens) and matcher.accept_token(eos)


class Studio(XGrammar):
    """What the studio runs: generation.constrained.schema_processor (its own cache included)."""

    name = "studio"

    def version(self) -> str:
        from generation import constrained

        return f"{constrained.LIBRARY}-{importlib.metadata.version(constrained.LIBRARY)}"

    def compile(self, tokenizer: Any, schema: dict[str, Any], eos_ids: list[int]) -> Any:
        from generation import constrained

        constrained.clear_caches()  # a cold compile, tokenizer preprocessing included
        return tokenizer, schema, constrained.compiled_schema(tokenizer, schema)

    def processor(self, compiled: Any, batch: int) -> Any:
        from generation.constrained import schema_processor

        return schema_processor(compiled[0], compiled[1], batch)

    def accepts(self, compiled: Any, tokens: list[int], eos: int) -> bool:
        return super().accepts(compiled[2], tokens, eos)


class LLGuidance(Backend):
    name = "llguidance"
    module = "llguidance"
    pip = "llguidance"

    def compile(self, tokenizer: Any, schema: dict[str, Any], eos_ids: list[int]) -> Any:
        import llguidance
        import llguidance.hf

        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=eos_ids)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ",
                              "key_separator": ": "}
        )  # fmt: skip
        matcher = llguidance.LLMatcher(lltok, grammar)  # validates the grammar
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        return lltok, grammar, len(tokenizer)

    def processor(self, compiled: Any, batch: int) -> Any:
        lltok, grammar, vocab = compiled
        return _LLGuidanceProcessor(lltok, grammar, vocab, batch)

    def accepts(self, compiled: Any, tokens: list[int], eos: int) -> bool:
        import llguidance

        lltok, grammar, _ = compiled
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        return matcher.consume_tokens(tokens) and matcher.consume_token(eos)


class _LLGuidanceProcessor:
    """llguidance ships masks and matchers but no transformers processor: this is the usual one.

    The mask is applied with numpy (unpackbits): torch's element-wise ops on a (batch, 49152)
    tensor cost milliseconds on a busy 2-core machine, more than the grammar itself.
    """

    def __init__(self, lltok: Any, grammar: str, vocab: int, batch: int) -> None:
        import llguidance
        import torch

        self.matchers = [llguidance.LLMatcher(lltok, grammar, log_level=0) for _ in range(batch)]
        self.executor = llguidance.LLExecutor()
        self.bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
        self.vocab = vocab
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llguidance.torch
        import numpy as np

        if self.started:
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_stopped():
                    matcher.consume_token(token)
        self.started = True
        live = [(m, i) for i, m in enumerate(self.matchers) if not m.is_stopped()]
        if not live:
            return scores
        llguidance.torch.fill_next_token_bitmask_par(self.executor, live, self.bitmask)
        rows = [i for _, i in live]
        bits = np.unpackbits(
            self.bitmask.numpy()[rows].view(np.uint8), axis=1, count=self.vocab, bitorder="little"
        )
        values = scores.numpy()  # CPU only: this is a CPU benchmark
        block = values[rows, : self.vocab]
        np.putmask(block, bits[:, : values.shape[1]] == 0, -np.inf)
        values[rows, : self.vocab] = block
        if values.shape[1] > self.vocab:
            values[rows, self.vocab :] = -np.inf
        return scores


class OutlinesCore(Backend):
    name = "outlines"
    module = "outlines_core"
    pip = "outlines"

    def installed(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in ("outlines", "outlines_core"))

    def version(self) -> str:
        return (
            f"{importlib.metadata.version('outlines')}"
            f"+core{importlib.metadata.version('outlines-core')}"
        )

    def compile(self, tokenizer: Any, schema: dict[str, Any], eos_ids: list[int]) -> Any:
        from outlines.backends.outlines_core import OutlinesCoreBackend
        from outlines.models.transformers import TransformerTokenizer
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        wrapped = TransformerTokenizer(tokenizer)
        eos = tokenizer.eos_token_id
        # outlines' own vocabulary, less the special tokens other than EOS: it would otherwise let
        # "<|endoftext|>" (a stop token for generate()) be written inside a JSON string.
        vocab = {
            token: i
            for token, i in tokenizer.get_vocab().items()
            if i == eos or token not in tokenizer.all_special_tokens
        }
        vocabulary = OutlinesCoreBackend.create_outlines_core_vocabulary(
            vocab, eos, tokenizer.eos_token, wrapped.convert_token_to_string
        )
        regex = build_regex_from_schema(json.dumps(schema), r"[ ]?")
        return Index(regex, vocabulary), eos

    def processor(self, compiled: Any, batch: int) -> Any:
        from outlines.backends.outlines_core import OutlinesCoreLogitsProcessor

        return OutlinesCoreLogitsProcessor(compiled[0], "torch")

    def accepts(self, compiled: Any, tokens: list[int], eos: int) -> bool:
        from outlines_core import Guide

        index, own_eos = compiled
        guide = Guide(index)
        for token in tokens:
            if not guide.accepts_tokens([token]):
                return False
            guide.advance(token_id=token, return_tokens=False)
        return guide.is_finished() or guide.accepts_tokens([own_eos])


BACKENDS: list[Backend] = [XGrammar(), LLGuidance(), OutlinesCore(), Studio()]


# ---------------------------------------------------------------------------------------------
# Feature probes: does the grammar reject what the schema forbids?


def _turns(n: int) -> list[dict[str, str]]:
    return [
        {"User": "I keep having panic attacks before work."}
        if k % 2 == 0
        else {"AI Strategy": "Emotional Validation", "AI": "That sounds frightening and tiring."}
        for k in range(n)
    ]


def feature_probes() -> dict[str, tuple[bool, str]]:
    """name -> (should the grammar accept it, the JSON text)."""
    good = {"description": "A user talks about panic attacks at work.", "content": _turns(8)}

    def variant(**changes: Any) -> dict[str, Any]:
        return {**good, **changes}

    probes: dict[str, tuple[bool, Any]] = {
        "valid": (True, good),
        "minLength": (False, variant(description="Too short")),
        "maxLength": (False, variant(content=[{"User": "a" * 301}, *_turns(8)[1:]])),
        "minItems": (False, variant(content=_turns(7))),
        "maxItems": (False, variant(content=_turns(13))),
        "enum": (
            False,
            variant(content=[*_turns(7), {"AI Strategy": "Hugging", "AI": "Here for you."}]),
        ),
        "anyOf": (False, variant(content=[*_turns(7), {"User": "Hi.", "AI": "Hello there."}])),
        "required": (False, variant(content=[*_turns(7), {"AI": "Hello there."}])),
        "additionalProperties": (False, variant(mood="anxious")),
        # Valid per the schema, but some grammars refuse them: worth knowing.
        "escapes_in_strings": (True, variant(description='She said "breathe" and it helped.')),
        "key_order_free": (True, {"content": good["content"], "description": good["description"]}),
        "maxLength_exact": (True, variant(content=[{"User": "a" * 300}, *_turns(8)[1:]])),
    }
    return {name: (ok, json.dumps(value)) for name, (ok, value) in probes.items()}


def probe_line(backend: Backend, compiled: Any, tokenizer: Any, eos: int) -> str:
    figures = []
    for name, (should_accept, text) in feature_probes().items():
        tokens = tokenizer.encode(text, add_special_tokens=False)
        try:
            accepted = backend.accepts(compiled, tokens, eos)
        except Exception:  # outlines_core raises on a refused token
            accepted = False
        if should_accept:
            figures.append(f"{name}={'ok' if accepted else 'refused'}")
        else:
            figures.append(f"{name}={'ok' if not accepted else 'IGNORED'}")
    return f"grammar_features backend={backend.name} " + " ".join(figures)


# ---------------------------------------------------------------------------------------------
# Generation


class Timed:
    """Wraps a logits processor and adds up the time spent in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        started = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", "-k", type=int, default=2, help="K sequences per backend")
    parser.add_argument("--max-new-tokens", "-m", type=int, default=300, help="M new tokens")
    parser.add_argument("--backends", nargs="*", default=[b.name for b in BACKENDS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print the generated texts")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    # Wall-clock figures mean little on a busy machine: say how busy it was.
    print(
        f"grammar machine cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} "
        f"load_1m={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    from transformers import LogitsProcessorList

    from generation.localmodel import LocalRunner, ensure_local_model

    runner = LocalRunner(ensure_local_model(ROOT / "var" / "models"), device="cpu")
    tokenizer, model, eos_ids = runner.tokenizer, runner.model, runner.eos_token_ids
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    prompt_len = inputs["input_ids"].shape[1]
    k, m = args.outputs, args.max_new_tokens

    def generate(
        processors: list[Any], max_new: int, **extra: Any
    ) -> tuple[list[list[int]], float]:
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new,
                num_return_sequences=k,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                eos_token_id=eos_ids,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList(processors),
                **extra,
            )
        return out[:, prompt_len:].tolist(), time.perf_counter() - started

    def real_tokens(row: list[int]) -> list[int]:
        stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
        return row if stop is None else row[: stop + 1]

    generate([], 4)  # warm-up
    _, short_s = generate([], 4)  # what a 4-token call costs without a grammar

    def baseline(when: str) -> float:
        rows, seconds = generate([], m, min_new_tokens=m)
        ms = 1000 * seconds / len(rows[0])
        print(
            f"grammar backend=baseline when={when} outputs={k} steps={len(rows[0])} "
            f"tokens_per_s={sum(map(len, rows)) / seconds:.1f} ms_per_step={ms:.1f}",
            flush=True,
        )
        return ms

    base_ms = baseline("start")

    for backend in BACKENDS:
        if backend.name not in args.backends:
            continue
        if not backend.installed():
            print(
                f'grammar backend={backend.name} status=missing install="pip install {backend.pip}"',
                flush=True,
            )
            continue
        try:
            started = time.perf_counter()
            compiled = backend.compile(tokenizer, DIALOGUE_SCHEMA, eos_ids)
            compile_s = time.perf_counter() - started
            started = time.perf_counter()
            generate([backend.processor(compiled, k)], 4)
            first_call_s = time.perf_counter() - started - short_s
            timed = Timed(backend.processor(compiled, k))
            rows, seconds = generate([timed], m)
        except Exception as error:  # a broken backend is a figure, not a crash
            print(f"grammar backend={backend.name} status=failed error={error!r:.300}", flush=True)
            continue
        kept = [real_tokens(row) for row in rows]
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in kept]
        finished = [len(row) and row[-1] in eos_ids for row in kept]
        valid = 0
        for text, done in zip(texts, finished, strict=True):
            if done:
                with contextlib.suppress(ValueError):
                    valid += validates(json.loads(text), DIALOGUE_SCHEMA)
        steps = len(rows[0])
        ms_per_step = 1000 * seconds / steps
        print(
            f"grammar backend={backend.name} version={backend.version()} outputs={k} "
            f"compile_s={compile_s:.3f} first_call_s={first_call_s:.2f} steps={steps} "
            f"tokens_per_s={sum(map(len, kept)) / seconds:.1f} ms_per_step={ms_per_step:.1f} "
            f"overhead_ms_per_token={ms_per_step - base_ms:.2f} "
            f"mask_ms_per_token={1000 * timed.seconds / max(1, timed.calls):.2f} "
            f"finished={sum(map(bool, finished))}/{k} valid={valid}/{k}",
            flush=True,
        )
        print(probe_line(backend, compiled, tokenizer, tokenizer.eos_token_id), flush=True)
        if args.show:
            for text in texts:
                print("   ", text.replace("\n", "\\n"))
    baseline("end")  # against "start": how steady the machine was meanwhile
    print(f"grammar machine load_1m={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
