"""The paper's ablation on one release: the base model against students trained on it, on the
same test turns, with 95% bootstrap intervals. Runs without Django.

    python -m training.experiment --data RELEASE_DIR --out OUT --arms base,sft,sft_dri
        [--seeds N] [--max-steps N | --epochs E] [--limit N] [--device auto|cpu|cuda]
        [--base MODEL] [--max-new-tokens N] [--decoding greedy|sampling --temperature T
        --top-p P --decoding-seed S] [--teacher-url URL --teacher-model NAME]

Arms: `base` (the base model as it is), `teacher` (an OpenAI-compatible teacher answering the
same contexts through generation.teacher's seam; it has no perplexity), `sft` (LoRA on the
release's whole dialogues), `sft_dri` (the same plus its DRI completions), `sft_dpo` (the sft
arm's training, then DPO with training.dpo on the release's preference pairs, from that adapter,
which is also the reference; its budget reports the DPO steps on top). Every trained arm starts from the same base with the same
hyperparameters and seed, and gets the same number of optimizer steps: `--max-steps`, or the
steps `--epochs` makes over the `sft` data (so `sft_dri` is not rewarded with more steps). The
report gives each arm's steps and tokens seen.

Every test supporter turn is scored unless `--limit` says otherwise, replies written in batches
(greedy by default; sampling with a seed is recorded as such).
Metrics follow the ESConv convention (training.metrics' esconv_* functions, 0-100): BLEU-1..4,
ROUGE-L (beta 1.2), Distinct-1..3, unigram F1, mean reply length in tokens, the perplexity of
the references, and strategy accuracy when every reference is tagged ("[Question] ..."). Each metric's interval resamples test turns (1000 draws, fixed seed); with
several seeds an arm's figure is the mean over its seeds, recomputed on every draw. Each arm is
compared with `base` and `sft` by a paired bootstrap of the difference: its interval and a
two-sided p-value (twice the share of draws on the other side of 0). Draws are centred on the
value of all the turns (training.noise.centred), so Distinct-n, which repeated replies lower in
every draw, gets an interval around its value.

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

from training import noise
from training.data import read_examples
from training.evaluate import Decoding, Stopped

__all__ = ["ARMS", "Decoding", "Progress", "Run", "Stopped", "run_experiment", "summarise"]

ARMS = ("base", "teacher", "sft", "sft_dri", "sft_dpo")
DEFAULT_ARMS = ("base", "sft", "sft_dri")
TRAINED = ("sft", "sft_dri", "sft_dpo")
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
    "strategy-accuracy",
)
LOWER_IS_BETTER = {"perplexity"}
COMPARED_WITH = ("base", "sft")


@dataclass(frozen=True)
class Run:
    """One arm with one seed: its replies to the scored turns, in order, and the references'
    NLL and token counts under it."""

    replies: list[str]
    nll: list[float] | None  # None: the arm has no likelihood (the teacher over HTTP)
    tokens: list[int] | None


@dataclass(frozen=True)
class Progress:
    """Where an experiment is: stage `stage` of `stages` (each trained arm and seed trains, then
    writes replies; base and teacher only write), `done` of `total` steps or replies in it."""

    stage: int
    stages: int
    label: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        within = self.done / self.total if self.total else 0.0
        return min(1.0, (self.stage + within) / max(1, self.stages))


def statistics(references: Sequence[str], run: Run) -> dict[str, noise.Statistic]:
    """A statistic per metric: the metric of the drawn turns, for any draw (training.noise)."""
    return noise.esconv_statistics(references, run.replies, nll=run.nll, tokens=run.tokens)


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
        points = {key: float(s(whole)[0]) for key, s in found.items()}
        metrics = {key: _number(value) for key, value in points.items()}
        ci = {key: _interval(noise.centred(drawn[arm][key], points[key])) for key in found}
        versus = {
            other: {
                key: _difference(float(found[key](whole)[0] - stats[other][key](whole)[0]), drawn[arm][key] - drawn[other][key])
                for key in found
                if key in stats[other]
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
    finite = noise.centred(draws, point)
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


def stages_of(arms: Sequence[str], seeds: int) -> list[tuple[str, int, str]]:
    """(arm, seed, "training" | "replies") in the order they run."""
    found: list[tuple[str, int, str]] = []
    for arm in arms:
        for seed in range(seeds if arm in TRAINED else 1):
            if arm in TRAINED:
                found.append((arm, seed, "training"))
            found.append((arm, seed, "replies"))
    return found


def run_experiment(
    data: str | Path,
    out: str | Path,
    arms: Sequence[str] = DEFAULT_ARMS,
    seeds: int = 1,
    max_steps: int | None = None,
    epochs: float = 1.0,
    limit: int | None = None,
    device: str = "auto",
    base: str | None = None,
    decoding: Decoding | None = None,
    teacher: Any = None,
    log: Callable[[str], None] = print,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    dpo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every arm on the same test turns; writes OUT/report.json, report.html
    and replies.jsonl and returns the report. `dpo`: training.dpo's settings for the sft_dpo
    arm's second stage (beta, learning_rate, max_steps, …; default one pass over the pairs). `teacher` (a generation.teacher Teacher) answers
    for the `teacher` arm. `should_stop()` is asked between steps and batches: Stopped."""
    from training import evaluate as ev
    from training.sft import TrainConfig, train

    data, out = Path(data), Path(out)
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown arm(s) {unknown or arms}: choose from {', '.join(ARMS)}")
    if not 1 <= seeds <= 5:
        raise ValueError("seeds: 1 to 5")
    if "teacher" in arms and teacher is None:
        raise ValueError("the teacher arm needs a teacher (--teacher-url and --teacher-model)")
    if decoding is None:
        decoding = Decoding(max_new_tokens=max_new_tokens or 64)
    reply_batch = batch_size or ev.REPLY_BATCH
    report_progress = on_progress or (lambda progress: None)
    out.mkdir(parents=True, exist_ok=True)
    train_batch = TrainConfig.batch_size
    steps = max_steps or matched_steps(data, epochs, train_batch)
    plan = stages_of(arms, seeds)
    runs: dict[str, list[Run]] = {arm: [] for arm in arms}
    budgets: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    adapter: Path | None = None
    sft_stage: dict[int, tuple[Path, dict[str, Any]]] = {}  # seed: a plain SFT adapter, its budget
    for stage, (arm, seed, kind) in enumerate(plan):
        label = f"{arm} seed {seed}: {kind}" if arm in TRAINED else f"{arm}: {kind}"

        def progress(done: int, total: int, stage: int = stage, label: str = label) -> None:
            report_progress(Progress(stage, len(plan), label, done, total))

        progress(0, steps if kind == "training" else 0)
        variant = "sft" if arm == "sft_dpo" else arm
        if kind == "training":
            if variant == "sft" and seed in sft_stage:
                # sft and sft_dpo train the same SFT stage (same data, steps and seed): once.
                adapter, first = sft_stage[seed]
                log(f"{label}: the {steps} SFT steps of the other arm with this seed, reused")
                progress(steps, steps)
                budget = dict(first)
            else:
                log(f"{label}: {steps} steps")
                trained = train(
                    TrainConfig(
                        data=str(data),
                        out=str(out / f"{arm}-seed{seed}"),
                        base=base,
                        variant=variant,
                        max_steps=steps,
                        seed=seed,
                        save_every=0,
                        device=device,
                        no_validation=True,  # the test split is scored: no need for valid's loss
                    ),
                    on_progress=_steps(progress),
                    should_stop=should_stop,
                )
                if trained.stopped:
                    raise Stopped
                adapter = trained.adapter_dir
                budget = {"seed": seed, "steps": trained.steps, "tokens_seen": trained.config.get("tokens_seen")}  # fmt: skip
                if variant == "sft":
                    sft_stage[seed] = (adapter, dict(budget))
            if arm == "sft_dpo":
                adapter, budget["dpo_steps"] = _dpo_stage(
                    data, out / f"{arm}-seed{seed}", adapter, base, seed, device, dpo,
                    _after(steps, progress), should_stop,
                )  # fmt: skip
                log(f"{label}: DPO {budget['dpo_steps']} steps")
            budgets.setdefault(arm, []).append(budget)
            continue
        log(label)
        if arm == "teacher":
            result = teacher_replies(
                data, teacher, decoding, limit, reply_batch, progress, should_stop
            )
        else:
            result = ev.evaluate(
                data,
                base,
                adapter=adapter if arm in TRAINED else None,
                limit=limit,
                decoding=decoding,
                batch_size=reply_batch,
                on_progress=progress,
                should_stop=should_stop,
                device=device,
            )
        samples = samples or result["samples"]  # the same turns for every arm
        scored = result["samples"]
        runs[arm].append(
            Run(
                replies=[s["reply"] for s in scored],
                nll=None if arm == "teacher" else [float(s["scores"]["nll"] or 0.0) for s in scored],
                tokens=None if arm == "teacher" else [int(s["scores"]["tokens"] or 0) for s in scored],
            )
        )  # fmt: skip
    references = [s["reference"] for s in samples]
    summary = summarise(references, runs)
    for arm in arms:
        summary[arm]["budget"] = budgets.get(arm, "not trained")
        for key in summary[next(iter(summary))]["metrics"]:
            summary[arm]["metrics"].setdefault(key, None)
            summary[arm]["ci"].setdefault(key, [None, None])
    report = {
        "data": str(data),
        "base": base or "the local SmolLM2-135M-Instruct",
        "arms": summary,
        "replies_scored": len(references),
        "seeds": seeds,
        "budget": {"steps": steps, "batch_size": train_batch, "epochs": None if max_steps else epochs},
        "decoding": decoding.as_dict(),
        "teacher": {"backend": teacher.backend, "model": teacher.model} if "teacher" in arms else None,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with (out / "replies.jsonl").open("w", encoding="utf-8") as handle:
        for index, sample in enumerate(samples):
            line = {
                "id": sample["id"],
                "turn": sample["turn"],
                "context": sample["context"],
                "reference": sample["reference"],
            }
            line |= {arm: runs[arm][0].replies[index] for arm in arms}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    (out / "report.html").write_text(report_html(report), encoding="utf-8")
    return report


def _dpo_stage(
    data: Path,
    out: Path,
    adapter: Path,
    base: str | None,
    seed: int,
    device: str,
    settings: dict[str, Any] | None,
    on_progress: Callable[[Any], None],
    should_stop: Callable[[], bool] | None,
) -> tuple[Path, int]:
    """The sft_dpo arm after its SFT stage (the same training as the sft arm's, into
    OUT/<arm>-seed<seed>/): DPO on the release's preference pairs from that adapter, which is
    also the reference; (the DPO adapter, its steps)."""
    from training.dpo import DPOTrainConfig, train_dpo

    preferred = train_dpo(
        DPOTrainConfig(
            data=str(data),
            out=str(out / "dpo"),
            adapter=str(adapter),
            base=base,
            seed=seed,
            save_every=0,
            device=device,
            no_validation=True,
            **(settings or {}),
        ),
        on_progress=lambda p: on_progress(p) if p.loss is not None else None,
        should_stop=should_stop,
    )
    if preferred.stopped:
        raise Stopped
    return preferred.adapter_dir, preferred.steps


def _after(steps: int, progress: Callable[[int, int], None]) -> Callable[[Any], None]:
    """A second stage's progress (training.sft's Progress), counted after `steps` done."""
    return lambda p: progress(steps + p.step, steps + p.total_steps)


def _steps(progress: Callable[[int, int], None]) -> Callable[[Any], None]:
    """training.sft's progress as (step, total steps)."""
    return lambda p: progress(p.step, p.total_steps)


def teacher_replies(
    data: Path,
    teacher: Any,
    decoding: Decoding,
    limit: int | None,
    batch_size: int,
    on_progress: Callable[[int, int], None],
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    """The teacher's reply to every scored context, `batch_size` calls at a time; in the shape
    of training.evaluate's result (samples with id, turn, context, reference, reply)."""
    from concurrent.futures import ThreadPoolExecutor

    from generation.teacher import Sampling
    from training import evaluate as ev

    path = ev._test_path(data)
    examples = read_examples(path)
    samples = ev.supporter_turns(examples, limit)
    if not samples:
        raise ValueError(f"{path} holds no test dialogues: there is nothing to evaluate on")

    def write(contexts: list[list[dict[str, str]]], batch: int) -> list[str]:
        settings = decoding.settings(batch)
        sampling = Sampling(
            settings.temperature, settings.top_p, settings.max_tokens, settings.seed
        )
        with ThreadPoolExecutor(max_workers=len(contexts)) as pool:
            return [r.text.strip() for r in pool.map(lambda c: teacher.chat(c, sampling), contexts)]

    ev.write_replies(samples, write, batch_size, on_progress, should_stop, by_length=False)
    return {"samples": [ev.sample_record(s, examples) for s in samples]}


def report_html(report: dict[str, Any]) -> str:
    """The result table: each arm's value and interval per metric, the difference with `sft`."""
    arms = list(report["arms"])
    head = "".join(f"<th>{html.escape(arm)}</th>" for arm in arms)
    rows = []
    for key in METRICS:
        if all(key not in report["arms"][arm]["metrics"] for arm in arms):
            continue
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
        f"{report['budget']['steps']} steps per trained arm; 95% bootstrap intervals. "
        f"Decoding: {html.escape(json.dumps(report['decoding']))}.</p>"
        f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"
    )


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    try:
        decoding = Decoding(
            kind=args.decoding,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.decoding_seed,
            max_new_tokens=args.max_new_tokens,
        )
        teacher = None
        if "teacher" in arms:
            if not (args.teacher_url and args.teacher_model):
                raise ValueError("the teacher arm needs --teacher-url and --teacher-model")
            from generation.teacher import HttpTeacher

            teacher = HttpTeacher(args.teacher_url, args.teacher_model)
        report = run_experiment(
            args.data,
            args.out,
            arms=arms,
            seeds=args.seeds,
            max_steps=args.max_steps,
            epochs=args.epochs,
            limit=args.limit,
            device=args.device,
            base=args.base,
            decoding=decoding,
            teacher=teacher,
            batch_size=args.batch_size,
            dpo={"beta": args.dpo_beta, "max_steps": args.dpo_max_steps},
            log=lambda line: print(line, file=sys.stderr, flush=True),
            on_progress=_printer(),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for arm, found in report["arms"].items():
        figures = " ".join(f"{k}={v}" for k, v in found["metrics"].items())
        print(f"arm {arm} {figures}")
    return 0


def _printer() -> Callable[[Progress], None]:
    """Progress on stderr, a line per stage and at most one every 10 steps or replies."""
    last: dict[str, int] = {}

    def show(progress: Progress) -> None:
        if not progress.total:
            return
        if progress.done - last.get(progress.label, -10) >= 10 or progress.done == progress.total:
            last[progress.label] = progress.done
            print(f"  {progress.label} {progress.done}/{progress.total} "
                  f"({100 * progress.fraction:.0f}% of the experiment)", file=sys.stderr, flush=True)  # fmt: skip

    return show


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.experiment", description=__doc__)
    parser.add_argument("--data", required=True, help="a release folder")
    parser.add_argument("--out", required=True, help="where report.json and the adapters go")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help="comma-separated: base,teacher,sft,sft_dri,sft_dpo",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per trained arm (1-5)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimizer steps of every trained arm")
    budget.add_argument("--epochs", type=float, default=1.0, help="passes over the sft data")
    parser.add_argument("--limit", type=int, help="score only the first N test turns")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--base", help="base model folder (default: the local SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, help="replies written together (default 8)")
    parser.add_argument("--decoding", default="greedy", choices=["greedy", "sampling"])
    parser.add_argument("--temperature", type=float, default=0.7, help="with --decoding sampling")
    parser.add_argument("--top-p", type=float, default=0.9, help="with --decoding sampling")
    parser.add_argument("--decoding-seed", type=int, default=0, help="with --decoding sampling")
    parser.add_argument("--teacher-url", help="the teacher arm's OpenAI-compatible /v1 URL")
    parser.add_argument("--teacher-model", help="the teacher arm's model name")
    parser.add_argument("--dpo-beta", type=float, default=0.1, help="sft_dpo: DPO's beta")
    parser.add_argument(
        "--dpo-max-steps", type=int, help="sft_dpo: DPO steps (default: one pass over the pairs)"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
