"""Small charts as inline SVG (horizontal bars, a confusion heatmap), drawn on the server: no
script, no CDN, readable in any browser and in a screenshot, and cheap enough to draw on every
request. Each chart also has its numbers in a table and a CSV."""

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
    return _svg("chart", WIDTH, height, title, keys + body, 'width="100%"')


def _svg(kind: str, width: int, height: int, title: str, body: list[str], extra: str = "") -> str:
    """An SVG document of class `kind` with an accessible `title`."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{kind}" role="img" '
        f'viewBox="0 0 {width} {height}" {extra} aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 2] + "…"


def _label(y: int, text: str) -> str:
    short = _short(text, 34)
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


CELL = 26  # pixels per heatmap cell
BLUES = ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]  # light to dark, evenly spaced


def _blue(share: float) -> str:
    """The colour of a cell holding `share` (0..1) of the largest count, between BLUES' stops."""
    position = min(max(share, 0.0), 1.0) * (len(BLUES) - 1)
    low = min(int(position), len(BLUES) - 2)
    t = position - low
    a, b = (tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in BLUES[low : low + 2])
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b, strict=True))


def heatmap(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str, rows: str, columns: str
) -> str:
    """A confusion table as a heatmap: `matrix[row][column]` in `labels` order, rows named by
    `rows`, columns by `columns`. Each cell is a group with data-cell="<row>-<column>" holding its
    count as text; the same bytes for the same table."""
    size = len(labels)
    if size == 0:
        empty = [
            f'<text x="160" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
            '<text x="160" y="50" text-anchor="middle" fill="#6b7280">no labelled pairs</text>',
        ]
        return _svg("heatmap", 320, 80, title, empty, 'font-size="11"')
    short = [_short(name, 28) for name in labels]
    reach = 6.2 * max(len(name) for name in short)  # about 6.2 px per character at 11 px
    left, top = int(reach) + 34, 34
    grid = CELL * size
    bottom = top + grid + int(0.71 * reach) + 34  # column labels run down at 45 degrees
    width, height = left + grid + 120, bottom + 8
    largest = max((max(row) for row in matrix), default=0)
    most = largest or 1
    body = [
        f'<text x="{left + grid / 2:.0f}" y="18" text-anchor="middle" font-weight="bold">'
        f"{escape(title)}</text>",
        f'<text x="12" y="{top + grid / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + grid / 2:.0f})">{escape(rows)}</text>',
        f'<text x="{left + grid / 2:.0f}" y="{bottom - 4}" text-anchor="middle">'
        f"{escape(columns)}</text>",
    ]
    for i, (name, shown) in enumerate(zip(labels, short, strict=True)):
        middle = top + CELL * i + CELL / 2 + 4
        body.append(
            f'<text x="{left - 6}" y="{middle:.0f}" text-anchor="end">'
            f"<title>{escape(name)}</title>{escape(shown)}</text>"
        )
        x, y = left + CELL * i + CELL / 2 + 4, top + grid + 8
        body.append(
            f'<text x="{x:.0f}" y="{y}" text-anchor="end" transform="rotate(-45 {x:.0f} {y})">'
            f"<title>{escape(name)}</title>{escape(shown)}</text>"
        )
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            share = count / most
            ink = "#ffffff" if share > 0.6 else ("#9ca3af" if count == 0 else "#111827")
            x, y = left + CELL * j, top + CELL * i
            body.append(
                f'<g data-cell="{i}-{j}"><rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" '
                f'fill="{_blue(share)}" stroke="#ffffff"><title>{escape(labels[i])} / '
                f"{escape(labels[j])}: {count}</title></rect>"
                f'<text x="{x + CELL / 2:.0f}" y="{y + CELL / 2 + 4:.0f}" text-anchor="middle" '
                f'fill="{ink}">{count}</text></g>'
            )
    key_x = left + grid + 14
    for k in range(5):  # the colour key, darkest (the largest count) on top
        body.append(
            f'<rect x="{key_x}" y="{top + 18 * k}" width="14" height="18" '
            f'fill="{_blue(1 - k / 4)}"/>'
        )
    body += [
        f'<text x="{key_x + 18}" y="{top + 10}">{largest}</text>',
        f'<text x="{key_x + 18}" y="{top + 88}">0</text>',
        f'<text x="{key_x}" y="{top + 106}" fill="#6b7280">pairs of labels</text>',
    ]
    return _svg("heatmap", width, height, title, body, 'font-size="11"')
