"""Add a studio account in one role: `python manage.py add_user NAME --role annotator`."""

from __future__ import annotations

import os
import secrets
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from curation.management.commands.setup_studio import ROLES, make_user


class Command(BaseCommand):
    help = (
        "Add an account with a role (annotator, lead or admin). The password comes from "
        "EXTES_NEW_USER_PASSWORD when set, else one is generated and printed once."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)

    def handle(self, *args: Any, **options: Any) -> None:
        given = os.environ.get("EXTES_NEW_USER_PASSWORD", "")
        password = given or secrets.token_urlsafe(9)
        try:
            make_user(options["username"], options["role"], password)
        except ValueError as problem:
            raise CommandError(str(problem)) from None
        shown = "(from EXTES_NEW_USER_PASSWORD)" if given else password
        self.stdout.write(
            self.style.SUCCESS(
                f"Created {options['username']!r} ({options['role']}), password: {shown}"
            )
        )
