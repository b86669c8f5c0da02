"""Filters for any page: stored JSON shown as JSON."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON, as stored (the template escapes it)."""
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False, default=str)
