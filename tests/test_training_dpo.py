"""training.dpo on a tiny random Llama (2 layers, 32 wide) with the real SmolLM2 tokenizer and
chat template, and eight hand-made preference pairs in a release's dpo/ layout."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests import test_training_sft
from training.data import sha256_file
from training.dpo import (
    BadPairs,
    DPOTrainConfig,
    even_batch,
    main,
    make_parser,
    preference_figures,
    read_pairs,
    train_dpo,
)
from training.sft import Progress

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a warm, careful emotional-support listener."


def pair(user: str, chosen: str, rejected: str) -> dict[str, Any]:
    """A release line (curation.releases.build._pair): the chat so far, then two replies."""
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "scenario": "Work stress",
        "id": f"d-{user[:8]}-rank-1",
    }


PAIRS = [
    pair("I failed my exam today.", "That sounds really disappointing.", "Study harder."),
    pair("My boss shouted at me.", "Being shouted at hurts. How are you?", "Bosses do that."),
    pair("I can't sleep lately.", "Restless nights wear you down.", "Try counting sheep."),
    pair("My best friend moved away.", "Missing someone close is lonely.", "Make new friends."),
    pair("I'm nervous about my interview.", "Nerves show it matters to you.", "Don't be."),
    pair("Nobody remembered my birthday.", "That must have felt invisible.", "It's just a day."),
    pair("I feel stuck at work.", "Feeling stuck is exhausting. What weighs most?", "Quit then."),
    pair("My cat is sick.", "I'm sorry, worrying about a pet is hard.", "Cats get sick."),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    write_jsonl(folder / "dpo" / "train.jsonl", PAIRS)
    write_jsonl(folder / "dpo" / "valid.jsonl", PAIRS[:4])
    (folder / "manifest.json").write_text(json.dumps({"release": "r-dpo", "checksum": "abc123"}))
    return folder


# Session fixtures shared with tests/test_training_sft.py (one tiny model for the whole run).
smollm2_folder = test_training_sft.smollm2_folder
tokenizer = test_training_sft.tokenizer
tiny_base = test_training_sft.tiny_base

# lr 1e-2: a random 32-wide model needs large steps to move in a few updates. 3 steps: the first
# one's learning rate is 0 (transformers' warm-up starts there).
TINY = ["--max-steps", "3", "--batch-size", "2", "--learning-rate", "1e-2", "--save-every", "0"]


def adapter_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


class FreshRun:
    """The command line run from a fresh LoRA, shared by the tests that look at its results."""

    def __init__(self, out: Path, printed: str, base_model: Any, base_sha: str) -> None:
        self.out, self.printed, self.base_model, self.base_sha = out, printed, base_model, base_sha


@pytest.fixture(scope="module")
def fresh_run(release: Path, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshRun:
    from training import dpo

    models: list[Any] = []  # the base model train_dpo loads, to look at after training

    def keep(base: str, device: str) -> Any:
        models.append(load_model(base, device))
        return models[-1]

    load_model = dpo.load_model
    base_sha = sha256_file(tiny_base / "model.safetensors")
    out = tmp_path_factory.mktemp("fresh") / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(dpo, "load_model", keep)
        args = ["--data", str(release), "--out", str(out), "--base", str(tiny_base), *TINY]
        assert main(args) == 0
    [model] = models
    return FreshRun(out, printed.getvalue(), model, base_sha)


# ---- data --------------------------------------------------------------------------------------


def test_pairs_are_read_as_a_release_writes_them(release: Path, tmp_path: Path) -> None:
    pairs = read_pairs(release / "dpo" / "train.jsonl")
    assert len(pairs) == 8 and set(pairs[0]) == {"prompt", "chosen", "rejected"}
    assert pairs[0]["chosen"] == [
        {"role": "assistant", "content": "That sounds really disappointing."}
    ]
    text = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "Hi", "chosen": "A", "rejected": "B"}])
    assert read_pairs(text) == [{"prompt": "Hi", "chosen": "A", "rejected": "B"}]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": PAIRS[0]["prompt"], "chosen": PAIRS[0]["chosen"]}, "missing 'rejected'"),
        (PAIRS[0] | {"chosen": "That sounds hard."}, "'chosen' must be a list of one assistant"),
        (
            PAIRS[0] | {"rejected": [{"role": "user", "content": "x"}]},
            "'rejected' must be an assistant message",
        ),
        (PAIRS[0] | {"prompt": []}, "'prompt' must be a non-empty list"),
        (
            PAIRS[0] | {"prompt": [{"role": "user", "content": 3}]},
            "prompt \\+ chosen: message 0: content must be a string",
        ),
        ({"prompt": "Hi", "chosen": "A", "rejected": ["B"]}, "'rejected' must be a non-empty str"),
        ([1, 2], "a pair must be a JSON object"),
        ({"prompt": "Hi", "chosen": "A", "rejected": "B"}, "a text pair after chat ones"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, line: Any, message: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [PAIRS[0], PAIRS[1], line])
    with pytest.raises(BadPairs, match=f"train.jsonl:3: {message}"):
        read_pairs(path)


def test_the_command_line_reports_bad_files_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "release" / "dpo"
    args = ["--data", str(tmp_path / "release"), "--out", str(tmp_path / "run"), *TINY]
    write_jsonl(folder / "train.jsonl", [PAIRS[0], {"prompt": "Hi", "chosen": "A"}])
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"{folder / 'train.jsonl'}:2: missing 'rejected'" in capsys.readouterr().err

    (folder / "train.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(args)
    assert f"{folder / 'train.jsonl'}: no pairs in the file" in capsys.readouterr().err

    (folder / "train.jsonl").write_text('{"prompt": "Hi",\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        main(args)
    assert "train.jsonl:1: not JSON" in capsys.readouterr().err

    (folder / "train.jsonl").unlink()
    with pytest.raises(SystemExit):
        main(args)
    assert "no train.jsonl in" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # all refused before a model was loaded


# ---- figures -----------------------------------------------------------------------------------


def test_even_batches_make_batch_means_pair_means() -> None:
    assert even_batch(8, 4) == 4
    assert even_batch(6, 4) == 3
    assert even_batch(7, 4) == 1
    assert even_batch(3, 8) == 3
    # Means of per-batch means equal the mean over pairs when every batch has the same size.
    values = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    size = even_batch(len(values), 4)
    batches = [values[k : k + size] for k in range(0, len(values), size)]
    assert sum(sum(b) / len(b) for b in batches) / len(batches) == sum(values) / len(values)


def test_preference_figures_come_from_trls_metrics() -> None:
    metrics = {
        "eval_rewards/accuracies": 0.75,
        "eval_rewards/margins": 0.2,
        "eval_rewards/chosen": 0.15,
        "eval_rewards/rejected": -0.05,
        "eval_loss": 0.6,
        "eval_logps/chosen": -20.0,
        "eval_logps/rejected": -25.0,
        "eval_runtime": 1.0,
    }
    assert preference_figures(metrics) == {
        "accuracy": 0.75,
        "margin": 0.2,
        "chosen_reward": 0.15,
        "rejected_reward": -0.05,
        "loss": 0.6,
        "chosen_logp": -20.0,
        "rejected_logp": -25.0,
    }
    with pytest.raises(KeyError, match="eval_rewards/margins"):
        preference_figures({k: v for k, v in metrics.items() if k != "eval_rewards/margins"})


# ---- training ----------------------------------------------------------------------------------


def test_flags() -> None:
    args = make_parser().parse_args(["--data", "d", "--out", "o", "--lr", "1e-3", "--beta", "0.2"])
    assert args.learning_rate == 1e-3 and args.beta == 0.2 and args.adapter is None
    assert make_parser().parse_args(["--data", "d", "--out", "o"]).beta == 0.1
    config = DPOTrainConfig(data="d", out="o", max_steps=3)
    assert DPOTrainConfig.from_dict(config.to_dict() | {"steps": 9}) == config
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--data", "d", "--out", "o", "--max-steps", "3", "--epochs", "2"])


def test_command_line_writes_the_adapter_config_card_and_figures(
    fresh_run: FreshRun, release: Path, tiny_base: Path
) -> None:
    adapter = fresh_run.out / "adapter"
    assert "step 3/3" in fresh_run.printed and "adapter:" in fresh_run.printed
    assert "before: accuracy=0.000 margin=+0.0000" in fresh_run.printed
    assert "after: accuracy=" in fresh_run.printed

    saved = json.loads((adapter / "training_config.json").read_text())
    assert saved["base"] == str(tiny_base) and saved["start_adapter"] is None
    assert saved["reference"] == "the base model"
    assert saved["beta"] == 0.1 and saved["learning_rate"] == 1e-2 and saved["seed"] == 0
    assert saved["steps"] == 3 and saved["total_steps"] == 3 and saved["batch_size"] == 2
    assert saved["max_length"] == 512  # the tiny model's context
    assert saved["release"] == {"name": "r-dpo", "checksum": "abc123"}
    train = saved["data_files"]["train"]
    assert train["path"] == str((release / "dpo" / "train.jsonl").resolve())
    assert train["sha256"] == sha256_file(release / "dpo" / "train.jsonl")
    assert train["pairs"] == train["pairs_kept"] == 8
    assert saved["data_files"]["valid"]["pairs"] == 4
    assert {"trl", "datasets", "torch", "peft"} <= set(saved["packages"])

    figures = json.loads((adapter / "eval.json").read_text())
    assert figures["pairs"] == 4 and figures["beta"] == 0.1
    before, after = figures["before"], figures["after"]
    # A fresh LoRA starts at B = 0: the policy is the reference, every reward exactly 0.
    assert before["margin"] == before["chosen_reward"] == before["rejected_reward"] == 0.0
    assert before["accuracy"] == 0.0  # ties count as wrong
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert after["margin"] > 0 and after["loss"] < before["loss"]
    assert saved["valid_before"] == before and saved["valid_after"] == after

    card = (adapter / "README.md").read_text()
    assert "r-dpo" in card and "abc123" in card and "| beta | 0.1 |" in card
    assert "## Preference training (DPO)" in card and "reference model was the base" in card
    assert "| margin | 0 |" in card and "## Safety" in card
    assert "Data variant" not in card and "- Data: DPO pairs" in card


def test_only_the_adapter_trains(fresh_run: FreshRun, tiny_base: Path) -> None:
    from safetensors.torch import load_file

    adapter = adapter_tensors(fresh_run.out / "adapter")
    b_weights = [w for name, w in adapter.items() if "lora_B" in name]
    assert len(b_weights) == 2 * 4  # 2 layers, q/k/v/o
    assert all(w.abs().sum() > 0 for w in b_weights)  # a fresh LoRA has B = 0
    assert all("lora_" in name for name in adapter)  # nothing of the base was saved

    # The base on disk is untouched, and so are the base weights of the trained model in memory.
    assert sha256_file(tiny_base / "model.safetensors") == fresh_run.base_sha
    before = load_file(tiny_base / "model.safetensors")
    after = {
        name.replace(".base_layer", ""): w
        for name, w in fresh_run.base_model.state_dict().items()
        if "lora_" not in name
    }
    assert set(before) <= set(after)
    for name, weight in before.items():
        assert (after[name] == weight).all(), name


def test_from_an_sft_adapter_the_reference_is_the_sft_model(
    fresh_run: FreshRun, release: Path, tiny_base: Path, tmp_path: Path
) -> None:
    """Claim tested: with --adapter, the reference is base + that adapter, not the base. Before
    training the policy is that same model, so every reward is exactly 0; were the reference the
    base, the rewards would be the SFT adapter's change of log-probability, which is not 0."""
    from training.sft import TrainConfig, train

    # An SFT adapter of one step (lr 1e-2: its B matrices move off zero).
    chats = [{"messages": [*p["prompt"], *p["chosen"]]} for p in PAIRS]
    write_jsonl(tmp_path / "sft" / "train.jsonl", chats)
    sft = train(
        TrainConfig(
            data=str(tmp_path / "sft"),
            out=str(tmp_path / "sft-run"),
            base=str(tiny_base),
            max_steps=1,
            lr=1e-2,
            batch_size=4,
            save_every=0,
        )
    )
    start = adapter_tensors(sft.adapter_dir)
    assert all(w.abs().sum() > 0 for name, w in start.items() if "lora_B" in name)
    start_sha = sha256_file(sft.adapter_dir / "adapter_model.safetensors")

    # No --base: the base the adapter was trained on.
    config = DPOTrainConfig(
        data=str(release / "dpo"),
        out=str(tmp_path / "dpo-run"),
        adapter=str(sft.adapter_dir),
        max_steps=3,
        batch_size=2,
        learning_rate=1e-2,
        save_every=0,
    )
    result = train_dpo(config)
    assert not result.stopped and result.before is not None and result.after is not None
    before, after = result.before, result.after
    assert before["margin"] == before["chosen_reward"] == before["rejected_reward"] == 0.0
    # The SFT policy gives the replies other log-probabilities than the base does...
    base_before = json.loads((fresh_run.out / "adapter" / "eval.json").read_text())["before"]
    assert before["chosen_logp"] != pytest.approx(base_before["chosen_logp"], abs=1e-3)
    # ...and the rewards move once the policy leaves it.
    assert after["margin"] != 0.0

    saved = result.config
    assert saved["base"] == str(tiny_base)
    assert saved["start_adapter"]["sha256"] == start_sha
    assert saved["reference"] == "the start adapter (frozen copy)"
    assert sha256_file(sft.adapter_dir / "adapter_model.safetensors") == start_sha
    # The trained adapter continues the SFT one (same tensors, new values); the frozen "ref"
    # copy is not saved.
    trained = adapter_tensors(result.adapter_dir)
    assert trained.keys() == start.keys()
    assert any((trained[n] != start[n]).any() for n in start)
    assert not (result.adapter_dir / "ref").exists()
    assert "which was also the reference model" in (result.adapter_dir / "README.md").read_text()


def test_stop_checkpoints_and_resume_finishes_the_run(
    release: Path, tiny_base: Path, tmp_path: Path
) -> None:
    config = DPOTrainConfig(
        data=str(release),
        out=str(tmp_path / "run"),
        base=str(tiny_base),
        max_steps=3,
        batch_size=2,
        learning_rate=1e-2,
        save_every=0,
        no_validation=True,
    )
    seen: list[Progress] = []
    stopped = train_dpo(
        config,
        on_progress=seen.append,
        should_stop=lambda: any(p.step >= 1 and not p.message for p in seen),
    )
    assert stopped.stopped and stopped.steps == 1
    assert stopped.adapter_dir == tmp_path / "run" / "checkpoints" / "checkpoint-1"
    assert (stopped.adapter_dir / "adapter_model.safetensors").is_file()
    assert [(p.step, p.message) for p in seen][-2:] == [(1, ""), (1, "Stopped")]
    assert seen[-2].loss is not None and seen[-2].total_steps == 3
    assert not (tmp_path / "run" / "adapter").exists()

    changed = DPOTrainConfig.from_dict(config.to_dict() | {"resume": True, "beta": 0.5})
    with pytest.raises(ValueError, match="changed since: beta"):
        train_dpo(changed)

    seen.clear()
    config.resume = True
    resumed = train_dpo(config, on_progress=seen.append)
    assert not resumed.stopped and resumed.steps == 3
    assert seen[1].message.startswith("Resumed at") and seen[1].step == 1
    assert [p.step for p in seen if not p.message] == [2, 3]
    assert [s for s, _ in resumed.losses] == [1, 2, 3]
    assert (resumed.adapter_dir / "training_config.json").is_file()
    assert resumed.before is None and not (resumed.adapter_dir / "eval.json").exists()
