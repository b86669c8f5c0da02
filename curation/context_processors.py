from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from curation.roles import is_lead


def roles(request: HttpRequest) -> dict[str, Any]:
    """`is_lead` for templates (menus only: every view checks the role itself)."""
    return {"is_lead": is_lead(request.user) if hasattr(request, "user") else False}
