"""A release folder made of ESConv's own splits, for the reference experiment.

    python manage.py esconv_release --out var/esconv-ref [--esconv DIR] [--dri-turns 300]
        [--candidates 3] [--seed 0]

ESConv's dialogues were written and labelled by people, so they need no review: its train, valid
and test files become the folder's sft/ splits as they are, in the release writer's chat format
(curation.releases.build.sft_example). Then DRI runs the studio's way on `--dri-turns` supporter
turns drawn from the train split: the configured teacher (EXTES_TEACHER_*, by default the local
SmolLM2) fills each masked turn with `--candidates` replies (generation.inpainting, with its
gates and exact deduplication), and every candidate that passed the gates goes to
sft_dri/train.jsonl in prompt-completion form, as the release policy `unrejected` (the paper's
setting) writes them. manifest.json records the teacher, its sampling and what was dropped.

Then: python -m training.experiment --data OUT --out OUT/experiment --arms base,sft,sft_dri
"""

from __future__ import annotations

import json
import os
import random
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from curation.parsing import Rejected, Vocabulary, parse_record
from curation.releases.build import dri_examples, sft_example
from generation import inpainting
from generation.safety import check_texts
from generation.teacher import Sampling, TeacherConfig, get_teacher

SPLITS = ("train", "valid", "test")


class Command(BaseCommand):
    help = "Write a release folder from ESConv's splits, with DRI replies by the teacher."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument(
            "--esconv", type=Path, default=None, help="folder of train/valid/test.txt"
        )
        parser.add_argument("--dri-turns", type=int, default=300, help="train turns to inpaint")
        parser.add_argument("--candidates", type=int, default=3, help="replies per masked turn")
        parser.add_argument("--max-tokens", type=int, default=120, help="per DRI reply")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        source = options["esconv"] or Path(
            os.environ.get("EXTES_ESCONV_DIR", settings.BASE_DIR.parent / "shared/data/esconv")
        )
        out: Path = options["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not empty: choose a new folder")
        vocab = Vocabulary.from_specs()
        snaps: dict[str, list[dict[str, Any]]] = {}
        rejected: dict[str, int] = {}
        for split in SPLITS:
            path = source / f"{split}.txt"
            if not path.is_file():
                raise CommandError(f"{path} is missing")
            snaps[split], rejected[split] = _read(path, split, vocab)
            _write(out / "sft" / f"{split}.jsonl", [sft_example(s) for s in snaps[split]])
            self.stdout.write(
                f"{split}: {len(snaps[split])} dialogues ({rejected[split]} rejected)"
            )

        config = TeacherConfig.from_env()
        teacher = get_teacher(config)
        sampling = Sampling(temperature=0.9, top_p=0.95, max_tokens=options["max_tokens"])
        rng = random.Random(options["seed"])
        gaps = [
            (snap, turn)
            for snap in snaps["train"]
            for turn in snap["turns"]
            if turn["role"] == "supporter" and turn["index"] > 0
        ]
        chosen = rng.sample(gaps, min(options["dri_turns"], len(gaps)))
        dropped: dict[str, int] = {}
        started = time.monotonic()
        for done, (snap, turn) in enumerate(chosen, start=1):
            context = [inpainting.ContextTurn(t["role"], t["text"]) for t in snap["turns"]]
            result = inpainting.write_candidates(
                teacher,
                context,
                turn["index"],
                turn["strategy"] or "whichever strategy fits best",
                options["candidates"],
                sampling,
                inpainting.exact_deduplicate,
            )
            for failure in result.failures:
                dropped[failure.failure_class] = dropped.get(failure.failure_class, 0) + 1
            for text in result.texts:
                if check_texts([text]).flagged:  # the crisis gate holds flagged replies back
                    dropped["crisis_flagged"] = dropped.get("crisis_flagged", 0) + 1
                    continue
                key = f"c{len(snap['candidates'])}"
                snap["candidates"].append(
                    {"turn_index": turn["index"], "key": key, "text": text,
                     "strategy": turn["strategy"], "acceptable": False}
                )  # fmt: skip
            if done % 10 == 0 or done == len(chosen):
                rate = done / max(1e-9, time.monotonic() - started)
                self.stdout.write(f"DRI {done}/{len(chosen)} turns ({rate:.2f} turns/s)")
        examples = [e for snap in snaps["train"] for e in dri_examples(snap, "unrejected")]
        _write(out / "sft_dri" / "train.jsonl", examples)
        manifest = {
            "source": "ESConv train/valid/test as published, no review",
            "dialogues": {split: len(snaps[split]) for split in SPLITS},
            "rejected_records": rejected,
            "dri": {
                "policy": "unrejected",
                "turns_masked": len(chosen),
                "candidates_asked": options["candidates"],
                "examples": len(examples),
                "dropped": dropped,
                "teacher": config.as_dict(),
                "sampling": sampling.as_dict(),
                "seed": options["seed"],
                "seconds": round(time.monotonic() - started, 1),
            },
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        self.stdout.write(f"sft_dri: {len(examples)} examples from {len(chosen)} masked turns")
        self.stdout.write(f"wrote {out}")


def _read(path: Path, split: str, vocab: Vocabulary) -> tuple[list[dict[str, Any]], int]:
    """Snapshots in the shape the release writer takes; records the parser refuses are counted."""
    found, rejected = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = parse_record(json.loads(line), "esconv", vocab)
        except (Rejected, ValueError):
            rejected += 1
            continue
        found.append(
            {
                "id": f"esconv-{split}-{number}",
                "scene": parsed.scene,
                "turns": [
                    {"index": i, "role": t.role, "text": t.text, "strategy": t.strategy}
                    for i, t in enumerate(parsed.turns)
                ],
                "candidates": [],
                "rankings": [],
            }
        )
    return found, rejected


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
