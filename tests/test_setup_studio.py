from __future__ import annotations

import json
import re
from collections import Counter
from io import StringIO
from itertools import pairwise

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from curation.models import Dialogue, Scenario, Strategy, Turn
from tests.conftest import SEED_FILE

pytestmark = pytest.mark.django_db


def setup(**env) -> str:
    out = StringIO()
    call_command("setup_studio", stdout=out)
    return out.getvalue()


def test_setup_loads_seeds_and_creates_demo_accounts(monkeypatch):
    monkeypatch.delenv("EXTES_DEMO_PASSWORD", raising=False)
    output = setup()
    assert "Seed dialogues: 48 new" in output
    passwords = dict(re.findall(r"Created demo account '(\w+)' \(\w+\), password: (\S+)", output))
    assert set(passwords) == {"annotator", "annotator2", "lead", "admin"}
    for username, password in passwords.items():
        assert User.objects.get(username=username).check_password(password)
    assert User.objects.get(username="admin").is_superuser
    assert User.objects.get(username="lead").is_staff
    assert not User.objects.get(username="annotator").is_staff
    assert User.objects.get(username="lead").has_perm("curation.change_dialogue")
    assert not User.objects.get(username="annotator").has_perm("curation.change_dialogue")


def test_second_setup_keeps_data_and_passwords(monkeypatch):
    monkeypatch.setenv("EXTES_DEMO_PASSWORD", "a-demo-pass-word")
    setup()
    Dialogue.objects.filter(pk=Dialogue.objects.first().pk).update(status="accepted")
    output = setup()
    assert "Seed dialogues: 0 new, 48 already loaded" in output
    assert "password is unchanged" in output
    assert User.objects.get(username="lead").check_password("a-demo-pass-word")
    assert Dialogue.objects.filter(status="accepted").count() == 1


def test_seed_dialogues_meet_the_brief():
    setup()
    seeds = Dialogue.objects.filter(origin="seed")
    official = set(Scenario.objects.filter(is_official=True).values_list("name", flat=True))
    per_scenario = Counter(seeds.values_list("scenario__name", flat=True))
    assert seeds.count() >= 36
    assert set(per_scenario) == official
    biggest = max(official, key=lambda n: Scenario.objects.get(name=n).extes_count)
    assert per_scenario[biggest] >= 2
    for dialogue in seeds:
        assert dialogue.repairs == []
        assert 10 <= dialogue.turns.count() <= 18
    supporter = Turn.objects.filter(dialogue__origin="seed", role="supporter")
    assert not supporter.filter(strategy__isnull=True).exists()
    used = set(supporter.values_list("strategy__name", flat=True))
    assert used == set(Strategy.objects.filter(taxonomy="extes").values_list("name", flat=True))


def test_seed_file_is_plain_extes():
    records = json.loads(SEED_FILE.read_text())
    for record in records:
        assert list(record) == ["scene", "description", "content"]
        roles = ["User" if "User" in u else "AI" for u in record["content"]]
        assert roles[0] == "User" and roles[-1] == "AI"
        assert all(a != b for a, b in pairwise(roles))
    descriptions = [r["description"] for r in records]
    assert len(set(descriptions)) == len(descriptions)


def test_add_user_creates_an_account_in_a_role_and_prints_its_password(monkeypatch):
    from django.contrib.auth.models import User
    from django.core.management import CommandError

    call_command("setup_studio", "--no-demo-users", stdout=StringIO())
    out = StringIO()
    call_command("add_user", "maria", "--role", "lead", stdout=out)
    (password,) = re.findall(r"Created 'maria' \(lead\), password: (\S+)", out.getvalue())
    maria = User.objects.get(username="maria")
    assert maria.check_password(password) and maria.is_staff and not maria.is_superuser
    assert list(maria.groups.values_list("name", flat=True)) == ["lead"]
    monkeypatch.setenv("EXTES_NEW_USER_PASSWORD", "chosen-pass-word-1")
    out = StringIO()
    call_command("add_user", "nico", "--role", "annotator", stdout=out)
    assert "chosen-pass-word-1" not in out.getvalue()
    assert User.objects.get(username="nico").check_password("chosen-pass-word-1")
    with pytest.raises(CommandError, match="already an account called 'nico'"):
        call_command("add_user", "nico", "--role", "annotator", stdout=StringIO())


def test_a_403_is_logged_as_one_line(client, annotator, caplog):
    import logging

    client.force_login(annotator)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/lead/").status_code == 403
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    # Django attaches the traceback; the studio's console handler drops it before any output.
    assert record.exc_info is None and record.exc_text is None
    formatted = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert formatted == "WARNING Forbidden (Permission denied): /lead/"
