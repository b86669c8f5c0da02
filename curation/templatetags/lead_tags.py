"""Filters for the leads' tables: one cell of a row, a column's title."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "—"
    if isinstance(value, float):
        if column.endswith(("share", "rate")):
            return f"{100 * value:.1f}%"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@register.filter
def column_title(column: str) -> str:
    return column.replace("_", " ").capitalize()
