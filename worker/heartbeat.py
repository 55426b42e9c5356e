"""Heartbeats from a background thread while a trial trains: they renew the trial's lease."""

from __future__ import annotations

import logging
import threading

from worker.client import LeaseLost, ServerClient

logger = logging.getLogger(__name__)


class Heartbeat:
    """Sends a heartbeat every `interval` seconds. `lost` is set when the server says the lease
    has ended (the trial was failed as stale or finished elsewhere, or is gone with its deleted
    study): training should stop. `why` holds the server's answer; the runner logs it."""

    def __init__(self, client: ServerClient, trial_id: int, interval: float) -> None:
        self._client = client
        self._trial_id = trial_id
        self._interval = max(0.2, interval)
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.why: LeaseLost | None = None
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.finish()
        self._thread.join(timeout=5)

    def finish(self) -> None:
        """No more beats: the trial is about to end (a 409 after this is expected)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                # Retry within one interval only; the next beat tries again.
                self._client.heartbeat(self._trial_id, retry_for_s=self._interval)
            except LeaseLost as exc:
                if not self._stop.is_set():  # not a beat that crossed the trial's completion
                    logger.debug("heartbeat for trial %d: %s", self._trial_id, exc)
                    self.why = exc
                    self.lost.set()
                return
            except Exception as exc:  # server unreachable: keep training, keep trying
                logger.warning("heartbeat for trial %d failed: %s", self._trial_id, exc)
