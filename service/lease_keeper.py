"""A background thread that ends leases: it fails trials whose worker stopped sending heartbeats
(re-queueing them) and collects unneeded artifacts. Every server process runs one; the claim
lock keeps them from stepping on each other."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, sweep: Callable[[], None], every_s: float) -> None:
        self._sweep = sweep
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpsearch-lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._sweep()
            except Exception as exc:  # the database may be down; try again next round
                logger.warning("lease sweep failed: %s", type(exc).__name__)
