"""The Optuna dashboard, served by the same process on the same storage.

It is mounted at the root (its pages live under /dashboard, its API under /api/studies...), so
its own absolute URLs work unchanged. With tokens on, reading it needs a read token (a browser
asks for it with HTTP Basic: any user, the token as password) and changing anything the admin's.

It is built on its first request: importing optuna-dashboard (and the scikit-learn its
importance view pulls in) takes seconds that a restarting server should not spend before it
answers workers.
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.concurrency import run_in_threadpool

from service.auth import Role, role_of, token_from_header
from service.settings import Settings
from service.storage import Backend


def build_dashboard(backend: Backend) -> Any:
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(backend.dashboard_wsgi(), workers=8)


class DashboardMount:
    """ASGI app that checks credentials, then hands over to the dashboard (built on first use)."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._dashboard: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._dashboard is None:
                self._dashboard = build_dashboard(self._state.services.backend)
            return self._dashboard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        services = self._state.services
        settings: Settings = services.settings
        if scope["type"] == "http" and settings.tokens_enabled:
            needed = Role.READ if scope["method"] in ("GET", "HEAD") else Role.ADMIN
            if not (needed == Role.READ and settings.read_access == "open"):
                headers = dict(scope.get("headers") or [])
                token = token_from_header(headers.get(b"authorization", b"").decode("latin-1"))
                if role_of(settings, token) < needed:
                    await _deny(send)
                    return
        dashboard = self._dashboard or await run_in_threadpool(self._build)
        await dashboard(scope, receive, send)


async def _deny(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Basic realm="hpsearch"'),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b'{"detail": "a valid token is required"}'})
