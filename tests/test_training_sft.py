"""training.data and training.sft on a tiny random Llama (2 layers, 32 wide) that uses the real
SmolLM2 tokenizer and chat template, so the masks are those of the real model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.data import (
    IGNORE,
    Encoded,
    check_example,
    choose_max_length,
    collate,
    data_folder,
    encode_chat,
    length_grouped_batches,
    split_tag,
    uses_tags,
)
from training.sft import Progress, TrainConfig, latest_checkpoint, make_parser, train

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a warm, careful emotional-support listener."


def chat(*turns: str, tags: bool = True) -> dict:
    """A release line: user and assistant texts alternating, the first from the user."""
    messages = [{"role": "system", "content": SYSTEM}]
    strategies = []
    for k, text in enumerate(turns):
        if k % 2 == 0:
            messages.append({"role": "user", "content": text})
        else:
            strategy = ["Reflection of Feelings", "Question", "Affirmation"][k // 2 % 3]
            strategies.append(strategy)
            content = f"[{strategy}] {text}" if tags else text
            messages.append({"role": "assistant", "content": content})
    return {
        "messages": messages,
        "strategies": strategies,
        "scenario": "Work stress",
        "id": turns[0][:16],
        "source": "dialogue",
    }


DIALOGUES = [
    chat("I failed my exam today.", "That sounds really disappointing."),
    chat(
        "My boss shouted at me in front of everyone.",
        "Being humiliated in public hurts a lot.",
        "I just froze and said nothing.",
        "What went through your mind in that moment?",
    ),
    chat("I can't sleep lately.", "Restless nights wear you down. What keeps you awake?"),
    chat(
        "My best friend moved away.",
        "Missing someone close can feel lonely.",
        "We talked every day.",
        "It makes sense that the quiet feels so loud now.",
        "Yes, exactly.",
        "You cared about that friendship a great deal.",
    ),
    chat("I'm nervous about my interview.", "Nerves show this matters to you."),
    chat("Nobody remembered my birthday.", "That must have felt invisible and sad."),
]


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    write_jsonl(folder / "sft" / "train.jsonl", DIALOGUES)
    write_jsonl(folder / "sft" / "valid.jsonl", DIALOGUES[:2])
    write_jsonl(folder / "sft" / "test.jsonl", DIALOGUES[1:3])
    (folder / "manifest.json").write_text(json.dumps({"release": "r-test", "checksum": "abc123"}))
    return folder


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    from generation.localmodel import ensure_local_model

    return ensure_local_model(os.environ.get("EXTES_TEST_MODELS_DIR", ROOT / "var" / "test-models"))


@pytest.fixture(scope="session")
def tokenizer(smollm2_folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(release: Path, out: Path, base: Path, **changes) -> TrainConfig:
    # lr 1e-2: a random 32-wide model needs large steps to move its loss in a few updates.
    values = {"max_steps": 6, "lr": 1e-2, "batch_size": 2, "save_every": 0, "lora_dropout": 0.1}
    return TrainConfig(data=str(release), out=str(out), base=str(base), **(values | changes))


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


# ---- data --------------------------------------------------------------------------------------


def runs(encoded: Encoded) -> list[list[int]]:
    """The trained tokens, one list per contiguous run."""
    groups: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE:
            if previous == IGNORE:
                groups.append([])
            groups[-1].append(token)
        previous = label
    return groups


def test_the_mask_keeps_exactly_each_reply_and_its_end_of_turn(tokenizer) -> None:
    messages = DIALOGUES[3]["messages"]
    encoded = encode_chat(tokenizer, messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in runs(encoded)] == [r + "<|im_end|>" for r in replies]
    # Labels are the ids themselves where trained; the whole chat is there, as the template has it.
    assert all(
        label in (IGNORE, token)
        for token, label in zip(encoded.input_ids, encoded.labels, strict=True)
    )
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == text
    # System and user texts are never trained.
    trained = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE]
    )
    assert SYSTEM not in trained and "My best friend" not in trained and "user" not in trained


def test_the_mask_survives_odd_whitespace_and_a_final_reply(tokenizer) -> None:
    # Leading spaces and newlines would merge with the template's "\n" if the whole text were
    # tokenized at once; a DRI example ends on the reply it teaches.
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "  two spaces\nand a newline\n"},
        {"role": "user", "content": "ok"},
        {"role": "assistant", "content": "[Question] Last one?"},
    ]
    encoded = encode_chat(tokenizer, messages)
    assert [tokenizer.decode(run) for run in runs(encoded)] == [
        "  two spaces\nand a newline\n<|im_end|>",
        "[Question] Last one?<|im_end|>",
    ]
    assert encoded.truncated(5) is None  # the system prompt alone: nothing left to learn
    cut = encoded.truncated(len(encoded) - 3)
    assert cut is not None and len(cut) == len(encoded) - 3


def test_a_template_that_rewrites_history_is_refused(tokenizer) -> None:
    class Forgetful:
        """Renders only the last two messages, so a chat is not an extension of its start."""

        eos_token = "<|im_end|>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt=False):
            text = "".join(f"<{m['role']}>{m['content']}<|im_end|>" for m in messages[-2:])
            return text + ("<assistant>" if add_generation_prompt else "")

    with pytest.raises(ValueError, match="extension"):
        encode_chat(Forgetful(), DIALOGUES[1]["messages"])


def test_examples_are_checked_at_the_boundary() -> None:
    check_example(DIALOGUES[0])
    bad: list[dict] = [
        {"messages": []},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
        {"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "robot", "content": "a"}]},
    ]
    for example in bad:
        with pytest.raises(ValueError):
            check_example(example)


def test_tags() -> None:
    assert split_tag("[Reflection of Feelings] I hear you.") == (
        "Reflection of Feelings",
        "I hear you.",
    )
    assert split_tag("I hear you [really].") == (None, "I hear you [really].")
    assert split_tag("[no space]after") == (None, "[no space]after")
    assert uses_tags(DIALOGUES)
    assert not uses_tags([chat("hi", "hello", tags=False)])


def test_data_folder_takes_a_release_or_a_plain_folder(release: Path, tmp_path: Path) -> None:
    assert data_folder(release, "sft") == release / "sft"
    assert data_folder(release / "sft", "sft_dri") == release / "sft"
    assert data_folder(release, "sft", "test") == release / "sft"
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl"):
        data_folder(tmp_path, "sft")


def test_max_length_from_the_data() -> None:
    lengths = list(range(1, 101))  # 95th percentile: the 95th of 100 sorted values, 95
    assert choose_max_length(lengths, model_max=8192) == 128  # rounded up to 64
    assert choose_max_length(lengths, model_max=100) == 100
    assert choose_max_length([10] * 20 + [5000], model_max=8192) == 64  # one outlier is cut


def test_length_grouped_batches_cover_everything_with_little_padding() -> None:
    import random

    rng = random.Random(1)
    lengths = [rng.randint(20, 900) for _ in range(400)]
    batches = length_grouped_batches(lengths, 4, seed=0)
    assert sorted(j for b in batches for j in b) == list(range(400))
    assert batches == length_grouped_batches(lengths, 4, seed=0)
    assert batches != length_grouped_batches(lengths, 4, seed=1)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[j] for j in b) for b in batches)

    shuffled = list(range(400))
    rng.shuffle(shuffled)
    random_batches = [shuffled[k : k + 4] for k in range(0, 400, 4)]
    assert padded(batches) < 1.05 * sum(lengths) < 1.3 * padded(random_batches)


def test_collate_pads_right_and_counts_real_tokens() -> None:
    batch = collate([Encoded([5, 6, 7], [IGNORE, 6, 7]), Encoded([8], [8])], pad_id=0, multiple=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE], [8, IGNORE, IGNORE, IGNORE]]
    assert batch["tokens"] == 4
    assert collate([Encoded([8], [8])], pad_id=0)["input_ids"].shape == (1, 1)


def test_the_chunked_head_loss_equals_cross_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.nn.functional as F

    from training import common

    monkeypatch.setattr(common, "HEAD_CHUNK", 7)  # 20 rows: chunks of 7, 7 and 6
    torch.manual_seed(0)
    hidden = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (20,))
    (3 * common._head_loss().apply(hidden, weight, targets)).backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    expected = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (3 * expected).backward()
    loss = common._head_loss().apply(hidden.detach().requires_grad_(), weight, targets)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, hidden.grad, rtol=1e-12, atol=1e-12)


# ---- training ----------------------------------------------------------------------------------


def test_config_round_trip_and_flags() -> None:
    config = TrainConfig(data="d", out="o", max_steps=3, target_modules=["q_proj"])
    assert TrainConfig.from_dict(config.to_dict() | {"steps": 9, "sha256": "x"}) == config
    args = make_parser().parse_args(
        ["--data", "d", "--out", "o", "--max-steps", "3", "--target-modules", "q_proj,v_proj"]
    )
    assert args.max_steps == 3 and args.target_modules == "q_proj,v_proj" and args.lr == 2e-4
    assert args.base is None and args.max_length is None and args.resume is False
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--data", "d", "--out", "o", "--max-steps", "3", "--epochs", "2"])


def test_lora_steps_lower_the_loss_and_touch_only_the_adapter(
    release: Path, tmp_path: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from training import sft

    models = []  # the model train() builds, to look at after training

    def keep(model, config):
        models.append(sft_add_lora(model, config))
        return models[-1]

    sft_add_lora = sft.add_lora
    monkeypatch.setattr(sft, "add_lora", keep)
    seen: list[Progress] = []
    result = train(tiny_config(release, tmp_path / "run", tiny_base), on_progress=seen.append)

    assert not result.stopped and result.steps == 6
    assert [s for s, _ in result.losses] == [1, 2, 3, 4, 5, 6]
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < first - 0.05, result.losses
    assert [p.step for p in seen if not p.message] == [1, 2, 3, 4, 5, 6]
    assert seen[-1].message == "Done" and seen[-1].total_steps == 6
    assert all(p.tokens_per_s > 0 for p in seen if not p.message)
    assert result.tokens_per_s > 0 and result.valid_loss is not None

    # The adapter moved away from its start (B = 0) and was saved as trained; the trained
    # model's base weights are still those on disk.
    [model] = models
    adapter = adapter_tensors(result.adapter_dir)
    b_weights = [w for name, w in adapter.items() if "lora_B" in name]
    assert len(b_weights) == 2 * 4  # 2 layers, q/k/v/o
    assert all(w.abs().sum() > 0 for w in b_weights)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert result.config["trainable_parameters"] == sum(p.numel() for p in trained.values())
    live = {n.replace(".default", ""): p.detach() for n, p in trained.items()}
    assert set(live) == set(adapter)
    assert all((live[n] == adapter[n]).all() for n in adapter)
    before = load_file(tiny_base / "model.safetensors")
    after = model.unload().state_dict()  # LoRA layers taken out, nothing merged
    assert set(before) <= set(after)
    for name, weight in before.items():
        assert (after[name] == weight).all(), name

    saved = json.loads((result.adapter_dir / "training_config.json").read_text())
    assert saved["base"] == str(tiny_base)
    assert saved["max_length"] == result.config["max_length"] >= 64
    assert saved["strategy_tags"] is True
    assert saved["release"] == {"name": "r-test", "checksum": "abc123"}
    assert len(saved["data_files"]["train"]["sha256"]) == 64
    assert saved["data_files"]["train"]["examples"] == len(DIALOGUES)
    assert set(saved["packages"]) == {"torch", "transformers", "peft", "accelerate"}
    assert saved["steps"] == 6 and saved["seed"] == 0
    assert not (tmp_path / "run" / "checkpoints").exists()  # save_every=0


def test_stop_checkpoints_and_resume_equals_an_uninterrupted_run(
    release: Path, tmp_path: Path, tiny_base: Path
) -> None:
    """Claim tested: a run stopped at step 3 and resumed ends with the same losses and the same
    adapter (to float rounding) as one that never stopped."""
    import torch

    whole = train(tiny_config(release, tmp_path / "whole", tiny_base, save_every=2))
    kept = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())
    assert kept == ["step-2", "step-4"]  # none at the last step: the adapter is the result

    config = tiny_config(release, tmp_path / "split", tiny_base, save_every=2)
    steps: list[int] = []
    stopped = train(
        config,
        on_progress=lambda p: steps.append(p.step) if not p.message else None,
        should_stop=lambda: bool(steps) and steps[-1] >= 3,
    )
    assert stopped.stopped and stopped.steps == 3
    assert stopped.adapter_dir == tmp_path / "split" / "checkpoints" / "step-3"
    assert latest_checkpoint(tmp_path / "split") == stopped.adapter_dir
    for name in ("adapter_model.safetensors", "trainer_state.pt", "state.json"):
        assert (stopped.adapter_dir / name).is_file()
    assert json.loads((stopped.adapter_dir / "state.json").read_text())["step"] == 3
    assert not (tmp_path / "split" / "adapter").exists()

    steps.clear()
    config.resume = True
    resumed = train(config, on_progress=lambda p: steps.append(p.step) if not p.message else None)
    assert steps == [4, 5, 6]
    assert not resumed.stopped and resumed.steps == 6
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(whole.losses, resumed.losses, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    expected, got = adapter_tensors(whole.adapter_dir), adapter_tensors(resumed.adapter_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)


def test_resume_refuses_changed_data(release: Path, tmp_path: Path, tiny_base: Path) -> None:
    config = tiny_config(release, tmp_path / "run", tiny_base, max_steps=2)
    train(config, should_stop=lambda: True)
    write_jsonl(release / "sft" / "train.jsonl", DIALOGUES[:4])
    config.resume = True
    with pytest.raises(ValueError, match="training data"):
        train(config)


def test_command_line_writes_the_adapter_and_its_card(
    release: Path, tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.sft import main

    out = tmp_path / "run"
    args = ["--data", str(release), "--out", str(out), "--base", str(tiny_base)]
    assert main([*args, "--max-steps", "2", "--batch-size", "3", "--max-length", "64"]) == 0
    printed = capsys.readouterr().out
    assert "step 2/2" in printed and "adapter:" in printed
    card = (out / "adapter" / "README.md").read_text()
    assert "r-test" in card and "abc123" in card and "| max_length | 64 |" in card
    assert "## Safety" in card
    saved = json.loads((out / "adapter" / "training_config.json").read_text())
    assert saved["batch_size"] == 3 and saved["max_steps"] == 2
