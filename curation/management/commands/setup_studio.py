from __future__ import annotations

import os
import secrets
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand
from django.db import transaction

from curation import screening, vocabulary
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
# Leads watch training jobs and experiments, read-only; admins start them (superusers).
TRAINING_PERMISSIONS = {"lead": ["view_trainingjob", "view_experiment"]}
# username -> role: two annotators, as every dialogue needs two reviews by default.
DEMO_USERS = {"annotator": "annotator", "annotator2": "annotator", "lead": "lead", "admin": "admin"}
ROLES = tuple(ROLE_PERMISSIONS)


def make_user(username: str, role: str, password: str) -> User:
    """A new account in one role (leads and admins reach the Django admin; admins are
    superusers). ValueError when the name is taken or the role unknown."""
    if role not in ROLES:
        raise ValueError(f"{role!r} is not a role: choose {', '.join(ROLES)}.")
    if User.objects.filter(username=username).exists():
        raise ValueError(f"There is already an account called {username!r}.")
    user = User.objects.create_user(username, password=password)
    user.groups.add(Group.objects.get(name=role))
    user.is_staff = role in {"lead", "admin"}
    user.is_superuser = role == "admin"
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


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
                    | Permission.objects.filter(
                        content_type__app_label="training",
                        codename__in=TRAINING_PERMISSIONS.get(role, []),
                    )
                )
        report = import_file(
            SEED_FILE,
            "extes",
            origin=Dialogue.Origin.SEED,
            source_name="curation/seeds/seed_dialogues.json",
            # A few dozen: screened here, so the studio opens with them ready for review.
            screen="rules" if screening.mode() == "off" else "inline",
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
            if User.objects.filter(username=username).exists():
                self.stdout.write(
                    f"Demo account {username!r} ({role}) exists; its password is unchanged."
                )
                continue
            password = shared or secrets.token_urlsafe(9)
            make_user(username, role, password)
            shown = "(from EXTES_DEMO_PASSWORD)" if shared else password
            self.stdout.write(
                self.style.SUCCESS(f"Created demo account {username!r} ({role}), password: {shown}")
            )
        if not shared:
            self.stdout.write(
                "Generated passwords are shown only once. Reset one with "
                "`python manage.py changepassword USERNAME`."
            )
