"""training.evaluate and training.card on the tiny random Llama of test_training_sft."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.test_training_sft import (  # noqa: F401 (fixtures)
    DIALOGUES,
    chat,
    release,
    smollm2_folder,
    tiny_base,
    tiny_config,
    tokenizer,
    write_jsonl,
)
from training.card import write_model_card
from training.evaluate import Sample, compare, evaluate, main, replies_to_score, score
from training.metrics import esconv_bleu_from_statistics
from training.sft import train

# Two test dialogues, three supporter turns; one text tries to break out of the HTML report.
TEST = [
    DIALOGUES[1],
    chat("<script>alert('hi')</script> I feel awful.", "I'm here & listening."),
]


@pytest.fixture
def adapter(release: Path, tmp_path: Path, tiny_base: Path) -> Path:  # noqa: F811
    write_jsonl(release / "sft" / "test.jsonl", TEST)
    return train(tiny_config(release, tmp_path / "run", tiny_base, max_steps=2)).adapter_dir


def test_student_against_base_writes_files_and_the_card(
    release: Path,  # noqa: F811
    adapter: Path,
    tiny_base: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[tuple[int, int]] = []
    base = evaluate(
        release,
        base=str(tiny_base),
        max_new_tokens=6,
        out_dir=tmp_path / "base",
        on_progress=lambda d, t: calls.append((d, t)),
        batch_size=2,
    )
    assert calls == [(0, 3), (2, 3), (3, 3)]  # after every batch of replies
    assert base["metrics"]["samples"] == 3
    # The per-reply scores add up to the corpus metrics (what training.noise resamples).
    scores = [s["scores"] for s in base["samples"]]
    nll, tokens = sum(s["nll"] for s in scores), sum(s["tokens"] for s in scores)
    assert math.exp(nll / tokens) == pytest.approx(base["metrics"]["perplexity"], rel=1e-5)
    summed = np.sum([s["bleu"] for s in scores], axis=0)
    assert esconv_bleu_from_statistics(summed, 4)[0] == pytest.approx(base["metrics"]["bleu-4"])
    rouge = [s["rouge_l"] for s in scores]
    assert sum(rouge) / 3 == pytest.approx(base["metrics"]["rouge-l"])
    assert all(s["convention"] == "esconv" for s in scores)
    assert "strategy-accuracy" not in base["metrics"]  # no adapter trained on tags
    assert base["model"] == {"base": str(tiny_base), "adapter": None}

    code = main(
        [
            "--data", str(release),
            "--adapter", str(adapter),
            "--max-new-tokens", "6",
            "--out", str(tmp_path / "student"),
            "--compare", f"base={tmp_path / 'base' / 'metrics.json'}",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "perplexity (lower is better)" in printed and "this run" in printed

    result = json.loads((tmp_path / "student" / "metrics.json").read_text())
    metrics = result["metrics"]
    assert result["model"]["base"] == str(tiny_base)  # taken from the adapter's config
    assert metrics["samples"] == 3 and len(result["samples"]) == 3
    assert 0.0 <= metrics["strategy-accuracy"] <= 100.0
    for key in ("bleu-1", "bleu-2", "bleu-4", "rouge-l", "distinct-1", "distinct-3", "unigram-f1"):
        assert 0.0 <= metrics[key] <= 100.0, key
    first = result["samples"][0]
    assert first["context"] == [
        "system: You are a warm, careful emotional-support listener.",
        "user: My boss shouted at me in front of everyone.",
    ]
    assert first["reference"] == "[Reflection of Feelings] Being humiliated in public hurts a lot."
    assert isinstance(first["reply"], str)

    page = (tmp_path / "student" / "report.html").read_text()
    assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt;" in page
    assert "<script>" not in page and "I&#x27;m here &amp; listening." in page

    card = (adapter / "README.md").read_text()
    assert "| Strategy accuracy (%) |" in card and "| BLEU-4 |" in card

    # Perplexity is that of the references under the student, by the training loss's mask.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.data import encode_chat
    from training.sft import mean_loss

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
    encoded = [encode_chat(tok, e["messages"]) for e in TEST]
    loss = mean_loss(model, encoded, 2, tok.pad_token_id, "cpu")
    assert metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert metrics["perplexity"] != pytest.approx(base["metrics"]["perplexity"], rel=1e-6)


def test_an_empty_test_split_is_refused_before_any_model_loads(
    release: Path,  # noqa: F811
    tiny_base: Path,  # noqa: F811
) -> None:
    (release / "sft" / "test.jsonl").write_text("")
    assert replies_to_score(release) == 0
    with pytest.raises(ValueError, match="holds no test dialogues: there is nothing to evaluate"):
        evaluate(release, base=str(tiny_base))
    write_jsonl(release / "sft" / "test.jsonl", TEST)
    assert replies_to_score(release) == 3


def test_limit_keeps_the_first_turns(release: Path, tiny_base: Path) -> None:  # noqa: F811
    write_jsonl(release / "sft" / "test.jsonl", TEST)
    result = evaluate(release / "sft", base=str(tiny_base), limit=2, max_new_tokens=4)
    assert [(s["id"], s["turn"]) for s in result["samples"]] == [
        (TEST[0]["id"], 2),
        (TEST[0]["id"], 4),
    ]
    assert result["metrics"]["samples"] == 2


def test_score_by_hand() -> None:
    def sample(reference: str, reply: str) -> Sample:
        return Sample(0, 1, [], reference, reply)

    samples = [
        sample("[Question] How did that feel?", "[Question] How did that feel?"),
        sample("[Affirmation] You did well.", "You did well."),
    ]
    # Tags are dropped before the text metrics, so both replies equal their references.
    result = score(samples, with_tags=True)
    assert result["bleu-4"] == pytest.approx(100.0)
    assert result["unigram-f1"] == 100.0 and result["rouge-l"] == pytest.approx(100.0)
    assert result["strategy-accuracy"] == 50.0  # the second reply has no tag
    assert result["length"] == 4.5  # "how did that feel ?" and "you did well ."
    assert "strategy-accuracy" not in score(samples, with_tags=False)


def test_compare_lays_out_base_and_students() -> None:
    table = compare(
        {
            "base": {"metrics": {"bleu1": 0.1, "perplexity": 30.0}},
            "student": {"bleu1": 0.25, "perplexity": 12.5, "strategy_accuracy": 0.4},
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "student"]
    assert lines[1].split() == ["bleu1", "0.1000", "0.2500"]
    assert lines[2].split() == ["perplexity", "(lower", "is", "better)", "30.0000", "12.5000"]
    assert lines[3].split() == ["strategy_accuracy", "-", "0.4000"]


def test_model_card(tmp_path: Path) -> None:
    path = write_model_card(
        tmp_path,
        base="var/models/smollm2-135m-instruct",
        release_name="r-2026-11",
        release_checksum="f00d",
        variant="sft_dri",
        hyperparameters={"lr": 0.0002, "target_modules": ["q_proj", "v_proj"], "note": "a|b"},
        metrics={"bleu-1": 0.21234, "perplexity": 18.5, "extra": 3},
    )
    card = path.read_text()
    assert path == tmp_path / "README.md"
    assert "r-2026-11" in card and "`f00d`" in card and "DRI" in card
    assert "| lr | 0.0002 |" in card and "| target_modules | q_proj, v_proj |" in card
    assert "| note | a\\|b |" in card
    assert (
        "| BLEU-1 | 0.2123 |" in card
        and "| Perplexity | 18.5 |" in card
        and "| extra | 3 |" in card
    )
    for section in ("## Intended use", "## Limits", "## Safety"):
        assert section in card
    bare = write_model_card(
        tmp_path, base="b", release_name=None, release_checksum=None, variant="sft",
        hyperparameters={}, metrics=None,
    ).read_text()  # fmt: skip
    assert "Not evaluated yet" in bare and "| BLEU-1 |" not in bare


def test_replies_are_written_in_batches_of_similar_length_and_kept_in_order() -> None:
    from training.evaluate import Stopped, write_replies

    lengths = [5, 40, 1, 30, 2, 50, 3]
    samples = [
        Sample(0, i, [{"role": "user", "content": "x" * n}], "ref") for i, n in enumerate(lengths)
    ]
    batches: list[list[int]] = []
    progress: list[tuple[int, int]] = []

    def write(contexts: list[list[dict[str, str]]], batch: int) -> list[str]:
        batches.append([len(c[0]["content"]) for c in contexts])
        return [f"reply to {len(c[0]['content'])}" for c in contexts]

    write_replies(samples, write, batch_size=3, on_progress=lambda d, t: progress.append((d, t)))
    assert batches == [[1, 2, 3], [5, 30, 40], [50]]  # shortest first, so little padding
    assert [s.reply for s in samples] == [f"reply to {n}" for n in lengths]
    assert progress == [(0, 7), (3, 7), (6, 7), (7, 7)]

    with pytest.raises(Stopped):
        write_replies(samples, write, batch_size=3, should_stop=lambda: len(batches) > 4)
    assert len(batches) == 5  # asked before each batch: two more, then the stop


def test_decoding_is_greedy_by_default_and_sampling_repeats_with_its_seed(
    release: Path,  # noqa: F811
    tiny_base: Path,  # noqa: F811
) -> None:
    from training.evaluate import Decoding

    write_jsonl(release / "sft" / "test.jsonl", TEST)
    greedy = evaluate(release, base=str(tiny_base), max_new_tokens=6)
    assert greedy["decoding"] == {"kind": "greedy", "max_new_tokens": 6}
    sampling = Decoding("sampling", temperature=1.5, top_p=1.0, seed=7, max_new_tokens=6)
    one, two = (evaluate(release, base=str(tiny_base), decoding=sampling) for _ in range(2))
    assert one["decoding"] == {"kind": "sampling", "max_new_tokens": 6, "temperature": 1.5,
                               "top_p": 1.0, "seed": 7}  # fmt: skip
    replies = [[s["reply"] for s in r["samples"]] for r in (greedy, one, two)]
    assert replies[1] == replies[2] and replies[1] != replies[0]
    other = evaluate(release, base=str(tiny_base), decoding=Decoding("sampling", 1.5, 1.0, 8, 6))
    assert [s["reply"] for s in other["samples"]] != replies[1]
    with pytest.raises(ValueError, match="temperature above 0"):
        Decoding("sampling", temperature=0)
    with pytest.raises(ValueError, match="greedy or sampling"):
        Decoding("beam")
