"""One search policy replayed on a learning-curve table, with simulated asynchronous workers.

A policy is a real Optuna study in memory (ask/tell, `trial.report` after every epoch) with the
service's sampler and pruner objects (service.optimizers), or, for `asha`, the service's own
rung decisions (service.asha: decide, promotion). The sampler proposes continuous params; each
proposal is snapped to the table's nearest configuration (bench.curve_table), whose recorded
curve is what the trial "trains". The trial keeps the proposal as its params, so the sampler
learns from what it proposed. With `fresh`, the nearest configuration this replay has not
sampled yet: a sampler that proposes two points close together then gets two configurations,
as it would in the continuous space, instead of the same recorded curve twice.

The clock: every epoch takes one time unit, and `workers` workers train side by side. At the
start of a unit each free worker, in turn, takes work (a promotable paused trial first, in
promotion mode, else a new configuration); at its end every busy worker, in turn, reports the
epoch it trained, and a trial that completes, stops or pauses frees its worker for the next
unit. No epoch starts beyond `budget`, so a replay never trains more than its budget; a trial
completed in a unit counts every epoch trained by that unit's end as spent.

As in the service, the last epoch's report is never pruned, reports go by 0-based epoch, and a
paused trial stays RUNNING (un-told) in the study while it waits, so TPE's constant liar sees
it as running (and TPE neither counts it among its startup trials nor reads its rung values);
trials still running or paused when the budget is spent are told PRUNED.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from bench.curve_table import CurveTable
from bench.paused_view import PausedAsPruned
from service.asha import Mode, Paused, decide, promotion, rung_epochs, rung_of_epoch
from service.search_space import SearchSpace, to_distributions

logger = logging.getLogger(__name__)

REDUCTION_FACTOR = 3
MIN_RESOURCE = 1


@dataclass(frozen=True)
class Policy:
    name: str
    sampler: Callable[[int], optuna.samplers.BaseSampler]  # from the seed
    pruner: Callable[[], optuna.pruners.BasePruner]
    asha: Mode | None = None  # the service's asha rungs decide instead of the pruner
    sampler_sees_paused: bool = False  # paused trials shown to the sampler as PRUNED


@dataclass
class _Job:
    trial: optuna.trial.Trial
    config: int  # the table's row
    next_epoch: int = 0
    promoted: int = 0  # times resumed after a pause


@dataclass
class Outcome:
    """What one replay did: every epoch trained, in order, and what came of each trial."""

    policy: str
    seed: int
    budget: int
    trained: int = 0  # epochs trained in all
    configurations: int = 0  # new configurations sampled
    promotions: int = 0  # paused trials resumed
    completed_promoted: int = 0  # trials completed after at least one pause
    sampled: list[int] = field(default_factory=list)  # table rows, in sampling order
    completed: list[tuple[int, int, float]] = field(default_factory=list)  # (spent, row, loss)
    found: int | None = None  # epochs trained when a completed trial first met `target`

    def best(self) -> float:
        return min((loss for _, _, loss in self.completed), default=math.inf)

    def epochs_to(self, threshold: float) -> int | None:
        """Epochs spent when the first trial completed at or under `threshold`, or None."""
        return next((spent for spent, _, loss in self.completed if loss <= threshold), None)


def replay(
    table: CurveTable,
    policy: Policy,
    seed: int,
    budget: int,
    *,
    workers: int = 4,
    target: float | None = None,
    stop_when_found: bool = False,
    fresh: bool = False,
) -> Outcome:
    """Replay `policy` on `table` until `budget` epochs are trained (or, with
    `stop_when_found`, until a completed trial's final loss is at most `target`)."""
    with warnings.catch_warnings():  # multivariate TPE and friends are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _Replay(table, policy, seed, budget, workers, target, stop_when_found, fresh).run()


class _Replay:
    def __init__(
        self,
        table: CurveTable,
        policy: Policy,
        seed: int,
        budget: int,
        workers: int,
        target: float | None,
        stop_when_found: bool,
        fresh: bool,
    ) -> None:
        self.table = table
        self.policy = policy
        sampler = policy.sampler(seed)
        if policy.sampler_sees_paused:
            sampler = PausedAsPruned(sampler, lambda: self.paused)
        self.study = optuna.create_study(
            direction="minimize", sampler=sampler, pruner=policy.pruner()
        )
        self.distributions = to_distributions(
            SearchSpace.model_validate(table.meta["search_space"])
        )
        self.rungs = rung_epochs(MIN_RESOURCE, REDUCTION_FACTOR, table.epochs)
        self.rung_values: dict[int, list[float]] = {k: [] for k in range(len(self.rungs))}
        self.paused: dict[int, tuple[Paused, _Job]] = {}  # by trial number
        self.workers: list[_Job | None] = [None] * workers
        self.target = target
        self.stop_when_found = stop_when_found
        self.fresh = fresh
        self.out = Outcome(policy.name, seed, budget)
        self.spent = 0  # epochs trained by the end of the current time unit

    def run(self) -> Outcome:
        while not self._done():
            # The start of a time unit: free workers take work, while the budget lasts.
            busy = []
            for w in range(len(self.workers)):
                if self.out.trained + len(busy) >= self.out.budget:
                    break
                if self.workers[w] is None:
                    self.workers[w] = self._take()
                busy.append(w)
            if not busy:
                break
            # Its end: every epoch started is trained, and reported in worker order.
            self.spent = self.out.trained + len(busy)
            for w in busy:
                self.workers[w] = self._train_epoch(self.workers[w])
        left = [j for j in self.workers if j is not None] + [j for _, j in self.paused.values()]
        for job in left:
            self.study.tell(job.trial, state=TrialState.PRUNED)
        return self.out

    def _done(self) -> bool:
        return self.stop_when_found and self.out.found is not None

    def _take(self) -> _Job:
        """A promotable paused trial (promotion mode), else a new configuration."""
        if self.policy.asha == "promotion":
            chosen = promotion(
                [p for p, _ in self.paused.values()], self.rung_values, REDUCTION_FACTOR, True
            )
            if chosen is not None:
                self.out.promotions += 1
                job = self.paused.pop(chosen.trial_id)[1]
                job.promoted += 1
                return job
        trial = self.study.ask(self.distributions)
        row = self.table.nearest(trial.params, set(self.out.sampled) if self.fresh else ())
        self.out.configurations += 1
        self.out.sampled.append(row)
        return _Job(trial, row)

    def _train_epoch(self, job: _Job) -> _Job | None:
        """Train `job`'s next epoch and report it; the job, or None when its worker is free."""
        epoch = job.next_epoch
        value = float(self.table.val_loss[job.config, epoch])
        self.out.trained += 1
        job.next_epoch += 1
        if math.isnan(value):  # the recorded run hit a non-finite loss here
            self.study.tell(job.trial, state=TrialState.FAIL)
            return None
        job.trial.report(value, epoch)
        if epoch == self.table.epochs - 1:
            self.study.tell(job.trial, value)
            # epochs spent when it completes: the ones the other workers train in this unit too
            self.out.completed.append((self.spent, job.config, value))
            self.out.completed_promoted += job.promoted > 0
            if self.target is not None and self.out.found is None and value <= self.target:
                self.out.found = self.spent
            return None
        if self.policy.asha is None:
            if job.trial.should_prune():
                self.study.tell(job.trial, state=TrialState.PRUNED)
                return None
            return job
        return self._at_rung(job, epoch, value, self.policy.asha)

    def _at_rung(self, job: _Job, epoch: int, value: float, mode: Mode) -> _Job | None:
        rung = rung_of_epoch(self.rungs, epoch)
        if rung is None:
            return job
        values = self.rung_values[rung]
        values.append(value)
        decision = decide(value, values, REDUCTION_FACTOR, True, mode)
        if decision == "continue":
            return job
        if decision == "stop":
            self.study.tell(job.trial, state=TrialState.PRUNED)
        else:
            number = job.trial.number
            self.paused[number] = (Paused(number, rung, value), job)
        return None
