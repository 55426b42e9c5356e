"""Asynchronous successive halving (Li et al., MLSys 2020): its rungs, and whether a trial that
reaches one continues, pauses or stops, and which paused trial is promoted next.

Pure functions of the objective values recorded at each rung, so that the server, the replay
benchmark (bench/asha_replay.py) and the tests share one definition. Epochs are counted as
workers report them, from 0: the rung at `r` trained epochs is the report of epoch `r - 1`.

- Stopping mode: a trial continues past a rung when it ranks in the top `n // eta` of the `n`
  values recorded there so far (itself included); while fewer than `eta` have, only the best so
  far continues (Optuna's successive halving does the same). Otherwise it stops (pruned).
- Promotion mode: a trial continues when it ranks in the top `n // eta`; otherwise it pauses. A
  paused trial is promoted (resumed from its checkpoint) once it ranks in the top `n // eta` of
  its rung: the best such trial of the highest rung goes first (Algorithm 2 of the paper;
  Syne Tune's PromotionRungSystem). Ranks count every trial that reached the rung, promoted
  or not, so that a rung promotes at most `n // eta` of its `n` trials. Once no rung can grow
  (`draining`), each rung's best is promotable too, so the best candidates finish training.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["promotion", "stopping"]
Decision = Literal["continue", "pause", "stop"]


def rung_epochs(min_resource: int, reduction_factor: int, epochs: int) -> tuple[int, ...]:
    """The rungs, in trained epochs: min_resource * reduction_factor**k, below `epochs` (a trial
    that has trained every epoch is complete, not at a rung)."""
    rungs = []
    resource = min_resource
    while resource < epochs:
        rungs.append(resource)
        resource *= reduction_factor
    return tuple(rungs)


def rung_of_epoch(rungs: Sequence[int], epoch: int) -> int | None:
    """The index of the rung that the report of (0-based) `epoch` ends, or None."""
    try:
        return rungs.index(epoch + 1)
    except ValueError:
        return None


def _rank(value: float, values: Iterable[float], minimize: bool) -> int:
    """How many of `values` are strictly better than `value` (ties share the better rank)."""
    return sum(1 for v in values if (v < value if minimize else v > value))


def decide(
    value: float, rung_values: Sequence[float], reduction_factor: int, minimize: bool, mode: Mode
) -> Decision:
    """What a trial whose `value` has just been recorded at a rung does next. `rung_values`:
    every value recorded at that rung, this one included."""
    top = len(rung_values) // reduction_factor
    if mode == "stopping":
        top = max(1, top)
    if _rank(value, rung_values, minimize) < top:
        return "continue"
    return "pause" if mode == "promotion" else "stop"


@dataclass(frozen=True)
class Paused:
    trial_id: int
    rung: int  # index into the rungs
    value: float  # its value at that rung


def promotion(
    paused: Iterable[Paused],
    rung_values: Mapping[int, Sequence[float]],
    reduction_factor: int,
    minimize: bool,
    draining: bool = False,
) -> Paused | None:
    """The paused trial to resume now, or None: of the highest rung that has a promotable one,
    the best. `rung_values[k]`: every value recorded at rung k.

    `draining`: no new configuration will come and nothing runs, so no rung will grow. Then the
    best trial of a rung is promotable even where fewer than `reduction_factor` trials reached
    it (as in stopping mode): with a budget of configurations rather than of time, the top rungs
    would otherwise never promote, and the study would end with its best candidates paused."""

    # Each rung sorted once (best first): a rank is then a binary search, so a claim stays
    # cheap with thousands of paused trials.
    sign = 1 if minimize else -1
    ranked = {rung: sorted(sign * v for v in values) for rung, values in rung_values.items()}

    def promotable_at(p: Paused) -> bool:
        values = ranked.get(p.rung, [])
        top = len(values) // reduction_factor
        if draining:
            top = max(1, top)
        return bisect.bisect_left(values, sign * p.value) < top  # the ones strictly better

    promotable = [p for p in paused if promotable_at(p)]
    if not promotable:
        return None
    return min(promotable, key=lambda p: (-p.rung, sign * p.value, p.trial_id))
