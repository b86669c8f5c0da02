"""Print the URL of a PostgreSQL the database-sensitive tests can use, or nothing.

DATABASE_URL when set; else the server on 127.0.0.1:5432 (trust auth, as on our machines);
else, where Debian's cluster tools are installed and we are root, start the local cluster.
Diagnostics go to stderr, so `make test` can capture the URL alone.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import psycopg

CANDIDATES = ["postgres://postgres@127.0.0.1:5432/postgres", "postgres://root@127.0.0.1:5432/test"]


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_local_cluster() -> None:
    versions = [os.path.basename(p) for p in glob.glob("/etc/postgresql/*")]
    if not versions or os.geteuid() != 0:
        return
    print(f"starting the local PostgreSQL {versions[0]} cluster", file=sys.stderr)
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
        check=False,
        capture_output=True,
    )
    time.sleep(2)


def main() -> int:
    configured = os.environ.get("DATABASE_URL", "")
    if configured.startswith("postgres"):
        if answers(configured):
            print(configured)
            return 0
        print(f"DATABASE_URL does not answer: {configured}", file=sys.stderr)
        return 0
    for attempt in range(2):
        for url in CANDIDATES:
            if answers(url):
                print(url)
                return 0
        if attempt == 0:
            start_local_cluster()
    return 0


if __name__ == "__main__":
    sys.exit(main())
