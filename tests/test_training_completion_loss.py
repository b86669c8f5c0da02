"""Prompt-completion examples (a release's sft_dri/): the loss covers the completion and its
end-of-turn marker, nothing of the prompt; SFT + DRI trains on sft/ and sft_dri/ together and is
evaluated on sft/test.jsonl. The tokenizer and the tiny model are test_training_sft's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_training_sft import (  # noqa: F401  (fixtures)
    DIALOGUES,
    SYSTEM,
    runs,
    smollm2_folder,
    tiny_base,
    tiny_config,
    tokenizer,
    write_jsonl,
)
from training.data import (
    IGNORE,
    check_example,
    encode_chat,
    encode_completion,
    encode_example,
    uses_tags,
    variant_files,
)
from training.sft import train


def dri(dialogue: dict, turn: int, reply: str) -> dict:
    """A DRI line as a release writes it: the chat up to message `turn` (an assistant turn of
    `dialogue`), and `reply` in its place."""
    prompt = dialogue["messages"][:turn]
    assert dialogue["messages"][turn]["role"] == "assistant"
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": reply}],
        "strategies": ["Question"],
        "scenario": dialogue["scenario"],
        "id": f"{dialogue['id']}-c{turn}",
        "source": "dri",
    }


# DIALOGUES[1]: system, user, assistant, user, assistant; DIALOGUES[3] has three replies.
DRI = [
    dri(DIALOGUES[1], 4, "[Question] How did you feel right after?"),
    dri(DIALOGUES[3], 2, "[Reflection of Feelings] That sounds like a real loss."),
    dri(DIALOGUES[3], 6, "[Affirmation] Such a bond is worth a lot."),
]


def test_labels_cover_exactly_the_completion_and_its_end_of_turn(tokenizer) -> None:  # noqa: F811
    example = DRI[0]
    prompt, completion = example["prompt"], example["completion"]
    assert any(m["role"] == "assistant" for m in prompt)  # a reply before the gap
    encoded = encode_completion(tokenizer, prompt, completion)

    # The ids are the whole chat as the template renders it.
    whole = tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == whole
    # Token by token: the prompt with the generation prompt, untrained; then the reply and its
    # end-of-turn marker, trained as the tokenizer cuts them after the generation prompt; then
    # the template's trailing newline, untrained.
    before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    head = tokenizer(before, add_special_tokens=False)["input_ids"]
    reply = tokenizer(completion[0]["content"] + "<|im_end|>", add_special_tokens=False)[
        "input_ids"
    ]
    n = len(head)
    assert encoded.input_ids[:n] == head
    assert encoded.labels[:n] == [IGNORE] * n
    assert encoded.input_ids[n : n + len(reply)] == reply
    assert encoded.labels[n : n + len(reply)] == reply
    tail = encoded.labels[n + len(reply) :]
    assert (
        tail == [IGNORE] * len(tail)
        and tokenizer.decode(encoded.input_ids[n + len(reply) :]) == "\n"
    )
    assert encoded.trained == len(reply)
    assert [tokenizer.decode(run) for run in runs(encoded)] == [
        completion[0]["content"] + "<|im_end|>"
    ]


def test_the_replies_before_the_gap_are_not_trained_again(tokenizer) -> None:  # noqa: F811
    example = DRI[2]  # two supporter replies in the prompt
    chat = encode_chat(tokenizer, [*example["prompt"], *example["completion"]])
    completion = encode_example(tokenizer, example)
    assert completion.input_ids == chat.input_ids
    assert len(runs(chat)) == 3 and runs(completion) == runs(chat)[-1:]
    trained = tokenizer.decode(
        [t for t, lab in zip(completion.input_ids, completion.labels, strict=True) if lab != IGNORE]
    )
    for message in example["prompt"]:
        assert message["content"] not in trained
    # A whole dialogue is still encoded with every reply trained.
    assert (
        encode_example(tokenizer, DIALOGUES[3]).labels
        == encode_chat(tokenizer, DIALOGUES[3]["messages"]).labels
    )


def test_prompt_completion_examples_are_checked_at_the_boundary() -> None:
    for example in DRI:
        check_example(example)
    reply = {"role": "assistant", "content": "ok"}
    user = {"role": "user", "content": "hi"}
    bad: list[dict] = [
        {"prompt": [], "completion": [reply]},
        {"prompt": [user], "completion": []},
        {"prompt": [user], "completion": [reply, reply]},
        {"prompt": [user], "completion": [user]},
        {"prompt": [user, reply], "completion": [reply]},  # two assistant turns in a row
        {"prompt": [user], "completion": [{"role": "assistant", "content": 3}]},
        {"prompt": "hi", "completion": [reply]},
    ]
    for example in bad:
        with pytest.raises(ValueError):
            check_example(example)
    assert uses_tags(DIALOGUES + DRI)
    assert not uses_tags([dri(DIALOGUES[1], 4, "No tag here.")])


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    write_jsonl(folder / "sft" / "train.jsonl", DIALOGUES)
    write_jsonl(folder / "sft" / "valid.jsonl", DIALOGUES[:2])
    write_jsonl(folder / "sft" / "test.jsonl", DIALOGUES[1:3])
    write_jsonl(folder / "sft_dri" / "train.jsonl", DRI)
    write_jsonl(folder / "sft_dri" / "valid.jsonl", DRI[:1])
    write_jsonl(folder / "sft_dri" / "test.jsonl", DRI[1:])
    (folder / "manifest.json").write_text(json.dumps({"release": "r-dri", "checksum": "d00d"}))
    return folder


def test_the_variants_read_their_files(release: Path, tmp_path: Path) -> None:
    assert variant_files(release, "sft") == [release / "sft" / "train.jsonl"]
    assert variant_files(release, "sft_dri") == [
        release / "sft" / "train.jsonl",
        release / "sft_dri" / "train.jsonl",
    ]
    assert variant_files(release, "sft_dri", "valid")[1] == release / "sft_dri" / "valid.jsonl"
    plain = tmp_path / "plain"
    write_jsonl(plain / "train.jsonl", DIALOGUES)
    assert variant_files(plain, "sft_dri") == [plain / "train.jsonl"]


def test_sft_dri_trains_on_the_dialogues_and_the_completions(
    release: Path,
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
    tokenizer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training import sft

    seen: dict = {}
    real_fit = sft.fit

    def fit(model, examples, *args, **kwargs):
        seen["train"], seen["valid"] = examples, kwargs["valid"]
        return real_fit(model, examples, *args, **kwargs)

    monkeypatch.setattr(sft, "fit", fit)
    result = train(tiny_config(release, tmp_path / "run", tiny_base, variant="sft_dri"))
    assert not result.stopped and result.steps == 6 and result.valid_loss is not None

    # The dialogues with every reply trained, then each DRI example with its completion alone.
    expected = [encode_chat(tokenizer, d["messages"]) for d in DIALOGUES]
    expected += [encode_completion(tokenizer, e["prompt"], e["completion"]) for e in DRI]
    assert [(e.input_ids, e.labels) for e in seen["train"]] == [
        (e.input_ids, e.labels) for e in expected
    ]
    # Validation on the whole dialogues of sft/valid.jsonl, as for the SFT-only variant.
    assert [e.labels for e in seen["valid"]] == [
        encode_chat(tokenizer, d["messages"]).labels for d in DIALOGUES[:2]
    ]
    saved = json.loads((result.adapter_dir / "training_config.json").read_text())
    files = saved["data_files"]
    assert (files["train"]["examples"], files["train_dri"]["examples"]) == (len(DIALOGUES), 3)
    assert files["train_dri"]["path"] == str((release / "sft_dri" / "train.jsonl").resolve())
    assert files["valid"]["path"] == str((release / "sft" / "valid.jsonl").resolve())
    assert saved["examples_kept"]["train"] == len(DIALOGUES) + 3

    sft_only = train(tiny_config(release, tmp_path / "sft-run", tiny_base))
    assert "train_dri" not in sft_only.config["data_files"]
    assert sft_only.config["examples_kept"]["train"] == len(DIALOGUES)


def test_resume_refuses_changed_dri_data(release: Path, tmp_path: Path, tiny_base: Path) -> None:  # noqa: F811
    config = tiny_config(release, tmp_path / "run", tiny_base, max_steps=2, variant="sft_dri")
    train(config, should_stop=lambda: True)
    write_jsonl(release / "sft_dri" / "train.jsonl", DRI[:2])
    config.resume = True
    with pytest.raises(ValueError, match="training data"):
        train(config)


def test_evaluation_stays_on_the_whole_dialogues(release: Path) -> None:
    from training.evaluate import _test_path, replies_to_score

    assert _test_path(release) == release / "sft" / "test.jsonl"
    assert replies_to_score(release) == 3  # DIALOGUES[1:3]: two replies and one
