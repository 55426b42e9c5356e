"""A background thread that ends leases: it fails trials whose worker stopped sending heartbeats
(re-queueing them) and collects unneeded artifacts. Every server process runs one; the claim
lock keeps them from stepping on each other."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from service.storage import DATABASE_DOWN

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Calls `sweep(fail_stale)` every `every_s` seconds.

    While the database is unreachable no worker can renew its lease, so after a failed sweep
    stale trials are left alone until `grace_s` seconds after the database answers again:
    the workers get one lease period to send their heartbeats."""

    def __init__(self, sweep: Callable[[bool], None], every_s: float, grace_s: float) -> None:
        self._sweep = sweep
        self._every_s = every_s
        self._grace_s = grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpsearch-lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        hold_until = 0.0  # no failing of stale trials before this (monotonic) time
        while not self._stop.wait(self._every_s):
            try:
                self._sweep(time.monotonic() >= hold_until)
            except DATABASE_DOWN as exc:  # try again next round, then give workers a lease
                hold_until = math.inf
                logger.warning(
                    "lease sweep failed, the database is unreachable: %s", type(exc).__name__
                )
                continue
            except Exception:  # noqa: BLE001 - a fault of ours: logged whole; the keeper lives on
                logger.exception("lease sweep failed")
                continue
            if hold_until == math.inf:  # the database is back: give the workers a lease period
                hold_until = time.monotonic() + self._grace_s
                logger.info(
                    "database reachable again; failing stale trials from %.0f s on", self._grace_s
                )
