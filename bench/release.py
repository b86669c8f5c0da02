"""A release of N dialogues with all its files, against a bare json.dump of the same dialogues.

    python bench/release.py [--dialogues 100000]

Fills a fresh SQLite database with N accepted dialogues of 16 turns (copies of the seeds, as
bench/review.py does), then times freezing the release and writing every file (ExTES JSON, SFT,
SFT+DRI, DPO, ESConv, Parquet, the card and its charts, the manifest), and, as the baseline,
`json.dump` of the same dialogues as ExTES records. Prints:
    release dialogues=N freeze_s=… files_s=… total_s=… peak_rss_mib=…
    json_dump dialogues=N seconds=…
    release_vs_json_dump ratio=…
Targets (issue 5): at most 2x json.dump, peak memory under 1 GiB (the peak is that of this whole
process, so it includes the fill and the baseline's in-memory list, which is measured last).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(dialogues: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="extes-bench-release-"))
    os.environ["EXTES_DATA_DIR"] = str(data)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from review import _fill  # the same synthetic table as bench/review.py

    from curation.models import Dialogue, Release
    from curation.releases import extes_record, freeze, new_release, snapshots, write_files

    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115
    _fill(dialogues)
    Dialogue.objects.update(status="accepted")
    count = Dialogue.objects.count()

    start = time.perf_counter()
    release = new_release("bench-release")
    freeze(release)
    frozen = time.perf_counter()
    write_files(release, data / "release")
    done = time.perf_counter()
    Release.objects.filter(pk=release.pk).update(status="ready")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"release dialogues={count} freeze_s={frozen - start:.1f} files_s={done - frozen:.1f} "
        f"total_s={done - start:.1f} peak_rss_mib={peak:.0f}",
        flush=True,
    )

    records = [extes_record(snap) for _, snap in snapshots(release)]
    began = time.perf_counter()
    with (data / "baseline.json").open("w", encoding="utf-8") as out:
        json.dump(records, out, ensure_ascii=False, indent=2)
    baseline = time.perf_counter() - began
    print(f"json_dump dialogues={len(records)} seconds={baseline:.1f}")
    print(f"release_vs_json_dump ratio={(done - start) / baseline:.2f}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=100_000)
    return parser


if __name__ == "__main__":
    main(make_parser().parse_args().dialogues)
