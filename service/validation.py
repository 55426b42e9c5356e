"""Turn pydantic's validation errors into [{field, reason}] that a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_MISSING = object()


# Steps pydantic puts in a location that are no field of the document: model names of union
# branches, the body itself, and the tags of the spec's own discriminated unions.
_NOT_FIELDS = {
    "constrained-str",
    "Baseline",
    "SearchSpace",
    "body",
    "named",
    "inline",
    "imagefolder",
    "digits",
}


def _clean_loc(loc: Sequence[Any], body: Any) -> list[str]:
    """Drop pydantic's internal steps (union branches, validator names, discriminator tags)."""
    parts: list[str] = []
    node: Any = body
    tag_dropped_at: Any = _MISSING
    for part in loc:
        text = str(part)
        if "[" in text or text in _NOT_FIELDS:
            continue
        if (
            isinstance(node, dict)
            and node is not tag_dropped_at
            and text not in node
            and text in (node.get("name"), node.get("type"))
        ):
            tag_dropped_at = node  # a discriminated union's tag, once: what follows is a field
            continue
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


def _loc(error: dict[str, Any], body: Any) -> list[str]:
    kind = error.get("type")
    if kind == "json_invalid":
        return []  # the body as a whole: pydantic points at the character offset
    loc = _clean_loc(error.get("loc", ()), body)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # An unknown or missing sampler/pruner/parameter type: the tag field is what is wrong.
        tag = str((error.get("ctx") or {}).get("discriminator", "")).strip("'")
        if tag.isidentifier():
            loc.append(tag)
    return loc


def format_errors(errors: Sequence[dict[str, Any]], body: Any) -> list[dict[str, str]]:
    cleaned = [(_loc(e, body), _reason(e)) for e in errors]
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
