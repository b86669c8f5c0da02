"""Choices a server does not return for `n`: asked for one after another (the baseline) or all at
once (what HttpTeacher.chat does), against the HTTP fake teacher answering after `--latency`
seconds and ignoring `n` as llama.cpp's server does.

    python bench/teacher_n.py [--n 4] [--latency 0.2] [--calls 5]

Prints:
    teacher_ignores_n variant=sequential n=4 latency_s=0.2 seconds_per_call=…
    teacher_ignores_n variant=concurrent n=4 latency_s=0.2 seconds_per_call=… speedup=…
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(n: int, latency: float, calls: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from generation.teacher import HttpTeacher, Reply, Sampling
    from tests.fake_teacher import FakeTeacher
    from tests.test_teacher_http import DRI_PROMPT

    with FakeTeacher(latency=latency) as fake:
        fake.ignore_n = True
        teacher = HttpTeacher(fake.url, "fake-teacher", api_key="sk-bench", max_retries=0)

        def sequential() -> Reply:
            reply = Reply(completions=[])
            for _ in range(n):  # what the client did before: one missing choice after another
                reply.completions.extend(teacher._call(DRI_PROMPT, Sampling(), 1).completions)
            return reply

        timings = {}
        for name, run in (("sequential", sequential),
                          ("concurrent", lambda: teacher.chat(DRI_PROMPT, Sampling(), n=n))):  # fmt: skip
            started = time.perf_counter()
            for _ in range(calls):
                assert len(run().completions) == n
            timings[name] = (time.perf_counter() - started) / calls
        base = timings["sequential"]
        print(f"teacher_ignores_n variant=sequential n={n} latency_s={latency} "
              f"seconds_per_call={base:.3f}")  # fmt: skip
        print(f"teacher_ignores_n variant=concurrent n={n} latency_s={latency} "
              f"seconds_per_call={timings['concurrent']:.3f} speedup={base / timings['concurrent']:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    main(args.n, args.latency, args.calls)
