"""Which study a claim without a study goes to: the rules, as pure functions of counts that every
server process reads from the database (so two processes decide alike).

1. Only studies the worker may serve: its labels hold every `requires` key with that value.
2. Only studies below `max_concurrent_trials`. (Whether the budget allows a trial is counted
   under the study's claim lock, as the studies are tried in this order.)
3. The highest `priority` first; within one priority the fewest running trials per unit of
   `weight` (a weighted fair share); ties go to the oldest study.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.spec import Scheduling


@dataclass(frozen=True)
class Candidate:
    """A study as the scheduler sees it; `key` is what the caller gets back."""

    key: object
    scheduling: Scheduling
    running: int
    age_rank: int  # 0 for the oldest study


def serves(labels: Mapping[str, str], requires: Mapping[str, str]) -> bool:
    """Whether a worker with these labels may run the study's trials."""
    return all(labels.get(key) == value for key, value in requires.items())


def below_limit(scheduling: Scheduling, running: int) -> bool:
    limit = scheduling.max_concurrent_trials
    return limit is None or running < limit


def order(candidates: Iterable[Candidate], labels: Mapping[str, str]) -> list[object]:
    """The keys of the studies this worker may serve and that are below their concurrency
    limit, best first."""
    eligible = [
        c
        for c in candidates
        if serves(labels, c.scheduling.requires) and below_limit(c.scheduling, c.running)
    ]
    eligible.sort(
        key=lambda c: (-c.scheduling.priority, c.running / c.scheduling.weight, c.age_rank)
    )
    return [c.key for c in eligible]
