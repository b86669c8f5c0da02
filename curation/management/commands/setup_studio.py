from __future__ import annotations

import os
import secrets
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand
from django.db import transaction

from curation import vocabulary
from curation.importing import import_file
from curation.models import Dialogue, Scenario, Strategy

SEED_FILE = Path(__file__).resolve().parents[2] / "seeds" / "seed_dialogues.json"

# What each role may do in the Django admin; "admin" users are superusers.
ROLE_PERMISSIONS = {
    "annotator": ["view_dialogue", "view_turn", "view_scenario", "view_strategy"],
    "lead": [
        "view_dialogue",
        "change_dialogue",
        "view_turn",
        "change_turn",
        "view_scenario",
        "add_scenario",
        "change_scenario",
        "view_strategy",
        "change_strategy",
    ],
    "admin": [],
}
DEMO_USERS = {"annotator": "annotator", "lead": "lead", "admin": "admin"}  # username -> role


class Command(BaseCommand):
    help = "Prepare a studio after `migrate`: roles, the seed dialogues, and demo accounts. Idempotent."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--no-demo-users", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            vocabulary.install(Strategy, Scenario, Group)
            for role, codenames in ROLE_PERMISSIONS.items():
                group, _ = Group.objects.get_or_create(name=role)
                group.permissions.set(
                    Permission.objects.filter(
                        content_type__app_label="curation", codename__in=codenames
                    )
                )
        report = import_file(
            SEED_FILE,
            "extes",
            origin=Dialogue.Origin.SEED,
            source_name="curation/seeds/seed_dialogues.json",
        )
        self.stdout.write(
            f"Seed dialogues: {report.imported} new, {report.duplicates} already loaded, "
            f"{sum(report.rejected.values())} rejected"
        )
        if not options["no_demo_users"]:
            self._demo_users()

    def _demo_users(self) -> None:
        shared = os.environ.get("EXTES_DEMO_PASSWORD", "")
        for username, role in DEMO_USERS.items():
            user, created = User.objects.get_or_create(username=username)
            user.groups.add(Group.objects.get(name=role))
            if not created:
                self.stdout.write(
                    f"Demo account {username!r} ({role}) exists; its password is unchanged."
                )
                continue
            password = shared or secrets.token_urlsafe(9)
            user.set_password(password)
            user.is_staff = role in {"lead", "admin"}
            user.is_superuser = role == "admin"
            user.save()
            shown = "(from EXTES_DEMO_PASSWORD)" if shared else password
            self.stdout.write(
                self.style.SUCCESS(f"Created demo account {username!r} ({role}), password: {shown}")
            )
        if not shared:
            self.stdout.write(
                "Generated passwords are shown only once. Reset one with "
                "`python manage.py changepassword USERNAME`."
            )
