"""A study's preflight state, as its system attrs hold it (see service/preflight.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service import keys
from service.storage import Backend

PENDING: dict[str, Any] = {"state": "pending", "trial_id": None, "data": None}


@dataclass(frozen=True)
class Preflight:
    state: Literal["pending", "passed"]
    trial_id: int | None  # the flagged trial handed out last
    data: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, system_attrs: dict[str, Any]) -> Preflight:
        """From the study's system attrs; a study without any predates preflights: passed."""
        stored = system_attrs.get(keys.PREFLIGHT) or {"state": "passed"}
        return cls(
            stored.get("state", "passed"),
            stored.get("trial_id"),
            stored.get("data"),
            system_attrs.get(keys.ERROR),
        )


def retry(backend: Backend, study_id: int) -> bool:
    """Clear the study's error: the next claim runs its preflight again. Returns whether it
    had one."""
    if Preflight.of(backend.study_system_attrs(study_id)).error is None:
        return False
    backend.set_study_system_attrs(study_id, {keys.ERROR: None, keys.PREFLIGHT: PENDING})
    return True
