"""Plain-text tables and the cell formats the CLI's views share (no dependency)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; `right`: indexes of columns aligned
    right (numbers). The last column is not padded, so long params do not leave trailing blanks."""
    cells = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            text.rjust(widths[i]) if i in right else text.ljust(widths[i])
            for i, text in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return number(value)
    return str(value)


def number(value: float | int | None) -> str:
    """Short, exact enough to tell trials apart: 0.0017826 -> 0.00178, 12.0 -> 12."""
    if value is None:
        return MISSING
    if isinstance(value, int):  # bool too
        return str(value)
    return f"{value:.3g}"


def loss(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def accuracy(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


def improvement(pct: float | None) -> str:
    """The API's improvement over the baseline: positive means a lower validation loss."""
    return MISSING if pct is None else f"{pct:+.1f}%"


def params(values: Mapping[str, Any] | None) -> str:
    """{'lr': 0.0017826, 'step_size': 3} -> 'lr=0.00178 step_size=3'."""
    if not values:
        return MISSING
    return " ".join(
        f"{k}={number(v) if isinstance(v, float | int) else v}" for k, v in values.items()
    )


def parse_time(text: str | None) -> dt.datetime | None:
    """The API's timestamps; naive ones are UTC (the server stores UTC)."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def ago(text: str | None, now: dt.datetime | None = None) -> str:
    when = parse_time(text)
    if when is None:
        return MISSING
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds()))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)}m ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)}h ago"
    return f"{round(seconds / 86400)}d ago"
