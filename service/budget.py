"""A study's trial budget: what n_trials counts, and whether another trial may be handed out."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from service.schemas import TrialCounts


@dataclass(frozen=True)
class Budget:
    counts: TrialCounts
    n_trials: int
    failed_final: int  # failed and not retried: a worker's reported failure or retries exhausted

    @classmethod
    def of(cls, trials: list[FrozenTrial], n_trials: int) -> Budget:
        counts = TrialCounts()
        retried: set[int] = set()
        for t in trials:
            name = t.state.name.lower()
            setattr(counts, name, getattr(counts, name) + 1)
            retried.update(t.system_attrs.get("retry_history") or [])
        failed_final = sum(
            1 for t in trials if t.state == TrialState.FAIL and t.number not in retried
        )
        return cls(counts, n_trials, failed_final)

    @property
    def finished(self) -> int:
        return self.counts.complete + self.counts.pruned

    @property
    def in_flight(self) -> int:
        return self.counts.running + self.counts.waiting

    @property
    def fail_limit(self) -> int:
        # Failed trials are replaced, but a study whose every trial fails must end.
        return max(10, self.n_trials)

    def can_sample(self) -> bool:
        """Whether a new trial may be sampled. Failed trials do not use up the budget: the
        budget is exactly n_trials finished (COMPLETE + PRUNED) trials."""
        room = self.finished + self.in_flight < self.n_trials
        return room and self.failed_final < self.fail_limit

    def done(self) -> bool:
        return self.in_flight == 0 and not self.can_sample()
