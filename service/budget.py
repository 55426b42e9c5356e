"""A study's trial budget: what n_trials counts, and whether another trial may be handed out."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from service.schemas import TrialCounts
from service.views import is_paused
from service.warm_start import is_prior


@dataclass(frozen=True)
class Budget:
    counts: TrialCounts
    n_trials: int
    failed_final: int  # failed and not retried: a worker's reported failure or retries exhausted
    grid_left: int | None = None  # a grid study's combinations no trial has been given

    @classmethod
    def of(cls, trials: list[FrozenTrial], n_trials: int, grid_left: int | None = None) -> Budget:
        """From the study's trials; prior trials (a warm start's evidence) are not counted."""
        trials = [t for t in trials if not is_prior(t)]
        states: dict[str, int] = {}
        retried: set[int] = set()
        for t in trials:
            state = "PAUSED" if is_paused(t) else t.state.name
            states[state] = states.get(state, 0) + 1
            retried.update(t.system_attrs.get("retry_history") or [])
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        return cls.from_census(states, failed, retried, n_trials, grid_left)

    @classmethod
    def from_census(
        cls,
        states: dict[str, int],
        failed: list[int],
        retried: set[int],
        n_trials: int,
        grid_left: int | None = None,
    ) -> Budget:
        """From trial counts by state name (prior trials left out), the numbers of failed
        trials and the numbers of trials that were retried (the union of every trial's retry
        history)."""
        counts = TrialCounts(**{name.lower(): n for name, n in states.items()})
        return cls(counts, n_trials, sum(1 for n in failed if n not in retried), grid_left)

    @property
    def finished(self) -> int:
        return self.counts.complete + self.counts.pruned

    @property
    def in_flight(self) -> int:
        """Configurations begun and not finished: paused ones included, as n_trials counts
        configurations."""
        return self.counts.running + self.counts.waiting + self.counts.paused

    @property
    def fail_limit(self) -> int:
        # Failed trials are replaced, but a study whose every trial fails must end.
        return max(10, self.n_trials)

    def can_sample(self) -> bool:
        """Whether a new trial may be sampled. Failed trials do not use up the budget: the
        budget is exactly n_trials finished (COMPLETE + PRUNED) trials."""
        room = self.finished + self.in_flight < self.n_trials and self.grid_left != 0
        return room and self.failed_final < self.fail_limit

    def done(self) -> bool:
        return self.in_flight == 0 and not self.can_sample()

    def ended(self) -> bool:
        """The study is done as its summary says: nothing will run, or its budget is finished.
        Only a change of its spec (more trials) undoes that."""
        return self.done() or self.finished >= self.n_trials

    def reason(self) -> str | None:
        """Why no new trial is sampled, in words; None while new ones may be."""
        if self.can_sample():
            return None
        if self.failed_final >= self.fail_limit:
            return f"{self.failed_final} trials failed (the limit is {self.fail_limit})"
        if self.finished + self.in_flight >= self.n_trials:
            return f"n_trials reached: {self.finished} finished, {self.in_flight} in flight"
        return "the grid is exhausted: every combination was handed out" + (
            f", {self.in_flight} still in flight" if self.in_flight else ""
        )
