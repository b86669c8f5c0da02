"""How often the DRI prompt-leakage gate (generation.inpainting.prompt_leakage) would reject real
supporter turns: the seed dialogues' and ESConv's train split's (read in place), and how long it
takes per turn.

    python bench/dri_leakage.py [--limit N]

Prints:
    dri_leakage corpus=seeds supporter_turns=… rejected=… rate=… us_per_turn=…
    dri_leakage corpus=esconv supporter_turns=… rejected=… rate=… us_per_turn=…
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(limit: int | None) -> None:
    from generation.inpainting import prompt_leakage

    seeds = json.loads((ROOT / "curation" / "seeds" / "seed_dialogues.json").read_text())
    esconv_dir = Path(
        os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv")
    )
    corpora = {
        "seeds": [t["AI"] for d in seeds for t in d["content"] if "AI" in t],
        "esconv": [
            t["text"]
            for line in (esconv_dir / "train.txt").read_text(encoding="utf-8").splitlines()
            for t in json.loads(line)["dialog"]
            if t["speaker"] == "sys"
        ],
    }
    for name, texts in corpora.items():
        texts = texts[:limit] if limit else texts
        started = time.perf_counter()
        rejected = [t for t in texts if prompt_leakage(t)]
        seconds = time.perf_counter() - started
        print(
            f"dri_leakage corpus={name} supporter_turns={len(texts)} rejected={len(rejected)} "
            f"rate={len(rejected) / max(1, len(texts)):.4f} "
            f"us_per_turn={1e6 * seconds / max(1, len(texts)):.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="at most this many turns a corpus")
    main(parser.parse_args().limit)
