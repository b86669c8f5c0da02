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


def setting(expression: str, **env: str) -> str:
    """The value of a settings expression in a fresh process with ENV."""
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_database_url_selects_postgresql():
    engine = setting(
        "settings.DATABASES['default']['ENGINE']",
        DATABASE_URL="postgres://u:p@db.internal:5432/extes",
    )
    assert engine == "django.db.backends.postgresql"


def test_data_dir_holds_the_sqlite_file(tmp_path):
    name = setting("settings.DATABASES['default']['NAME']", EXTES_DATA_DIR=str(tmp_path / "d"))
    assert name == str(tmp_path / "d" / "extes.sqlite3")


def test_bad_boolean_is_a_clear_error(tmp_path):
    result = manage("check", DEBUG="maybe", EXTES_DATA_DIR=str(tmp_path))
    assert "DEBUG must be a boolean" in result.stderr


def test_bad_encoder_precision_or_stream_setting_stops_the_studio(tmp_path):
    result = manage("check", EXTES_ENCODER_PRECISION="float16", EXTES_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "EXTES_ENCODER_PRECISION must be auto, float32 or bfloat16" in result.stderr
    result = manage("check", EXTES_TEACHER_STREAM="sometimes", EXTES_DATA_DIR=str(tmp_path))
    assert "EXTES_TEACHER_STREAM must be a boolean" in result.stderr
