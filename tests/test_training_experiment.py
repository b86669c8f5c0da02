"""The ablation (training.experiment): intervals and paired comparisons on hand-made replies, and
the whole command on the tiny model with every arm trained to the same budget."""

from __future__ import annotations

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
        if not key.startswith("distinct"):  # a draw repeats replies: Distinct can only fall
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
    for found in report["arms"].values():
        assert set(found["metrics"]) == set(experiment.METRICS)
        assert all(len(found["ci"][key]) == 2 for key in experiment.METRICS)
    assert set(report["arms"]["sft"]["versus"]) == {"base"}
    assert report["decoding"] == {"kind": "greedy", "max_new_tokens": 4}

    lines = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(lines) == turns
    assert {"id", "turn", "reference", "base", "sft", "sft_dri"} <= set(lines[0])
    assert "<table>" in (out / "report.html").read_text()
    assert "arm sft_dri bleu-1=" in capsys.readouterr().out


def test_the_command_refuses_an_unknown_arm(release: Path, tmp_path: Path, capsys):  # noqa: F811
    argv = ["--data", str(release), "--out", str(tmp_path / "o"), "--arms", "base,teacher2"]
    assert experiment.main(argv) == 2
    assert "unknown arm" in capsys.readouterr().err
