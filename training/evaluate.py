"""Score a model's replies on a release's test dialogues, with or without a trained adapter.

    python -m training.evaluate --data var/releases/r1 --out var/eval/base
    python -m training.evaluate --data var/releases/r1 --adapter var/runs/r1-sft/adapter \\
        --out var/eval/student --compare base=var/eval/base/metrics.json

For every supporter turn of DIR/sft/test.jsonl (or DIR/test.jsonl), the model writes a reply from
the real context (greedy unless told; in batches), which is scored against the reply in the file
in the ESConv convention (BLEU-1..4, ROUGE-L, Distinct-1..3, unigram F1, length; 0-100;
training/metrics.py). Perplexity is that of the file's replies
under the model, by teacher forcing with the same mask as training. When the adapter was trained
on tagged replies ("[Question] ..."), the share of replies that open with the right tag is
reported too; tags are removed before the text metrics. --out gets metrics.json (metrics and
every sample, with its per-reply scores for training.noise) and report.html. With --adapter, its
model card is rewritten with the metrics.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import metrics as m
from training import noise
from training.common import HEAD_CHUNK, offline, resolve_base
from training.data import IGNORE, collate, data_folder, encode_chat, read_examples, split_tag

BATCH = 8  # dialogues scored together by teacher forcing
REPLY_BATCH = 8  # replies generated together (about twice as fast as one by one on 2 CPU cores)
LOWER_IS_BETTER = {"perplexity"}


@dataclass(frozen=True)
class Greedy:
    """Sampling settings in the shape generation.localmodel.LocalRunner takes."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Decoding:
    """How replies are written, as recorded in a report: greedy (the default) or sampling with
    a seed. A batch's seed is `seed` plus the batch's index, so a run repeats exactly."""

    kind: str = "greedy"  # "greedy" | "sampling"
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "sampling"):
            raise ValueError(f"decoding: greedy or sampling, not {self.kind!r}")
        if self.kind == "sampling" and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("sampling needs a temperature above 0 and top_p in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: at least 1")

    def settings(self, batch: int = 0) -> Greedy:
        """The settings for the batch with this index."""
        if self.kind == "greedy":
            return Greedy(self.max_new_tokens)
        return Greedy(self.max_new_tokens, self.temperature, self.top_p, self.seed + batch)

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.kind, "max_new_tokens": self.max_new_tokens}
        if self.kind == "sampling":
            found |= {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decoding:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Sample:
    example: int
    turn: int
    context: list[dict[str, str]]
    reference: str  # as written in the file, tag included
    reply: str = ""
    nll: float | None = None  # of the reference under the model, summed over its tokens
    tokens: int | None = None


def supporter_turns(examples: list[dict[str, Any]], limit: int | None = None) -> list[Sample]:
    """One sample per assistant turn, in file order; `limit` keeps the first ones."""
    samples = [
        Sample(k, i, example["messages"][:i], message["content"])
        for k, example in enumerate(examples)
        for i, message in enumerate(example["messages"])
        if message["role"] == "assistant"
    ]
    return samples[:limit] if limit is not None else samples


def _test_path(data_dir: str | Path) -> Path:
    return data_folder(data_dir, "sft", "test") / "test.jsonl"


def replies_to_score(data_dir: str | Path) -> int:
    """How many supporter turns the test split holds (0 for an empty split or a missing file)."""
    try:
        path = _test_path(data_dir)
    except FileNotFoundError:
        return 0
    return len(supporter_turns(read_examples(path)))


def evaluate(
    data_dir: str | Path,
    base: str | None = None,
    adapter: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    out_dir: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    decoding: Decoding | None = None,
    batch_size: int = REPLY_BATCH,
    should_stop: Callable[[], bool] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Generate and score; returns what metrics.json holds: {"model", "data", "decoding",
    "metrics", "samples"}. `decoding` overrides `max_new_tokens` (default greedy). Replies are
    written `batch_size` at a time, and `on_progress(done, total)` is called before the first
    and after each batch; `should_stop()` is asked between batches (then Stopped is raised)."""
    offline()
    decoding = decoding or Decoding(max_new_tokens=max_new_tokens)
    path = _test_path(data_dir)
    examples = read_examples(path)
    samples = supporter_turns(examples, limit)
    if not samples:
        raise ValueError(f"{path} holds no test dialogues: there is nothing to evaluate on")
    trained: dict[str, Any] = {}
    if adapter is not None and (Path(adapter) / "training_config.json").is_file():
        trained = json.loads((Path(adapter) / "training_config.json").read_text(encoding="utf-8"))
    base = resolve_base(base or trained.get("base"))
    runner = _load(base, adapter, device)

    def write(contexts: list[list[dict[str, str]]], batch: int) -> list[str]:
        return [r.text for [r] in runner.generate(contexts, decoding.settings(batch))]

    write_replies(samples, write, batch_size, on_progress, should_stop)
    _reference_nll(runner, examples, samples)
    scored = score(samples, with_tags=bool(trained.get("strategy_tags")))
    scored["perplexity"] = m.perplexity(
        sum(s.nll or 0.0 for s in samples), sum(s.tokens or 0 for s in samples)
    )
    result = {
        "model": {"base": base, "adapter": str(adapter) if adapter else None},
        "data": str(path),
        "decoding": decoding.as_dict(),
        "metrics": scored,
        "samples": [
            sample_record(s, examples, scores)
            for s, scores in zip(samples, reply_scores(samples), strict=True)
        ],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (out / "report.html").write_text(report_html(result), encoding="utf-8")
    return result


class Stopped(Exception):
    """should_stop() said so between two batches of replies."""


def write_replies(
    samples: list[Sample],
    write: Callable[[list[list[dict[str, str]]], int], list[str]],
    batch_size: int = REPLY_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    by_length: bool = True,
) -> None:
    """Set every sample's reply, `batch_size` contexts per call of `write(contexts, batch)`.

    With `by_length`, contexts of similar length go together (less padding: the longest context
    sets a batch's cost); the samples keep their order. Progress counts replies."""
    report = on_progress or (lambda done, total: None)
    order = list(range(len(samples)))
    if by_length and batch_size > 1:
        sizes = [sum(len(m["content"]) for m in s.context) for s in samples]
        order.sort(key=lambda k: sizes[k])
    report(0, len(samples))
    done = 0
    for batch, start in enumerate(range(0, len(order), max(1, batch_size))):
        if should_stop is not None and should_stop():
            raise Stopped
        chunk = [samples[k] for k in order[start : start + max(1, batch_size)]]
        replies = write([s.context for s in chunk], batch)
        for sample, reply in zip(chunk, replies, strict=True):
            sample.reply = reply
        done += len(chunk)
        report(done, len(samples))


def _load(base: str, adapter: str | Path | None, device: str = "auto") -> Any:
    from generation.localmodel import LocalRunner

    runner = LocalRunner(Path(base), device=None if device == "auto" else device)
    if adapter is not None:
        from peft import PeftModel

        # Merged into the base weights, the adapter costs nothing per generated token.
        runner.model = PeftModel.from_pretrained(runner.model, str(adapter)).merge_and_unload()
        runner.model.eval()
    return runner


def _reference_nll(runner: Any, examples: list[dict[str, Any]], samples: list[Sample]) -> None:
    """Set each sample's NLL and token count of its written reply (plus the end-of-turn marker)
    under the model. Each dialogue is encoded once, up to its last sampled turn: then the
    training mask selects exactly the sampled replies, one run of label tokens each, in order."""
    import torch

    turns: dict[int, list[Sample]] = {}
    for sample in samples:
        turns.setdefault(sample.example, []).append(sample)
    encoded = [
        (k, encode_chat(runner.tokenizer, examples[k]["messages"][: sampled[-1].turn + 1]))
        for k, sampled in turns.items()
    ]
    encoded.sort(key=lambda pair: len(pair[1]))
    pad_id = runner.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(encoded), BATCH):
            chunk = encoded[start : start + BATCH]
            batch = collate([e for _, e in chunk], pad_id)
            rows = _token_nll(
                runner.model,
                batch["input_ids"].to(runner.device),
                batch["labels"].to(runner.device),
            )
            for (k, _), (losses, keep) in zip(chunk, rows, strict=True):
                runs = _runs(keep)
                for sample, (begin, end) in zip(turns[k], runs, strict=True):
                    sample.nll, sample.tokens = float(sum(losses[begin:end])), end - begin


def _token_nll(model: Any, input_ids: Any, labels: Any) -> list[tuple[list[float], list[bool]]]:
    """Per row: the NLL of each next token (0 where its label is IGNORE), and which count."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    # Position t predicts token t+1; the output layer runs only where that token counts.
    targets = labels[:, 1:]
    keep = targets != IGNORE
    kept_hidden, kept_targets = hidden[:, :-1][keep], targets[keep]
    head = inner.get_output_embeddings()
    parts = [
        F.cross_entropy(
            head(kept_hidden[at : at + HEAD_CHUNK]).float(),
            kept_targets[at : at + HEAD_CHUNK],
            reduction="none",
        )
        for at in range(0, len(kept_targets), HEAD_CHUNK)
    ]
    nll = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    if parts:
        nll[keep] = torch.cat(parts)
    return list(zip(nll.tolist(), keep.tolist(), strict=True))


def _runs(keep: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    runs, start = [], None
    for position, value in enumerate([*keep, False]):
        if value and start is None:
            start = position
        elif not value and start is not None:
            runs.append((start, position))
            start = None
    return runs


def reply_scores(samples: list[Sample]) -> list[dict[str, Any]]:
    """What training.noise resamples, per reply: the ESConv-convention counts and scores
    (noise.per_reply, tags removed as in `score`) and the reference's NLL and tokens."""
    refs = [split_tag(s.reference)[1] for s in samples]
    hyps = [split_tag(s.reply)[1] for s in samples]
    return [
        scores | {"nll": s.nll, "tokens": s.tokens}
        for s, scores in zip(samples, noise.per_reply(refs, hyps), strict=True)
    ]


def score(samples: list[Sample], with_tags: bool = False) -> dict[str, Any]:
    """Metrics of the replies against the references in the ESConv convention (0-100; see
    training.metrics), tags removed from both; with_tags adds the strategy accuracy of the
    replies' tags (0-100)."""
    refs = [split_tag(s.reference)[1] for s in samples]
    hyps = [split_tag(s.reply)[1] for s in samples]
    result: dict[str, Any] = {"samples": len(samples), **m.esconv_scores(hyps, refs)}
    gold = [split_tag(s.reference)[0] for s in samples]
    if with_tags and any(g is not None for g in gold):
        result["strategy-accuracy"] = 100 * m.strategy_accuracy(
            [split_tag(s.reply)[0] for s in samples], gold
        )
    return result


def sample_record(
    sample: Sample, examples: list[dict[str, Any]], scores: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A scored turn as metrics.json (and an experiment) keeps it; `scores` when there are."""
    record = {
        "id": examples[sample.example].get("id"),
        "turn": sample.turn,
        "context": [f"{msg['role']}: {msg['content']}" for msg in sample.context[-2:]],
        "reference": sample.reference,
        "reply": sample.reply,
    }
    return record if scores is None else record | {"scores": scores}


def format_table(metrics: dict[str, Any]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {_number(v)}" for k, v in metrics.items())


def compare(reports: dict[str, dict[str, Any]]) -> str:
    """A text table with one column per report (e.g. {"base": ..., "student": ...}); a report is
    evaluate()'s result or its "metrics" alone. Metrics where lower is better are marked."""
    tables = {name: r.get("metrics", r) for name, r in reports.items()}
    names = list(dict.fromkeys(k for t in tables.values() for k in t))
    labels = [f"{k} (lower is better)" if k in LOWER_IS_BETTER else k for k in names]
    first = max([len("metric"), *map(len, labels)])
    widths = [max(10, len(name)) for name in tables]
    lines = [
        "  ".join(
            ["metric".ljust(first), *(n.rjust(w) for n, w in zip(tables, widths, strict=True))]
        )
    ]
    for key, label in zip(names, labels, strict=True):
        cells = [_number(t.get(key)).rjust(w) for t, w in zip(tables.values(), widths, strict=True)]
        lines.append("  ".join([label.ljust(first), *cells]))
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def report_html(result: dict[str, Any], max_samples: int = 200) -> str:
    """A standalone page: the metrics, then samples with context, reference and reply side by
    side. Every text from the data or the model is escaped."""
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(k)}</th><td>{e(_number(v))}</td></tr>" for k, v in result["metrics"].items()
    )
    samples = "".join(
        "<tr>"
        f"<td>{e(str(s['id']))}#{s['turn']}</td>"
        f"<td>{'<br>'.join(e(line) for line in s['context'])}</td>"
        f"<td>{e(s['reference'])}</td>"
        f"<td>{e(s['reply'])}</td>"
        "</tr>"
        for s in result["samples"][:max_samples]
    )
    shown = min(len(result["samples"]), max_samples)
    model = result["model"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }}
.samples td {{ width: 30%; white-space: pre-wrap; }}
.samples td:first-child {{ width: 6%; white-space: nowrap; }}
</style></head><body>
<h1>Evaluation</h1>
<p>Base: <code>{e(str(model["base"]))}</code><br>Adapter: <code>{e(str(model["adapter"] or "none"))}</code><br>
Data: <code>{e(result["data"])}</code></p>
<h2>Metrics</h2>
<table>{rows}</table>
<h2>Samples ({shown} of {len(result["samples"])})</h2>
<table class="samples"><tr><th>turn</th><th>context (last two messages)</th><th>reference</th><th>reply</th></tr>
{samples}</table>
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    result = evaluate(
        args.data,
        base=args.base,
        adapter=args.adapter,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        out_dir=args.out,
        on_progress=lambda done, total: print(f"replies {done}/{total}", flush=True),
    )
    print(format_table(result["metrics"]))
    if args.compare:
        reports = {}
        for item in args.compare:
            name, _, path = item.partition("=")
            reports[name] = json.loads(Path(path).read_text(encoding="utf-8"))
        reports["this run"] = result
        print()
        print(compare(reports))
    if args.adapter and (Path(args.adapter) / "training_config.json").is_file():
        from training.card import write_card_from_config

        print(f"model card: {write_card_from_config(args.adapter, result['metrics'])}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description="Score replies on the test dialogues."
    )
    parser.add_argument("--data", required=True, help="release folder, or a folder with test.jsonl")
    parser.add_argument("--base", help="base model folder (default: the adapter's, else SmolLM2)")
    parser.add_argument("--adapter", help="adapter folder written by training.sft")
    parser.add_argument("--limit", type=int, help="score only the first N supporter turns")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap")
    parser.add_argument("--out", help="folder for metrics.json and report.html")
    parser.add_argument(
        "--compare", action="append", metavar="NAME=METRICS_JSON", help="earlier runs to tabulate"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
