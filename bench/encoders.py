"""The project's two encoders on CPU, float32 against bfloat16: CPU per dialogue and agreement.

    python bench/encoders.py                      # 64 dialogues, 8 threads, torch threads 1
    python bench/encoders.py --dialogues 32 --threads 4 --torch-threads 2 [--force-bf16]

a) The near-duplicate embedder (generation.embeddings.Embedder, all-MiniLM-L6-v2) on the texts
   that represent ESConv test dialogues (dialogue_text(situation, turns), read in place from
   ../shared/data/esconv/test.txt), once per dtype (Embedder(dtype=...)):
     mode=sequential: one dialogue per embed() call, one call after the other;
     mode=threads: --threads Python threads, each embedding its own dialogues one at a time,
       all at once (what a worker's unit threads do): the Combiner batches the calls that wait
       while the model runs; mean_batch = dialogues per model call (combiner items / calls).
   and how far bfloat16's vectors are from float32's: the least cosine between a dialogue's two
   vectors, and the largest difference between the two matrices of pairwise similarities.
b) The crisis classifier (generation.crisis_model.CrisisClassifier), loaded once per precision
   (EXTES_ENCODER_PRECISION): what the screen reads of a dialogue (dialogue_texts on ESConv's
   valid.txt: the situation and the seeker's turns) scored with risk_of_texts, sequential and
   threaded as above (its cache of scores is emptied before each measurement; mean_batch counts
   units, the texts or sentence windows the model scores, per model call); then decision flips
   at the classifier's threshold between the two precisions on the dev and held-out snippet
   sets and on every ESConv valid dialogue (its highest unit risk, dialogue_risks).

Figures, one line each:
  encoders machine cpus=… amx=… native_bfloat16=… torch_threads=… load_1m=… dialogues=… threads=…
  embedder dtype=D mode=sequential cpu_ms_per_dialogue=… wall_ms_per_dialogue=…
  embedder dtype=D mode=threads threads=T cpu_ms_per_dialogue=… wall_ms_per_dialogue=…
        mean_batch=… max_diff_vs_sequential=…
  embedder_agreement dialogues=… min_cosine=… max_pairwise_similarity_diff=…
  classifier dtype=D mode=sequential|threads … cpu_ms_per_dialogue=… (mean_batch=…)
  classifier_agreement set=dev|heldout|esconv_valid n=… flips=… flagged_float32=…
        flagged_bfloat16=… max_risk_diff=…
  embedder dtype=bfloat16 status=skipped reason=… (no AMX nor AVX-512 BF16: emulated; --force-bf16)

cpu_ms_per_dialogue is the process's CPU time (time.process_time, every thread) per dialogue,
which a busy machine disturbs less than the wall time printed beside it. Each measurement follows
a warm-up call (oneDNN picks and builds its kernels on first use).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ESCONV = ROOT.parent / "shared" / "data" / "esconv"
DTYPES = ("float32", "bfloat16")


def esconv_dialogue_texts(path: Path, limit: int) -> list[str]:
    """The near-duplicate texts of the first ``limit`` dialogues of an ESConv JSONL file."""
    from generation.embeddings import dialogue_text

    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = [str(t.get("content", t.get("text", ""))) for t in row.get("dialog", [])]
        texts.append(dialogue_text(str(row.get("situation", "")), turns))
        if len(texts) >= limit:
            break
    return texts


def timed(work: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """(result, CPU seconds of the whole process, wall seconds) of ``work(*args)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def sequential(items: Sequence[Any], one: Callable[[Any], Any]) -> list[Any]:
    """``one(item)`` for every item, one after the other."""
    return [one(item) for item in items]


def in_threads(items: Sequence[Any], threads: int, one: Callable[[Any], Any]) -> list[Any]:
    """``one(item)`` for every item, ``threads`` threads each taking its own share one at a
    time, all released together; results in the items' order."""
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    count = max(1, min(threads, len(items)))
    barrier = threading.Barrier(count)

    def run(k: int) -> None:
        barrier.wait()
        try:
            for i in range(k, len(items), count):
                results[i] = one(items[i])
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


def embed_one(embedder: Any, text: str) -> Any:
    """One dialogue's vector, in a call of its own (as the near-duplicate filter asks)."""
    return embedder.embed([text])[0]


def bench_embedder(texts: list[str], dtypes: list[str], threads: int) -> None:
    import numpy as np

    from generation.embeddings import Embedder

    vectors: dict[str, Any] = {}
    n = len(texts)
    for dtype in dtypes:
        embedder = Embedder(dtype=dtype)
        embedder.embed(texts[:2])  # warm-up
        one = functools.partial(embed_one, embedder)
        rows, cpu, wall = timed(sequential, texts, one)
        vectors[dtype] = np.vstack(rows)
        print(
            f"embedder dtype={dtype} mode=sequential dialogues={n} "
            f"cpu_ms_per_dialogue={1000 * cpu / n:.1f} wall_ms_per_dialogue={1000 * wall / n:.1f}",
            flush=True,
        )
        calls, items = embedder.combiner.calls, embedder.combiner.items
        rows, cpu, wall = timed(in_threads, texts, threads, one)
        calls, items = embedder.combiner.calls - calls, embedder.combiner.items - items
        diff = float(np.max(np.abs(np.vstack(rows) - vectors[dtype])))
        print(
            f"embedder dtype={dtype} mode=threads threads={threads} dialogues={n} "
            f"cpu_ms_per_dialogue={1000 * cpu / n:.1f} wall_ms_per_dialogue={1000 * wall / n:.1f} "
            f"mean_batch={items / max(1, calls):.2f} model_calls={calls} "
            f"max_diff_vs_sequential={diff:.2g}",
            flush=True,
        )
        del embedder
    if len(vectors) == 2:
        a, b = vectors["float32"], vectors["bfloat16"]
        cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        pairwise = float(np.max(np.abs(a @ a.T - b @ b.T)))
        print(
            f"embedder_agreement dialogues={n} min_cosine={float(np.min(cosines)):.4f} "
            f"mean_cosine={float(np.mean(cosines)):.4f} max_pairwise_similarity_diff={pairwise:.4f}",
            flush=True,
        )


def load_classifier(dtype: str) -> Any:
    from generation import embeddings
    from generation.crisis_model import CrisisClassifier

    os.environ["EXTES_ENCODER_PRECISION"] = dtype
    embeddings._precision.cache_clear()
    classifier = CrisisClassifier()
    assert classifier.dtype == dtype, (classifier.dtype, dtype)
    return classifier


def bench_classifier(dialogues: int, dtypes: list[str], threads: int) -> None:
    import numpy as np

    from generation import embeddings
    from generation.crisis_model import DEV, HELDOUT, dialogue_risks, dialogue_texts, read_labelled

    valid = dialogue_texts(ESCONV / "valid.txt")
    timing = valid[:dialogues]
    n = len(timing)
    sets = {
        "dev": [t for t, _ in read_labelled(DEV)],
        "heldout": [t for t, _ in read_labelled(HELDOUT)],
    }
    risks: dict[str, dict[str, Any]] = {}
    threshold = 0.0
    before = os.environ.get("EXTES_ENCODER_PRECISION")
    try:
        for dtype in dtypes:
            classifier = load_classifier(dtype)
            threshold = classifier.threshold
            classifier.risk_of_texts(valid[-1])  # warm-up, outside the timed dialogues
            classifier._cache.clear()
            units = classifier._combiner.items
            _, cpu, wall = timed(sequential, timing, classifier.risk_of_texts)
            units = classifier._combiner.items - units
            print(
                f"classifier dtype={dtype} mode=sequential dialogues={n} "
                f"units_per_dialogue={units / max(1, n):.1f} "
                f"cpu_ms_per_dialogue={1000 * cpu / n:.1f} "
                f"wall_ms_per_dialogue={1000 * wall / n:.1f}",
                flush=True,
            )
            classifier._cache.clear()
            calls, items = classifier._combiner.calls, classifier._combiner.items
            _, cpu, wall = timed(in_threads, timing, threads, classifier.risk_of_texts)
            calls = classifier._combiner.calls - calls
            items = classifier._combiner.items - items
            print(
                f"classifier dtype={dtype} mode=threads threads={threads} dialogues={n} "
                f"cpu_ms_per_dialogue={1000 * cpu / n:.1f} "
                f"wall_ms_per_dialogue={1000 * wall / n:.1f} "
                f"mean_batch={items / max(1, calls):.2f} model_calls={calls}",
                flush=True,
            )
            classifier._cache.clear()
            risks[dtype] = {
                name: np.array([r for r, _ in classifier.risk_of_texts(texts)])
                for name, texts in sets.items()
            }
            classifier._cache.clear()
            risks[dtype]["esconv_valid"] = dialogue_risks(classifier, valid)
            del classifier
    finally:
        if before is None:
            os.environ.pop("EXTES_ENCODER_PRECISION", None)
        else:
            os.environ["EXTES_ENCODER_PRECISION"] = before
        embeddings._precision.cache_clear()
    if len(risks) == 2:
        for name in (*sets, "esconv_valid"):
            a, b = risks["float32"][name], risks["bfloat16"][name]
            fa, fb = a >= threshold, b >= threshold
            print(
                f"classifier_agreement set={name} n={a.size} threshold={threshold} "
                f"flips={int(np.sum(fa != fb))} flagged_float32={int(np.sum(fa))} "
                f"flagged_bfloat16={int(np.sum(fb))} "
                f"max_risk_diff={float(np.max(np.abs(a - b))):.4f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=64, help="dialogues timed per figure")
    parser.add_argument("--threads", type=int, default=8, help="Python threads in mode=threads")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--force-bf16", action="store_true", help="measure bfloat16 even where the CPU emulates it"
    )
    parser.add_argument("--skip-embedder", action="store_true")
    parser.add_argument("--skip-classifier", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    from generation.embeddings import native_bfloat16

    try:
        amx = bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        amx = False
    native = native_bfloat16()
    print(
        f"encoders machine cpus={os.cpu_count()} amx={amx} native_bfloat16={native} "
        f"torch={torch.__version__} "
        f"torch_threads={torch.get_num_threads()} load_1m={os.getloadavg()[0]:.2f} "
        f"dialogues={args.dialogues} threads={args.threads}",
        flush=True,
    )
    dtypes = list(DTYPES)
    if not native and not args.force_bf16:
        dtypes.remove("bfloat16")
        for name in ("embedder", "classifier"):
            print(
                f"{name} dtype=bfloat16 status=skipped reason=no_native_bfloat16 "
                "(bfloat16 is emulated on this CPU; --force-bf16 measures it anyway)",
                flush=True,
            )
    if not args.skip_embedder:
        texts = esconv_dialogue_texts(ESCONV / "test.txt", args.dialogues)
        bench_embedder(texts, dtypes, args.threads)
    if not args.skip_classifier:
        bench_classifier(args.dialogues, dtypes, args.threads)
    print(f"encoders machine load_1m={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
