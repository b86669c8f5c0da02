from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, **env},
    )


def test_production_mode_passes_check_deploy(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="x" * 20 + "-a-long-random-production-secret-0123456789",
        ALLOWED_HOSTS="studio.example.org",
        EXTES_DATA_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_development_mode_is_flagged_by_check_deploy(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", EXTES_DATA_DIR=str(tmp_path))
    assert result.returncode != 0


def test_production_mode_refuses_to_start_without_a_secret_key(tmp_path):
    result = manage("check", DEBUG="0", EXTES_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_database_url_selects_postgresql():
    code = "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    result = subprocess.run(
        [sys.executable, "-c", f"import django, os; django.setup(); {code}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": "postgres://u:p@db.internal:5432/extes",
        },
    )
    assert result.stdout.strip() == "django.db.backends.postgresql", result.stderr


def test_data_dir_holds_the_sqlite_file(tmp_path):
    code = "from django.conf import settings; print(settings.DATABASES['default']['NAME'])"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "EXTES_DATA_DIR": str(tmp_path / "d"),
        },
    )
    assert result.stdout.strip() == str(tmp_path / "d" / "extes.sqlite3"), result.stderr


def test_bad_boolean_is_a_clear_error(tmp_path):
    result = manage("check", DEBUG="maybe", EXTES_DATA_DIR=str(tmp_path))
    assert "DEBUG must be a boolean" in result.stderr
