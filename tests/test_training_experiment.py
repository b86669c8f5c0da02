"""The ablation (training.experiment): intervals and paired comparisons on hand-made replies, and
the whole command on the tiny model with every arm trained to the same budget."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from tests.test_training_completion_loss import release  # noqa: F401  (sft/ and sft_dri/)
from tests.test_training_sft import (  # noqa: F401  (fixtures)
    DIALOGUES,
    smollm2_folder,
    tiny_base,
    tokenizer,
)
from training import experiment
from training import metrics as m

REFERENCES = [
    "That sounds really hard. What happened at work today?",
    "You have been carrying this for a long time.",
    "It makes sense that you feel tired after all of that.",
    "Would it help to talk about what you could try next?",
] * 10  # 40 turns


def run(replies: list[str]) -> experiment.Run:
    return experiment.Run(replies, [2.0] * len(replies), [4] * len(replies))


def test_an_arm_gets_the_esconv_metrics_with_intervals_around_them():
    good = [ref.replace("really", "very") for ref in REFERENCES]
    summary = experiment.summarise(REFERENCES, {"base": [run(good)]})
    found = summary["base"]
    expected = m.esconv_scores(good, REFERENCES)
    for key, value in expected.items():
        assert found["metrics"][key] == pytest.approx(value, abs=1e-3), key
        low, high = found["ci"][key]
        # Distinct-n too: a draw repeats replies and lowers it, and the centring undoes that.
        assert low <= found["metrics"][key] <= high, key
    assert found["metrics"]["perplexity"] == pytest.approx(1.6487, abs=1e-4)  # exp(2 / 4)
    assert found["versus"] == {}  # nothing to compare with


def test_a_clear_difference_is_significant_and_identical_arms_are_not():
    poor = ["I see."] * len(REFERENCES)
    close = [ref.replace("really", "very") for ref in REFERENCES]
    summary = experiment.summarise(
        REFERENCES, {"base": [run(poor)], "sft": [run(close)], "sft_dri": [run(close)]}
    )
    better = summary["sft"]["versus"]["base"]["bleu-2"]
    assert better["difference"] > 30 and better["ci"][0] > 0 and better["p"] < 0.01
    same = summary["sft_dri"]["versus"]["sft"]["rouge-l"]
    assert same["difference"] == 0 and same["p"] == 1.0
    assert set(summary["sft_dri"]["versus"]) == {"base", "sft"}


def test_seeds_are_averaged_on_every_draw():
    half = [ref if i % 2 else "I see." for i, ref in enumerate(REFERENCES)]
    one, two = run(REFERENCES), run(half)
    both = experiment.summarise(REFERENCES, {"sft": [one, two]})["sft"]["metrics"]
    apart = [experiment.summarise(REFERENCES, {"sft": [r]})["sft"]["metrics"] for r in (one, two)]
    for key in ("rouge-l", "unigram-f1", "length", "bleu-4"):
        assert both[key] == pytest.approx((apart[0][key] + apart[1][key]) / 2, abs=1e-3), key


def test_an_empty_test_split_is_refused():
    with pytest.raises(ValueError, match="test split is empty"):
        experiment.summarise([], {"base": [run([])]})


def test_the_command_trains_every_arm_to_the_same_budget_and_writes_its_report(
    release: Path,  # noqa: F811
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
    capsys,
):
    out = tmp_path / "out"
    argv = ["--data", str(release), "--out", str(out), "--arms", "base,sft,sft_dri"]
    argv += ["--base", str(tiny_base), "--epochs", "1", "--max-new-tokens", "4", "--seeds", "2"]
    assert experiment.main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"base", "sft", "sft_dri"}
    turns = sum(1 for d in DIALOGUES[1:3] for msg in d["messages"] if msg["role"] == "assistant")
    assert report["replies_scored"] == turns
    # Epochs count over the sft chats: sft_dri, with more examples, gets no more steps.
    steps = experiment.matched_steps(release, 1.0, 4)
    assert report["budget"]["steps"] == steps == math.ceil(len(DIALOGUES) / 4)  # batches of 4
    for arm in ("sft", "sft_dri"):
        budget = report["arms"][arm]["budget"]
        assert [b["seed"] for b in budget] == [0, 1]
        assert all(b["steps"] == steps and b["tokens_seen"] > 0 for b in budget)
    for found in report["arms"].values():  # its references are tagged: strategy accuracy too
        assert set(found["metrics"]) == set(experiment.METRICS)
        assert all(len(found["ci"][key]) == 2 for key in experiment.METRICS)
    assert set(report["arms"]["sft"]["versus"]) == {"base"}
    assert report["decoding"] == {"kind": "greedy", "max_new_tokens": 4}

    lines = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(lines) == turns
    assert {"id", "turn", "context", "reference", "base", "sft", "sft_dri"} <= set(lines[0])
    assert "<table>" in (out / "report.html").read_text()
    assert "arm sft_dri bleu-1=" in capsys.readouterr().out


def test_the_command_refuses_an_unknown_arm(release: Path, tmp_path: Path, capsys):  # noqa: F811
    argv = ["--data", str(release), "--out", str(tmp_path / "o"), "--arms", "base,teacher2"]
    assert experiment.main(argv) == 2
    assert "unknown arm" in capsys.readouterr().err


def test_the_teacher_answers_the_same_turns_through_the_teacher_seam(
    release: Path,  # noqa: F811
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
):
    from generation.teacher import HttpTeacher
    from tests.fake_teacher import FakeTeacher

    with FakeTeacher() as fake:
        teacher = HttpTeacher(fake.url, "fake-teacher", api_key="sk-test")
        report = experiment.run_experiment(
            release, tmp_path / "out", arms=["base", "teacher"], base=str(tiny_base),
            teacher=teacher, max_new_tokens=4, log=lambda line: None,
        )  # fmt: skip
        asked = [body["messages"] for body in fake.requests]
    lines = [json.loads(x) for x in (tmp_path / "out" / "replies.jsonl").read_text().splitlines()]
    assert len(asked) == report["replies_scored"] == len(lines)
    # Every request is a scored turn's context as the student sees it, greedy, capped.
    contexts = [msgs[-1]["content"] for msgs in asked]
    assert sorted(contexts) == sorted(line["context"][-1].split(": ", 1)[1] for line in lines)
    assert all(body["temperature"] == 0 and body["max_tokens"] == 4 for body in fake.requests)
    assert all(line["teacher"] and line["teacher"] != line["base"] for line in lines)
    found = report["arms"]["teacher"]
    assert found["metrics"]["perplexity"] is None and found["ci"]["perplexity"] == [None, None]
    assert found["metrics"]["rouge-l"] > 0 and "perplexity" not in found["versus"]["base"]
    assert report["teacher"] == {"backend": "http", "model": "fake-teacher"}


def test_the_teacher_arm_needs_a_teacher(release: Path, tmp_path: Path, capsys):  # noqa: F811
    argv = ["--data", str(release), "--out", str(tmp_path / "o"), "--arms", "base,teacher"]
    assert experiment.main(argv) == 2
    assert "--teacher-url" in capsys.readouterr().err


def test_progress_walks_every_stage_and_a_stop_ends_the_run(
    release: Path,  # noqa: F811
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
):
    seen: list[experiment.Progress] = []
    experiment.run_experiment(
        release, tmp_path / "a", arms=["base", "sft"], base=str(tiny_base), max_steps=2,
        max_new_tokens=2, batch_size=2, on_progress=seen.append, log=lambda line: None,
    )  # fmt: skip
    labels = list(dict.fromkeys(p.label for p in seen))
    assert labels == ["base: replies", "sft seed 0: training", "sft seed 0: replies"]
    assert all(p.stages == 3 for p in seen)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    replies = [p.done for p in seen if p.label == "base: replies" and p.total]
    assert replies[0] == 0 and all(0 < b - a <= 2 for a, b in itertools.pairwise(replies))  # by 2s
    assert replies[-1] == max(p.total for p in seen if p.label == "base: replies")

    calls = []

    def stop_after_training_starts() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(experiment.Stopped):
        experiment.run_experiment(
            release, tmp_path / "b", arms=["sft"], base=str(tiny_base), max_steps=50,
            should_stop=stop_after_training_starts, log=lambda line: None,
        )  # fmt: skip
    assert not (tmp_path / "b" / "report.json").exists()


def test_strategy_accuracy_is_scored_when_every_reference_is_tagged():
    tagged = [f"[Question] {ref}" for ref in REFERENCES]
    half = [f"[{'Question' if i % 2 else 'Affirmation'}] {r}" for i, r in enumerate(REFERENCES)]
    summary = experiment.summarise(tagged, {"base": [run(half)], "sft": [run(tagged)]})
    assert summary["base"]["metrics"]["strategy-accuracy"] == 50.0
    assert summary["sft"]["metrics"]["strategy-accuracy"] == 100.0
    assert summary["sft"]["metrics"]["rouge-l"] == pytest.approx(100.0)  # tags are not text
    assert (
        "strategy-accuracy"
        not in experiment.summarise(REFERENCES, {"base": [run(REFERENCES)]})["base"]["metrics"]
    )


def test_the_sft_dpo_arm_trains_sft_then_dpo_from_it_and_is_compared_with_sft(
    release: Path,  # noqa: F811
    tmp_path: Path,
    tiny_base: Path,  # noqa: F811
):
    from tests.test_training_dpo import PAIRS, write_jsonl

    write_jsonl(release / "dpo" / "train.jsonl", PAIRS)
    seen: list[tuple[str, int, int]] = []
    report = experiment.run_experiment(
        release,
        tmp_path / "out",
        arms=["sft", "sft_dpo"],
        base=str(tiny_base),
        max_steps=2,
        dpo={"max_steps": 3, "learning_rate": 1e-2},
        decoding=experiment.Decoding(max_new_tokens=4),
        log=lambda line: None,
        on_progress=lambda p: seen.append((p.label, p.done, p.total)),
    )
    [budget] = report["arms"]["sft_dpo"]["budget"]
    assert (budget["steps"], budget["dpo_steps"]) == (2, 3)  # the sft arm's steps, then DPO's
    assert report["arms"]["sft"]["budget"][0]["steps"] == 2
    assert set(report["arms"]["sft_dpo"]["versus"]) == {"sft"}
    training = [(done, total) for label, done, total in seen if label == "sft_dpo seed 0: training"]
    assert training[-1] == (5, 5), "the bar runs over both stages"
    dpo_adapter = tmp_path / "out" / "sft_dpo-seed0" / "dpo" / "adapter"
    config = json.loads((dpo_adapter / "training_config.json").read_text())
    # The SFT stage is the sft arm's own adapter (same data, steps and seed), trained once.
    assert config["start_adapter"]["path"] == str(tmp_path / "out" / "sft-seed0" / "adapter")
    assert not (tmp_path / "out" / "sft_dpo-seed0" / "adapter").exists()
    assert (
        report["arms"]["sft_dpo"]["budget"][0]["tokens_seen"]
        == (report["arms"]["sft"]["budget"][0]["tokens_seen"])
    )
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "replies.jsonl").read_text().splitlines()
    ]
    assert {"sft", "sft_dpo"} <= set(lines[0])
