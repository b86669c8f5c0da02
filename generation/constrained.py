"""JSON that follows a JSON schema, from a local transformers model, by constrained decoding.

Usage::

    from transformers import LogitsProcessorList
    from generation.constrained import schema_processor

    processor = schema_processor(tokenizer, schema, batch=len(prompts) * n)  # fresh each call
    model.generate(**inputs, num_return_sequences=n, eos_token_id=eos_ids,
                   logits_processor=LogitsProcessorList([processor]))

At every decoding step the processor sets the score of every token that cannot continue a
document valid under `schema` to -inf, so whatever the model writes is a valid prefix, and the
end-of-sequence token is allowed only once the document is complete. A sequence cut off by
max_new_tokens is still only a prefix: check that it ended on EOS before parsing it.

The library is xgrammar (pip install xgrammar). We compared three maintained libraries with
bench/grammar_backends.py: SmolLM2-135M-Instruct on a 2-core CPU, the ExTES dialogue schema, two
sampled sequences per generate() call, up to 300 new tokens each. The machine was shared with
other work during the default run (2 torch threads), so its wall-clock step times swung between
about 50 and 1,000 ms; a second run with one torch thread was steady (about 75 ms a step), and
the time spent inside the logits processor is the figure to compare:

- xgrammar 0.2.9: about 0.3 s to compile the schema, most of it indexing the tokenizer (once per
  tokenizer; a further schema compiles in about 0.01 s); 0.4 to 0.5 ms a token inside the
  processor (one thread; up to 1 ms on the busy machine), with its own C++ masking kernel.
- llguidance 1.9.1: about 0.35 s to compile; 0.7 ms a token (3.5 ms on the busy machine). It
  ships no transformers processor, only matchers and bitmasks: the masking code would be ours.
- outlines 1.3.3 with outlines-core 0.2.14: it turns the schema into one regular expression and
  indexes that against the whole vocabulary: 37 to 50 s for this schema, whose length bounds and
  item counts unroll into thousands of automaton states. Its first generate() then spent another
  33 s in torch.compile of its masking kernel, and 15 ms a token after that (busy machine).

All three enforced every keyword the schema uses (minLength, maxLength, minItems, maxItems, enum,
anyOf, required, additionalProperties) and all run offline from the local tokenizer. We chose
xgrammar: the cheapest a token (llguidance is close), compiles in a fraction of a second, and
ships a CPU masking kernel and a transformers processor; ours below is a small variant of that
processor which leaves ended sequences alone instead of asserting on them.
Limits worth knowing: inside strings that carry minLength/maxLength it allows no backslash escape
at all (so no \\" or \\n in the dialogue text; the model writes around them), properties come in
the schema's order, and whitespace is fixed to ", " and ": " (any_whitespace=False), which keeps
a small model from padding the output with blank lines.

Compiled grammars are cached per tokenizer (its token table is indexed once) and per schema
(keyed on json.dumps(schema, sort_keys=True)); both caches are safe to use from several threads.
A processor holds per-sequence parsing state, so it serves exactly one generate() call; build a
new one for every call (cheap: the compiled grammar is shared).

No Django here: the training code may reuse this module.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from typing import Any

LIBRARY = "xgrammar"
INSTALL = "pip install xgrammar"
# Tokens that end a turn for the chat models we run; whichever the tokenizer has are allowed as
# the end of the document, next to its eos_token (SmolLM2: <|im_end|>; <|endoftext|> too).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")
_MAX_SCHEMAS_PER_TOKENIZER = 64

log = logging.getLogger(__name__)

_lock = threading.Lock()
# id(tokenizer) -> (weak reference to it, its xgrammar GrammarCompiler, {schema key: grammar})
_compilers: dict[int, tuple[weakref.ref[Any], Any, dict[str, Any]]] = {}


def available() -> bool:
    """Whether the grammar library is installed (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec(LIBRARY) is not None


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise RuntimeError(
            f"Constrained JSON generation needs the xgrammar library: {INSTALL}"
        ) from error
    return xgrammar


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens that may end a document: the tokenizer's EOS and the end-of-turn tokens it has."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[token]) for token in END_OF_TURN_TOKENS if token in vocab)
    if not ids:
        raise ValueError("the tokenizer has no EOS token: a constrained document could not end")
    return sorted(ids)


def schema_key(schema: dict[str, Any]) -> str:
    """The cache key: equal schemas share it whatever their key order (the first one compiled
    sets the order the properties are written in)."""
    return json.dumps(schema, sort_keys=True)


def _compiler_for(tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """The tokenizer's GrammarCompiler and grammar cache; call with _lock held."""
    entry = _compilers.get(id(tokenizer))
    if entry is not None and entry[0]() is tokenizer:
        return entry[1], entry[2]
    xgr = _xgrammar()
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=len(tokenizer), stop_token_ids=stop_token_ids(tokenizer)
    )
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)  # we keep our own cache
    grammars: dict[str, Any] = {}
    key = id(tokenizer)
    # Forget the entry when the tokenizer goes away (its id may then be reused).
    ref = weakref.ref(tokenizer, lambda _: _compilers.pop(key, None))
    _compilers[key] = (ref, compiler, grammars)
    return compiler, grammars


def compiled_schema(tokenizer: Any, schema: dict[str, Any]) -> Any:
    """The xgrammar CompiledGrammar for `schema` and `tokenizer`, compiled once and then cached.

    Raises ValueError when xgrammar cannot turn the schema into a grammar.
    """
    key = schema_key(schema)
    with _lock:
        compiler, grammars = _compiler_for(tokenizer)
        grammar = grammars.get(key)
        if grammar is None:
            try:
                # Not `key`: the grammar writes properties in the schema's own order.
                grammar = compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, strict_mode=True
                )
            except Exception as error:  # xgrammar raises its own error types
                raise ValueError(f"cannot compile this JSON schema: {error}") from error
            if len(grammars) >= _MAX_SCHEMAS_PER_TOKENIZER:
                grammars.pop(next(iter(grammars)))
            grammars[key] = grammar
        return grammar


def clear_caches() -> None:
    """Forget every compiled grammar and tokenizer index (for benchmarks and tests)."""
    with _lock:
        _compilers.clear()


def schema_processor(tokenizer: Any, schema: dict[str, Any], batch: int = 1) -> Any:
    """A fresh transformers LogitsProcessor constraining generation to JSON valid under `schema`.

    `batch` is the number of sequences generate() decodes at once: the prompts times
    num_return_sequences. Each sequence gets its own matcher, so every sequence of the batch is
    constrained on its own; a sequence that has ended (EOS) is left alone while the others go on.
    The processor serves one generate() call only.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    grammar = compiled_schema(tokenizer, schema)
    from transformers import LogitsProcessor

    xgr = _xgrammar()

    class SchemaLogitsProcessor(LogitsProcessor):
        def __init__(self) -> None:
            self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(batch)]
            self.vocab_size = int(grammar.tokenizer_info.vocab_size)
            self.bitmask = xgr.allocate_token_bitmask(batch, self.vocab_size)
            self.started = False
            # Sequences whose last token the grammar refused: left unconstrained, logged once.
            self.rejected: set[int] = set()

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if input_ids.shape[0] != batch:
                raise ValueError(
                    f"this processor was built for batch={batch} sequences but generate() runs "
                    f"{input_ids.shape[0]}: pass batch=len(prompts) * num_return_sequences"
                )
            if self.started:
                for i, token in enumerate(input_ids[:, -1].tolist()):
                    matcher = self.matchers[i]
                    if i in self.rejected or matcher.is_terminated():
                        continue  # ended: generate() now pads this sequence
                    if not matcher.accept_token(token):
                        # Only when something else changed the scores after us, or a stopping
                        # criterion ended this sequence and generate() pads it.
                        self.rejected.add(i)
                        log.warning("constrained sequence %d: token %d refused", i, token)
            self.started = True
            live = [
                i
                for i, matcher in enumerate(self.matchers)
                if i not in self.rejected and not matcher.is_terminated()
            ]
            for i in live:
                self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
            if live:
                # Ended sequences keep their scores: an all -inf row would break sampling.
                bitmask = self.bitmask.to(scores.device)
                vocab = min(self.vocab_size, scores.shape[1])
                xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=vocab, indices=live)
                if scores.shape[1] > self.vocab_size:  # padded lm_head: ids no token has
                    scores[live, self.vocab_size :] = -float("inf")
            return scores

    return SchemaLogitsProcessor()
