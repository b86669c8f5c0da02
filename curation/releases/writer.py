"""The child process of `curation.releases.build.ChildWriter`: a release's JSON and Parquet files
from the snapshots its parent sends down a pipe.

The parent writes frames to this process's standard input: first a header (JSON: the output
folder, the file options, the DRI policy, the ESConv names of the strategies), then one frame per
snapshot (its split's number and its JSON), then an end frame. This process then closes the JSON
files, answers on standard output with the card's tally (pickled, length first), writes the
Parquet files and exits 0. Standard input closing before the end frame means the parent stopped:
this process stops too, with a non-zero status, and leaves its half-written files to the parent's
clean-up. It never touches the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

END = 255  # the frame after the last snapshot
HEADER = 254
_PIPE_SIZE = 1 << 20  # a larger pipe lets the two processes drift apart by more than 64 KiB
_F_SETPIPE_SZ = 1031  # Linux's fcntl command (not in the fcntl module before Python 3.10 on all)


def frame(code: int, payload: bytes) -> bytes:
    return bytes((code,)) + len(payload).to_bytes(4, "little") + payload


def start(header: dict[str, Any], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    """The child, sent its header; its standard input and output are the parent's pipe ends."""
    import orjson
    from django.conf import settings

    child = subprocess.Popen(
        [sys.executable, "-m", "curation.releases.writer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=settings.BASE_DIR,
        bufsize=1 << 20,
    )
    assert child.stdin is not None
    # Not on Linux, or above the system's limit, the default size works too.
    with contextlib.suppress(OSError):
        fcntl.fcntl(child.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
    child.stdin.write(frame(HEADER, orjson.dumps(header)))
    return child


def read_tally(answers: IO[bytes]) -> Any:
    """The tally the child answers with once it has every snapshot; None if it died first."""
    head = answers.read(8)
    if len(head) < 8:
        return None
    size = int.from_bytes(head, "little")
    body = answers.read(size)
    return pickle.loads(body) if len(body) == size else None


def _read(stream: IO[bytes]) -> tuple[int, bytes]:
    head = stream.read(5)
    if len(head) < 5:
        raise SystemExit("release writer: the builder closed the pipe before the end; stopped")
    size = int.from_bytes(head[1:], "little")
    payload = stream.read(size)
    if len(payload) < size:
        raise SystemExit("release writer: the builder closed the pipe mid-snapshot; stopped")
    return head[0], payload


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import orjson

    from curation.releases.build import SPLITS, FileOptions, Output, write_parquet

    stream = sys.stdin.buffer
    code, payload = _read(stream)
    if code != HEADER:
        raise SystemExit("release writer: no header")
    header = orjson.loads(payload)
    out = Path(header["out"])
    output = Output(
        out, FileOptions.from_dict(header["options"]), header["dri_policy"], header["esconv_names"]
    )
    add, loads = output.add, orjson.loads
    while True:
        code, payload = _read(stream)
        if code == END:
            break
        add(SPLITS[code], loads(payload))
    output.close()
    tally = pickle.dumps(output.tally, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.write(len(tally).to_bytes(8, "little") + tally)
    sys.stdout.buffer.flush()
    write_parquet(out)
    sys.stdout.buffer.write(peak_kib().to_bytes(8, "little"))  # for benchmarks: its own peak


def peak_kib() -> int:
    """This process's peak resident memory in KiB (Linux's VmHWM; 0 elsewhere). Not
    `ru_maxrss`: Linux keeps that across the exec that started the process, so a child reports
    at least what its parent held when it forked."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_peak(answers: IO[bytes]) -> float | None:
    """The child's own peak memory in MiB, which it sends last; None if it sent none."""
    sent = answers.read(8)
    return int.from_bytes(sent, "little") / 1024 if len(sent) == 8 else None


if __name__ == "__main__":
    main()
