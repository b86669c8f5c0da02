"""Sign-in protection: failed logins lock an account out for a while (django-axes), and pages carry
a Content-Security-Policy (django-csp) that forbids inline code."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db.models import F
from django.urls import reverse

from tests.conftest import ROOT
from tests.test_browser import (  # noqa: F401 (fixtures)
    _allow_sync_orm_beside_playwright,
    browser,
    page,
)
from tests.test_settings import setting

LOGIN = reverse("login")
ADMIN_LOGIN = reverse("admin:login")
HOME = reverse("home")  # which then sends each role to its landing page


def attempts():
    from axes.models import AccessAttempt

    return AccessAttempt.objects


def fail(client, times: int, username: str = "alice", url: str = LOGIN, **extra):
    response = None
    for _ in range(times):
        response = client.post(url, {"username": username, "password": "wrong-guess"}, **extra)
    return response


def log_in(client, username: str = "alice", password: str = "pw-alice-123", url: str = LOGIN):
    return client.post(url, {"username": username, "password": password})


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    assert "registration/login.html" in [t.name for t in response.templates]
    text = response.content.decode()
    assert "Too many failed sign-ins" in text
    assert "Try again in 15 minutes" in text
    assert "_auth_user_id" not in response.wsgi_request.session


@pytest.mark.django_db
class TestLockout:
    def test_the_defaults_are_five_failures_and_fifteen_minutes(self, settings):
        assert settings.AXES_FAILURE_LIMIT == 5
        assert settings.AXES_COOLOFF_TIME.total_seconds() == 15 * 60

    def test_the_fifth_wrong_password_locks_the_user_out_with_a_message(self, client, annotator):
        response = fail(client, 4)
        assert response.status_code == 200
        assert b"didn't match" in response.content
        assert b"Too many failed sign-ins" not in response.content
        response = fail(client, 1)
        assert_locked_out(response)
        assert "alice" in response.content.decode()
        # The page still offers the form, for when the wait is over.
        assert b'name="password"' in response.content

    def test_the_right_password_is_refused_during_the_lockout(self, client, annotator):
        fail(client, 5)
        assert_locked_out(log_in(client))
        assert "_auth_user_id" not in client.session

    def test_the_lockout_follows_the_account_to_other_addresses(self, client, annotator):
        for n in range(5):
            fail(client, 1, REMOTE_ADDR=f"10.0.0.{n}")
        response = client.post(
            LOGIN, {"username": "alice", "password": "pw-alice-123"}, REMOTE_ADDR="10.9.9.9"
        )
        assert_locked_out(response)

    def test_other_accounts_at_the_same_address_still_sign_in(self, client, annotator, lead):
        fail(client, 5)
        response = log_in(client, "lena", "pw-lena-123")
        assert response.status_code == 302 and response.url == HOME

    def test_the_lockout_ends_after_the_cool_off(self, client, annotator, settings):
        fail(client, 5)
        # Just before the cool-off ends, still locked (and that attempt restarts the wait).
        attempts().update(attempt_time=F("attempt_time") - timedelta(minutes=14))
        assert_locked_out(log_in(client))
        # Once a whole cool-off has passed since the last attempt, the lockout is over.
        attempts().update(attempt_time=F("attempt_time") - settings.AXES_COOLOFF_TIME)
        response = log_in(client)
        assert response.status_code == 302 and response.url == HOME

    def test_a_success_resets_the_counter(self, client, annotator):
        fail(client, 4)
        assert log_in(client).status_code == 302
        assert not attempts().filter(username="alice").exists()
        client.post(reverse("logout"))
        response = fail(client, 4)
        assert response.status_code == 200 and b"didn't match" in response.content
        assert log_in(client).status_code == 302

    def test_an_admin_unlocks_a_user_with_axes_reset_username(self, client, annotator):
        fail(client, 5)
        call_command("axes_reset_username", "alice", stdout=StringIO())
        assert log_in(client).status_code == 302

    def test_the_limit_and_cool_off_come_from_the_environment(self):
        env = {"EXTES_LOGIN_FAILURE_LIMIT": "8", "EXTES_LOGIN_COOLOFF_MINUTES": "40"}
        assert setting("settings.AXES_FAILURE_LIMIT", **env) == "8"
        assert setting("settings.AXES_COOLOFF_TIME.total_seconds()", **env) == "2400.0"


@pytest.mark.django_db
class TestAdminLogin:
    def test_the_admin_login_is_throttled(self, client, superuser):
        response = fail(client, 5, username="root-admin", url=ADMIN_LOGIN)
        assert_locked_out(response)
        assert_locked_out(log_in(client, "root-admin", "pw-admin-123", url=ADMIN_LOGIN))

    def test_failures_on_the_site_lock_the_admin_login_too(self, client, superuser):
        fail(client, 5, username="root-admin")
        assert_locked_out(log_in(client, "root-admin", "pw-admin-123", url=ADMIN_LOGIN))

    def test_the_admin_login_still_works(self, client, superuser):
        response = log_in(client, "root-admin", "pw-admin-123", url=ADMIN_LOGIN)
        assert response.status_code == 302
        assert client.get(reverse("admin:index")).status_code == 200


def fetch(path: str, tmp_path, **env: str) -> dict:
    """Status, headers and body of GET PATH, answered by a fresh process with ENV's settings."""
    code = (
        "import json, django; django.setup()\n"
        "from django.test import Client\n"
        f"r = Client().get({path!r}, secure=True)\n"
        "print(json.dumps({'status': r.status_code, 'headers': dict(r.headers),"
        " 'body': r.content.decode()}))"
    )
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL"}}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "EXTES_DATA_DIR": str(tmp_path),
            "ALLOWED_HOSTS": "testserver",
            **env,
        },
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


PRODUCTION = {"DEBUG": "0", "SECRET_KEY": "x" * 20 + "-a-long-random-production-secret-0123456789"}


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def policy():
    from django.conf import settings

    # The test run imports the settings in development mode, where the policy is report-only.
    config = settings.CONTENT_SECURITY_POLICY or settings.CONTENT_SECURITY_POLICY_REPORT_ONLY
    return config["DIRECTIVES"]


TEMPLATES = ROOT / "templates"
SCRIPT = re.compile(r"<script\b[^>]*>")
HANDLER = re.compile(r"\s(?:on[a-z]+|hx-on[\w:-]*)\s*=")
STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>", re.S)
STYLE_ATTR = re.compile(r'\sstyle="([^"]*)"')


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class TestContentSecurityPolicy:
    def test_production_mode_sends_the_policy_and_it_allows_the_htmx_script(self, tmp_path):
        response = fetch(LOGIN, tmp_path, **PRODUCTION)
        assert response["status"] == 200
        assert "Content-Security-Policy-Report-Only" not in response["headers"]
        csp = directives(response["headers"]["Content-Security-Policy"])
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in csp["style-src"]
        # Every script on the page is a file from this origin ('self'): htmx included, no inline code.
        scripts = re.findall(r"<script\b([^>]*)>", response["body"])
        sources = [re.search(r'src="([^"]+)"', attrs).group(1) for attrs in scripts]
        assert any(src.startswith("/static/django_htmx/htmx-2") for src in sources), sources
        assert all(src.startswith("/static/") for src in sources), sources

    def test_development_mode_only_reports(self, tmp_path):
        response = fetch(LOGIN, tmp_path, DEBUG="1")
        assert "Content-Security-Policy" not in response["headers"]
        report_only = directives(response["headers"]["Content-Security-Policy-Report-Only"])
        assert report_only["script-src"] == ["'self'"]

    def test_no_template_has_inline_scripts_or_handlers(self):
        offenders = []
        for path in sorted(TEMPLATES.rglob("*.html")):
            name, text = path.relative_to(TEMPLATES), path.read_text()
            offenders += [f"{name}: {tag}" for tag in SCRIPT.findall(text) if "src=" not in tag]
            # onclick= and the like, and htmx's hx-on (which needs eval)
            offenders += [f"{name}: {h.strip()}" for h in HANDLER.findall(text)]
        assert not offenders, offenders

    def test_every_inline_style_the_studio_serves_is_allowed_by_its_hash(self):
        from training.evaluate import report_html

        pages = {
            str(path.relative_to(TEMPLATES)): path.read_text() for path in TEMPLATES.rglob("*.html")
        }
        pages["evaluation report"] = report_html(
            {"metrics": {}, "samples": [], "model": {"base": "b", "adapter": None}, "data": "d"}
        )
        elements = [(name, css) for name, html in pages.items() for css in STYLE.findall(html)]
        attributes = [
            (name, css) for name, html in pages.items() for css in STYLE_ATTR.findall(html)
        ]
        style_src = policy()["style-src"]
        missing = [
            (name, sha256(css))
            for name, css in elements + attributes
            if sha256(css) not in style_src
        ]
        assert not missing, f"add these hashes to style-src in config/settings.py: {missing}"
        if attributes:
            assert "'unsafe-hashes'" in style_src  # hashes cover style attributes only with it


# In a real Chromium, with the production policy enforced: pages work and nothing is refused.


@pytest.fixture
def enforced(live_server, vocabulary_db, seeds, settings):
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": policy()}
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = None
    user = User.objects.create_superuser("cora", password="cora-pass-123")
    user.groups.add(Group.objects.get(name="lead"))
    return live_server, user


@pytest.mark.browser
def test_pages_work_under_the_enforced_policy(page, enforced):  # noqa: F811
    from playwright.sync_api import expect

    from generation.models import GenerationJob

    server, user = enforced
    refused: list[str] = []
    page.on(
        "console",
        lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.on("pageerror", lambda error: refused.append(str(error)))

    response = page.goto(f"{server.url}{LOGIN}")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.get_by_label("Username").fill("cora")
    page.get_by_label("Password").fill("cora-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dialogues")).to_be_visible()
    assert page.evaluate("typeof htmx") == "object"

    # htmx still swaps: filtering replaces the rows in place.
    page.get_by_label("Search text").fill("zzzz-nothing-matches")
    expect(page.get_by_text("No dialogue matches these filters")).to_be_visible()

    # The toggle that was an inline onclick.
    page.goto(f"{server.url}{reverse('generation-job-new')}")
    boxes = page.locator("input[name=scenarios]")
    before = boxes.evaluate_all("bs => bs.filter(b => b.checked).length")
    page.get_by_role("button", name="Toggle all").click()
    after = boxes.evaluate_all("bs => bs.filter(b => b.checked).length")
    assert after == boxes.count() - before

    # The confirmation that was an inline onsubmit: dismissing it keeps the job.
    job = GenerationJob.objects.create(created_by=user)
    page.goto(f"{server.url}{reverse('generation-job-detail', args=[job.pk])}")
    asked: list[str] = []

    def dismiss(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.get_by_role("button", name="Cancel job").click()
    assert asked and asked[0].startswith("Cancel this job?")
    page.reload()
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()

    for name in ("curation-review-home", "curation-dashboard", "training-job-list", "admin:index"):
        assert page.goto(f"{server.url}{reverse(name)}").status == 200
    page.goto(f"{server.url}{reverse('admin:generation_generationjob_add')}")
    expect(page.locator("#id_scenarios_from")).to_be_visible()  # the admin's own JavaScript ran

    assert not refused, refused
