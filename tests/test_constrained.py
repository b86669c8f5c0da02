"""generation.constrained: decoding held to a JSON schema, on a tiny random Llama (SmolLM2's
tokenizer, so the grammar sees the real vocabulary) and, marked slow, on SmolLM2 itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import xgrammar

from generation import constrained
from tests import test_training_sft

# The trainer's own tiny random Llama, and the fixtures it is built from.
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base

MOODS = ["calm", "anxious", "low"]
# A random model writes garbage: every string is bounded, so the document must close early.
SMALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mood", "tags"],
    "properties": {
        "mood": {"type": "string", "enum": MOODS},
        "tags": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "minLength": 1, "maxLength": 8},
        },
    },
}


def check_small(value: Any) -> None:
    assert isinstance(value, dict) and set(value) == {"mood", "tags"}
    assert value["mood"] in MOODS
    assert isinstance(value["tags"], list) and 1 <= len(value["tags"]) <= 3
    assert all(isinstance(tag, str) and 1 <= len(tag) <= 8 for tag in value["tags"])


@pytest.fixture(scope="module")
def tiny_model(tiny_base: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model.eval()
    return model


def generate(model, tokenizer, schema, n: int, max_new_tokens: int, sample: bool = True):
    """n sequences for one prompt in one generate(); each as (text, ended on EOS)."""
    import torch
    from transformers import LogitsProcessorList

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Answer in JSON."}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    eos = constrained.stop_token_ids(tokenizer)
    processor = constrained.schema_processor(tokenizer, schema, batch=n)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
        if sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    torch.manual_seed(0)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([processor]),
            **sampling,
        )
    results = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos), None)
        kept = row if stop is None else row[: stop + 1]
        results.append((tokenizer.decode(kept, skip_special_tokens=True), stop is not None))
    return results, processor


def test_tiny_model_writes_json_that_follows_the_schema(tiny_model, tokenizer) -> None:
    # Four sampled sequences in one batch: each has its own matcher, and those that end first
    # are padded while the others go on.
    results, processor = generate(tiny_model, tokenizer, SMALL_SCHEMA, n=4, max_new_tokens=96)
    assert not processor.rejected
    for text, ended in results:
        assert ended, f"did not close the document in time: {text!r}"
        check_small(json.loads(text))


def test_greedy_and_a_single_sequence(tiny_model, tokenizer) -> None:
    [(text, ended)], _ = generate(
        tiny_model, tokenizer, SMALL_SCHEMA, n=1, max_new_tokens=96, sample=False
    )
    assert ended
    check_small(json.loads(text))


def test_a_cut_sequence_is_a_valid_prefix(tiny_model, tokenizer) -> None:
    [(text, ended)], _ = generate(tiny_model, tokenizer, SMALL_SCHEMA, n=1, max_new_tokens=8)
    assert not ended
    # Properties in the schema's order, separators fixed to ", " and ": ".
    start = '{"mood": "'
    assert text.startswith(start) if len(text) >= len(start) else start.startswith(text)


def test_the_batch_must_match_generate(tiny_model, tokenizer) -> None:
    import torch

    processor = constrained.schema_processor(tokenizer, SMALL_SCHEMA, batch=2)
    with pytest.raises(ValueError, match="batch=2"):
        processor(torch.zeros((3, 4), dtype=torch.long), torch.zeros((3, len(tokenizer))))
    with pytest.raises(ValueError):
        constrained.schema_processor(tokenizer, SMALL_SCHEMA, batch=0)


def test_compiled_once_per_tokenizer_and_schema(tokenizer) -> None:
    constrained.clear_caches()
    first = constrained.compiled_schema(tokenizer, SMALL_SCHEMA)
    reordered = json.loads(json.dumps(dict(reversed(list(SMALL_SCHEMA.items())))))
    assert constrained.compiled_schema(tokenizer, reordered) is first
    other = {**SMALL_SCHEMA, "required": ["mood"]}
    assert constrained.compiled_schema(tokenizer, other) is not first
    # Each call gets its own processor (it holds per-sequence state); the grammar is shared.
    a = constrained.schema_processor(tokenizer, SMALL_SCHEMA)
    b = constrained.schema_processor(tokenizer, SMALL_SCHEMA)
    assert a is not b and a.matchers[0] is not b.matchers[0]


def test_the_grammar_enforces_the_schema_keywords(tokenizer) -> None:

    grammar = constrained.compiled_schema(tokenizer, SMALL_SCHEMA)
    eos = tokenizer.eos_token_id

    def accepts(value: Any) -> bool:
        matcher = xgrammar.GrammarMatcher(grammar)
        tokens = tokenizer.encode(json.dumps(value), add_special_tokens=False)
        return all(matcher.accept_token(t) for t in tokens) and matcher.accept_token(eos)

    assert accepts({"mood": "calm", "tags": ["a", "bcdefghi"]})
    assert not accepts({"mood": "happy", "tags": ["a"]})  # enum
    assert not accepts({"mood": "calm", "tags": []})  # minItems
    assert not accepts({"mood": "calm", "tags": ["a", "b", "c", "d"]})  # maxItems
    assert not accepts({"mood": "calm", "tags": ["abcdefghi"]})  # maxLength
    assert not accepts({"mood": "calm", "tags": [""]})  # minLength
    assert not accepts({"mood": "calm", "tags": ["a"], "extra": 1})  # additionalProperties
    assert not accepts({"mood": "calm"})  # required


def test_a_missing_library_says_what_to_install(tokenizer, monkeypatch) -> None:
    constrained.clear_caches()
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar now fails
    with pytest.raises(RuntimeError, match="pip install xgrammar"):
        constrained.schema_processor(tokenizer, SMALL_SCHEMA)


@pytest.mark.slow
def test_smollm2_writes_an_extes_dialogue(smollm2_folder: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    from bench.grammar_backends import DIALOGUE_SCHEMA, SYSTEM, USER, validates

    model = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    model.eval()
    import torch
    from transformers import LogitsProcessorList

    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    eos = constrained.stop_token_ids(tokenizer)
    processor = constrained.schema_processor(tokenizer, DIALOGUE_SCHEMA, batch=2)
    torch.manual_seed(0)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=SLOW_MAX_NEW_TOKENS,
            num_return_sequences=2,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            repetition_penalty=1.1,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([processor]),
        )
    assert not processor.rejected
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos), None)
        text = tokenizer.decode(
            row[: (stop + 1) if stop is not None else None], skip_special_tokens=True
        )
        assert stop is not None, f"did not close the dialogue in time: {text[-200:]!r}"
        dialogue = json.loads(text)
        assert validates(dialogue, DIALOGUE_SCHEMA), text


SLOW_MAX_NEW_TOKENS = 1500
