"""Writing evaluation replies: batched (what training.evaluate does now) against one at a time.

    python bench/evaluate.py                      # SmolLM2-135M, the first 32 ESConv test turns
    python bench/evaluate.py --turns 64 --batch-size 16 --max-new-tokens 64

Both sides write greedy replies of at most --max-new-tokens to the same ESConv test contexts
(ESConv's test.txt as bench/training.py reads it; contexts as training.evaluate takes them), with the
same model in the same process:
  (a) one_by_one: one generate() per turn, in file order (what evaluation did before);
  (b) batched: training.evaluate.write_replies, --batch-size contexts of similar length per
      generate(), left-padded.
Greedy replies can differ a little between the two (padding changes the float sums), so the
share of identical replies is printed too. One line per figure:
  eval_one_by_one replies_per_s=… seconds=… turns=…
  eval_batched replies_per_s=… seconds=… turns=… batch_size=…
  eval_ratio ratio=… identical=…
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from bench.training import esconv_chats
    from generation.localmodel import LocalRunner
    from training.common import resolve_base
    from training.evaluate import Greedy, supporter_turns, write_replies

    runner = LocalRunner(Path(resolve_base(None)))
    # Each dialogue gives a dozen turns or more: as many dialogues as turns is plenty.
    samples = supporter_turns(esconv_chats(args.turns, "test"), args.turns)
    chats = [s.context for s in samples]
    greedy = Greedy(args.max_new_tokens)
    runner.generate([chats[0]], greedy)  # warm-up, not timed

    started = time.perf_counter()
    alone = [runner.generate([chat], greedy)[0][0].text for chat in chats]
    one_by_one = time.perf_counter() - started
    print(f"eval_one_by_one replies_per_s={len(chats) / one_by_one:.3f} "
          f"seconds={one_by_one:.1f} turns={len(chats)}", flush=True)  # fmt: skip

    started = time.perf_counter()
    write_replies(
        samples,
        lambda batch, _: [r.text for [r] in runner.generate(batch, greedy)],
        args.batch_size,
    )
    batched = time.perf_counter() - started
    print(f"eval_batched replies_per_s={len(chats) / batched:.3f} seconds={batched:.1f} "
          f"turns={len(chats)} batch_size={args.batch_size}", flush=True)  # fmt: skip
    same = sum(a == s.reply for a, s in zip(alone, samples, strict=True)) / len(chats)
    print(f"eval_ratio ratio={one_by_one / batched:.2f} identical={same:.2f}")


if __name__ == "__main__":
    main()
