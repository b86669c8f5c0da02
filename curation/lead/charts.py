"""Small horizontal bar charts as inline SVG, drawn on the server: no script, no CDN, readable
in any browser and in a screenshot. Each chart also has its numbers in a table and a CSV."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

ROW = 22  # pixels per row
LABEL = 230  # width of the label column
WIDTH = 720
PALETTE = ["#2f6f5e", "#9ca3af", "#c2410c", "#1d4ed8", "#a16207", "#7c3aed"]


def _frame(height: int, title: str, body: list[str], legend: Sequence[tuple[str, str]] = ()) -> str:
    keys = []
    x = LABEL
    for name, colour in legend:
        keys.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="15" class="key">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(keys)}{''.join(body)}</svg>"
    )


def _label(y: int, text: str) -> str:
    short = text if len(text) <= 34 else text[:32] + "…"
    return f'<text x="{LABEL - 6}" y="{y + 14}" text-anchor="end"><title>{escape(text)}</title>{escape(short)}</text>'


def bars(rows: Sequence[tuple[str, float | None]], title: str, percent: bool = False) -> str:
    """One bar per row; None draws no bar and says "n/a"."""
    top = max([v for _, v in rows if v is not None] + [1e-9])
    span = WIDTH - LABEL - 70
    body = []
    for i, (name, value) in enumerate(rows):
        y = 24 + i * ROW
        body.append(_label(y, name))
        if value is None:
            body.append(f'<text x="{LABEL + 4}" y="{y + 14}" class="muted">n/a</text>')
            continue
        width = span * value / top
        shown = f"{100 * value:.0f}%" if percent else f"{value:g}"
        body.append(
            f'<rect x="{LABEL}" y="{y + 3}" width="{width:.1f}" height="{ROW - 6}" fill="{PALETTE[0]}"/>'
            f'<text x="{LABEL + width + 4:.1f}" y="{y + 14}">{shown}</text>'
        )
    return _frame(30 + ROW * len(rows), title, body)


def stacked(
    rows: Sequence[tuple[str, Sequence[int]]],
    series: Sequence[str],
    title: str,
    colours: Sequence[str] | None = None,
) -> str:
    """One bar per row split into the series (e.g. dialogues per status), with the total."""
    colours = colours or [PALETTE[k % len(PALETTE)] for k in range(len(series))]
    top = max([sum(values) for _, values in rows] + [1])
    span = WIDTH - LABEL - 60
    body = []
    for i, (name, values) in enumerate(rows):
        y = 24 + i * ROW
        body.append(_label(y, name))
        x = float(LABEL)
        for k, value in enumerate(values):
            if value:
                width = span * value / top
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{ROW - 6}" '
                    f'fill="{colours[k]}"><title>{escape(series[k])}: {value}</title></rect>'
                )
                x += width
        body.append(f'<text x="{x + 4:.1f}" y="{y + 14}">{sum(values)}</text>')
    legend = list(zip(series, colours, strict=True))
    return _frame(30 + ROW * len(rows), title, body, legend)


def paired(
    rows: Sequence[tuple[str, float | None, float | None]], series: tuple[str, str], title: str
) -> str:
    """Two thin bars per row (e.g. this data's share against a target share), in percent."""
    top = max([v for _, a, b in rows for v in (a, b) if v is not None] + [1e-9])
    span = WIDTH - LABEL - 60
    body = []
    for i, (name, first, second) in enumerate(rows):
        y = 24 + i * ROW
        body.append(_label(y, name))
        for k, value in enumerate((first, second)):
            if value is None:
                continue
            width = span * value / top
            body.append(
                f'<rect x="{LABEL}" y="{y + 2 + k * 9}" width="{width:.1f}" height="8" '
                f'fill="{PALETTE[k]}"><title>{escape(series[k])}: {100 * value:.1f}%</title></rect>'
            )
        if first is not None:
            body.append(
                f'<text x="{LABEL + span * first / top + 4:.1f}" y="{y + 10}" class="small">'
                f"{100 * first:.1f}%</text>"
            )
    return _frame(
        30 + ROW * len(rows), title, body, [(series[0], PALETTE[0]), (series[1], PALETTE[1])]
    )
