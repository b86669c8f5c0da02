"""The paper's ablation on one release: the base model against students trained on it, on the
same test turns, with 95% bootstrap intervals. Runs without Django.

    python -m training.experiment --data RELEASE_DIR --out OUT --arms base,sft,sft_dri
        [--seeds N] [--max-steps N | --epochs E] [--limit N] [--device auto|cpu|cuda]
        [--base MODEL] [--max-new-tokens N]

Arms: `base` (the base model as it is), `sft` (LoRA on the release's whole dialogues), `sft_dri`
(the same plus its DRI completions). Every trained arm starts from the same base with the same
hyperparameters and seed, and gets the same number of optimizer steps: `--max-steps`, or the
steps `--epochs` makes over the `sft` data (so `sft_dri` is not rewarded with more steps). The
report gives each arm's steps and tokens seen.

Every test supporter turn is scored unless `--limit` says otherwise, with greedy decoding.
Metrics follow the ESConv convention (training.metrics' esconv_* functions, 0-100): BLEU-1..4,
ROUGE-L (beta 1.2), Distinct-1..3, unigram F1, mean reply length in tokens, and the perplexity of
the references. Each metric's interval resamples test turns (1000 draws, fixed seed); with
several seeds an arm's figure is the mean over its seeds, recomputed on every draw. Each arm is
compared with `base` and `sft` by a paired bootstrap of the difference: its interval and a
two-sided p-value (twice the share of draws on the other side of 0).

OUT gets report.json (`"arms"`: for each arm `"metrics"` name -> value, `"ci"` name -> [low,
high], `"versus"`: other arm -> name -> {"difference", "ci", "p"}, `"budget"`; and
`"replies_scored"`, `"decoding"`), report.html and replies.jsonl (one line per scored turn: its
id and turn, the reference, and each arm's reply, seed 0).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import metrics as m
from training import noise
from training.data import read_examples, split_tag

ARMS = ("base", "sft", "sft_dri")
TRAINED = ("sft", "sft_dri")
METRICS = (
    "bleu-1",
    "bleu-2",
    "bleu-3",
    "bleu-4",
    "rouge-l",
    "distinct-1",
    "distinct-2",
    "distinct-3",
    "unigram-f1",
    "length",
    "perplexity",
)
LOWER_IS_BETTER = {"perplexity"}
COMPARED_WITH = ("base", "sft")


@dataclass(frozen=True)
class Run:
    """One arm with one seed: its replies to the scored turns, in order, and the references'
    NLL and token counts under it."""

    replies: list[str]
    nll: list[float]
    tokens: list[int]


def statistics(references: Sequence[str], run: Run) -> dict[str, noise.Statistic]:
    """A statistic per metric: the metric of the drawn turns, for any draw (training.noise)."""
    refs = [split_tag(r)[1] for r in references]
    hyps = [split_tag(r)[1] for r in run.replies]
    table = np.asarray(m.esconv_bleu_statistics(hyps, refs), float)

    def bleu(n: int) -> noise.Statistic:
        return lambda weights: np.asarray(m.esconv_bleu_from_statistics(weights @ table, n))

    def scaled(statistic: noise.Statistic) -> noise.Statistic:
        return lambda weights: 100 * statistic(weights)

    found: dict[str, noise.Statistic] = {f"bleu-{n}": bleu(n) for n in (1, 2, 3, 4)}
    found["rouge-l"] = noise.mean(m.esconv_rouge_l_scores(hyps, refs))
    for n in (1, 2, 3):
        found[f"distinct-{n}"] = scaled(noise.distinct(hyps, n, m.esconv_ngrams))
    found["unigram-f1"] = noise.mean(m.esconv_unigram_f1_scores(hyps, refs))
    found["length"] = noise.mean([float(x) for x in m.esconv_lengths(hyps)])
    found["perplexity"] = noise.perplexity(run.nll, run.tokens)
    return found


def seeds_mean(per_seed: list[dict[str, noise.Statistic]]) -> dict[str, noise.Statistic]:
    """An arm's statistic over its seeds: the mean of each seed's, on the same draw."""

    def averaged(key: str) -> noise.Statistic:
        return lambda weights: np.mean([s[key](weights) for s in per_seed], axis=0)

    return {key: averaged(key) for key in per_seed[0]}


def summarise(
    references: Sequence[str],
    runs: dict[str, list[Run]],
    resamples: int = noise.RESAMPLES,
    seed: int = noise.SEED,
) -> dict[str, dict[str, Any]]:
    """For each arm: its metrics, their 95% intervals, and its paired comparison with the arms of
    COMPARED_WITH that ran (difference, interval, two-sided p)."""
    turns = len(references)
    if turns < 1:
        raise ValueError("no test turn to score: the release's test split is empty")
    whole = np.ones((1, turns))
    weights = noise.draws(turns, resamples, seed)
    stats = {
        arm: seeds_mean([statistics(references, run) for run in arm_runs])
        for arm, arm_runs in runs.items()
    }
    drawn = {arm: {key: s(weights) for key, s in found.items()} for arm, found in stats.items()}
    result: dict[str, dict[str, Any]] = {}
    for arm, found in stats.items():
        metrics = {key: _number(float(s(whole)[0])) for key, s in found.items()}
        ci = {key: _interval(values) for key, values in drawn[arm].items()}
        versus = {
            other: {
                key: _difference(float(found[key](whole)[0] - stats[other][key](whole)[0]), drawn[arm][key] - drawn[other][key])
                for key in found
            }
            for other in COMPARED_WITH
            if other in stats and other != arm
        }  # fmt: skip
        result[arm] = {"metrics": metrics, "ci": ci, "versus": versus}
    return result


def _interval(values: np.ndarray) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [None, None]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [_number(float(low)), _number(float(high))]


def _difference(point: float, draws: np.ndarray) -> dict[str, Any]:
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return {"difference": _number(point), "ci": [None, None], "p": None}
    side = min(float(np.mean(finite <= 0)), float(np.mean(finite >= 0)))
    return {"difference": _number(point), "ci": _interval(finite), "p": min(1.0, 2 * side)}


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(value, 4)


# ---- running the arms ----------------------------------------------------------------------------


def matched_steps(data: Path, epochs: float, batch_size: int) -> int:
    """The optimizer steps `epochs` passes over the sft training chats take: every arm's."""
    from training.data import variant_files

    chats = sum(len(read_examples(path)) for path in variant_files(data, "sft"))
    return max(1, math.ceil(epochs * math.ceil(chats / batch_size)))


def run_experiment(
    data: str | Path,
    out: str | Path,
    arms: Sequence[str] = ARMS,
    seeds: int = 1,
    max_steps: int | None = None,
    epochs: float = 1.0,
    limit: int | None = None,
    device: str = "auto",
    base: str | None = None,
    max_new_tokens: int = 64,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every arm on the same test turns; writes OUT/report.json, report.html
    and replies.jsonl and returns the report."""
    from training import evaluate as ev
    from training.sft import TrainConfig, train

    data, out = Path(data), Path(out)
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown arm(s) {unknown or arms}: choose from {', '.join(ARMS)}")
    if not 1 <= seeds <= 5:
        raise ValueError("seeds: 1 to 5")
    out.mkdir(parents=True, exist_ok=True)
    batch_size = TrainConfig.batch_size
    steps = max_steps or matched_steps(data, epochs, batch_size)
    runs: dict[str, list[Run]] = {}
    budgets: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for arm in arms:
        runs[arm] = []
        for seed in range(seeds if arm in TRAINED else 1):
            adapter = None
            if arm in TRAINED:
                log(f"{arm} seed {seed}: training {steps} steps")
                trained = train(
                    TrainConfig(
                        data=str(data),
                        out=str(out / f"{arm}-seed{seed}"),
                        base=base,
                        variant=arm,
                        max_steps=steps,
                        seed=seed,
                        save_every=0,
                        device=device,
                    )
                )
                adapter = trained.adapter_dir
                budgets.setdefault(arm, []).append(
                    {"seed": seed, "steps": trained.steps, "tokens_seen": trained.config.get("tokens_seen")}
                )  # fmt: skip
            log(f"{arm}{f' seed {seed}' if adapter else ''}: evaluating")
            result = ev.evaluate(
                data, base, adapter=adapter, limit=limit, max_new_tokens=max_new_tokens
            )
            samples = samples or result["samples"]  # the same turns for every arm
            runs[arm].append(
                Run(
                    replies=[s["reply"] for s in result["samples"]],
                    nll=[float(s["scores"]["nll"] or 0.0) for s in result["samples"]],
                    tokens=[int(s["scores"]["tokens"] or 0) for s in result["samples"]],
                )
            )
    references = [s["reference"] for s in samples]
    summary = summarise(references, runs)
    for arm in arms:
        summary[arm]["budget"] = budgets.get(arm, "not trained")
    report = {
        "data": str(data),
        "base": base or "the local SmolLM2-135M-Instruct",
        "arms": summary,
        "replies_scored": len(references),
        "seeds": seeds,
        "budget": {"steps": steps, "batch_size": batch_size, "epochs": None if max_steps else epochs},
        "decoding": {"kind": "greedy", "max_new_tokens": max_new_tokens},
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with (out / "replies.jsonl").open("w", encoding="utf-8") as handle:
        for index, sample in enumerate(samples):
            line = {"id": sample["id"], "turn": sample["turn"], "reference": sample["reference"]}
            line |= {arm: runs[arm][0].replies[index] for arm in arms}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    (out / "report.html").write_text(report_html(report), encoding="utf-8")
    return report


def report_html(report: dict[str, Any]) -> str:
    """The result table: each arm's value and interval per metric, the difference with `sft`."""
    arms = list(report["arms"])
    head = "".join(f"<th>{html.escape(arm)}</th>" for arm in arms)
    rows = []
    for key in METRICS:
        cells = []
        for arm in arms:
            value = report["arms"][arm]["metrics"].get(key)
            low, high = report["arms"][arm]["ci"].get(key, [None, None])
            cells.append(f"<td>{_text(value)} <small>[{_text(low)}, {_text(high)}]</small></td>")
        better = " (lower is better)" if key in LOWER_IS_BETTER else ""
        rows.append(f"<tr><th>{html.escape(key)}{better}</th>{''.join(cells)}</tr>")
    return (
        "<!doctype html><meta charset='utf-8'><title>Experiment</title>"
        f"<h1>Experiment on {html.escape(report['data'])}</h1>"
        f"<p>{report['replies_scored']} test turns, {report['seeds']} seed(s), "
        f"{report['budget']['steps']} steps per trained arm; 95% bootstrap intervals.</p>"
        f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"
    )


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        report = run_experiment(
            args.data,
            args.out,
            arms=[a.strip() for a in args.arms.split(",") if a.strip()],
            seeds=args.seeds,
            max_steps=args.max_steps,
            epochs=args.epochs,
            limit=args.limit,
            device=args.device,
            base=args.base,
            max_new_tokens=args.max_new_tokens,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for arm, found in report["arms"].items():
        figures = " ".join(f"{k}={v}" for k, v in found["metrics"].items())
        print(f"arm {arm} {figures}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.experiment", description=__doc__)
    parser.add_argument("--data", required=True, help="a release folder")
    parser.add_argument("--out", required=True, help="where report.json and the adapters go")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: base,sft,sft_dri")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per trained arm (1-5)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimizer steps of every trained arm")
    budget.add_argument("--epochs", type=float, default=1.0, help="passes over the sft data")
    parser.add_argument("--limit", type=int, help="score only the first N test turns")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--base", help="base model folder (default: the local SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
