"""Turn pydantic's validation errors into [{field, reason}] that a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MISSING = object()


def _clean_loc(loc: Sequence[Any], body: Any) -> list[str]:
    """Drop pydantic's internal steps (union branches, validator names, discriminator tags)."""
    parts: list[str] = []
    node: Any = body
    for part in loc:
        text = str(part)
        if "[" in text or text in {"constrained-str", "Baseline", "SearchSpace", "body"}:
            continue
        if isinstance(node, dict) and text not in node and text in (node.get("name"), node.get("type")):
            continue  # a discriminated union's tag
        parts.append(text)
        if isinstance(node, dict):
            node = node.get(text, _MISSING)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = _MISSING
    return parts


def _reason(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def format_errors(errors: Sequence[dict[str, Any]], body: Any) -> list[dict[str, str]]:
    cleaned = [(_clean_loc(e.get("loc", ()), body), _reason(e)) for e in errors]
    # For a union, keep the branch that got furthest: the one whose errors lie deeper.
    kept = [
        (loc, reason)
        for loc, reason in cleaned
        if not any(len(other) > len(loc) and other[: len(loc)] == loc for other, _ in cleaned)
    ]
    seen: set[tuple[str, str]] = set()
    out = []
    for loc, reason in kept:
        field = ".".join(loc) or "body"
        if (field, reason) not in seen:
            seen.add((field, reason))
            out.append({"field": field, "reason": reason})
    return out
