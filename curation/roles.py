"""Who may do what: roles are the Django groups annotator, lead and admin."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def is_lead(user: Any) -> bool:
    """Leads and admins (and superusers) run jobs and releases."""
    if not user.is_authenticated:
        return False
    cached = getattr(user, "_is_lead", None)  # asked by the view and the menu: one query
    if cached is None:
        cached = user.is_superuser or user.groups.filter(name__in=["lead", "admin"]).exists()
        user._is_lead = cached
    return bool(cached)


def lead_required(view: Callable[..., Any]) -> Callable[..., HttpResponseBase]:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_lead(request.user):
            raise PermissionDenied("This page is for project leads.")
        return view(request, *args, **kwargs)

    return wrapped
