"""The app factory: `create_app(settings)` builds the API, the dashboard and the lease keeper.

Everything that holds a resource (the database, the artifact store, the lease keeper's thread)
is opened in the lifespan, and the metrics registry belongs to the app: several apps can live in
one process, each over its own storage (tests use FastAPI's TestClient, which runs the
lifespan)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import AsyncIterator
from typing import Any

import optuna
from fastapi import FastAPI, Request
from starlette.routing import Match, Mount

from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.router import api_router
from service.api.routes import health
from service.artifacts import Artifacts
from service.claims import Claims
from service.dashboard import DashboardMount
from service.errors import MethodNotAllowed, NotFound
from service.lease_keeper import LeaseKeeper
from service.leases import Leases
from service.messages import TrialMessages
from service.metrics import LatencyMiddleware, Metrics, StorageCollector
from service.pausing import Pausing
from service.preflight import Preflights
from service.registry import StudyRegistry
from service.schemas import TrialCounts
from service.settings import Settings
from service.storage import Backend, open_backend
from service.studies import StudyService

logger = logging.getLogger(__name__)

DESCRIPTION = """
hpsearch finds fine-tuning hyperparameters (learning rate, momentum, StepLR step size and
gamma, warmup) for pretrained models. Create a study, start `hpsearch worker` processes on your
GPUs, watch the Optuna dashboard at /dashboard, and read the best configurations.
"""


def _trial_counts(backend: Backend) -> Any:
    def counts() -> dict[str, dict[str, int]]:
        """Trials by state of every study: one grouped query."""
        return {
            name: TrialCounts(**by_state).model_dump()
            for name, by_state in backend.trial_counts_by_study().items()
        }

    return counts


def open_services(settings: Settings, metrics: Metrics) -> Services:
    leases_ref: list[Leases] = []  # the storage calls back into the leases it is built before
    backend: Backend = open_backend(settings, on_stale=lambda s, t: leases_ref[0].on_stale(s, t))
    registry = StudyRegistry(backend, settings)
    leases = Leases(backend, registry, metrics, settings.heartbeat_interval, settings.max_retries)
    leases_ref.append(leases)
    artifacts = Artifacts(backend, registry, settings.keep_top_k)
    metrics.registry.register(
        StorageCollector(
            _trial_counts(backend), lambda: len(backend.list_workers(3 * settings.grace_period))
        )
    )
    pausing = Pausing(backend, artifacts)
    messages = TrialMessages(backend, registry, leases, artifacts, metrics, pausing)
    preflights = Preflights(backend, registry, messages)
    return Services(
        settings=settings,
        backend=backend,
        registry=registry,
        studies=StudyService(
            backend, registry, artifacts, settings.public_url, settings.keep_top_k
        ),
        claims=Claims(backend, registry, metrics, settings.heartbeat_interval, preflights, pausing),
        messages=messages,
        preflights=preflights,
        leases=leases,
        artifacts=artifacts,
        metrics=metrics,
    )


def quiet_optuna() -> None:
    """The server drives Optuna's heartbeats and retries itself, by design: their experimental
    and 'use with Study.optimize' warnings say nothing to an operator. Optuna's own log lines
    go through the standard logging the entry point configured."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

# `hpsearch serve --workers N` hands its validated settings to its server processes here.
SETTINGS_ENV = "HPSEARCH_SERVE_SETTINGS"


def create_app_from_serve() -> FastAPI:
    """The app of one of `hpsearch serve --workers N`'s server processes."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app over `settings`; without them, read from the HPSEARCH_* environment."""
    settings = settings or Settings()
    metrics = Metrics()
    quiet_optuna()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = open_services(settings, metrics)
        app.state.services = services

        def sweep(fail_stale: bool) -> None:
            services.leases.sweep(fail_stale, services.artifacts.collect_garbage)

        keeper = LeaseKeeper(
            sweep,
            every_s=max(0.5, settings.heartbeat_interval / 2),
            grace_s=settings.grace_period,
        )
        keeper.start()
        logger.info("serving storage %s", services.backend.describe())
        try:
            yield
        finally:
            keeper.stop()
            services.backend.close()

    app = FastAPI(
        title="hpsearch",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(health.router)

    @app.api_route(
        "/api/v1/{rest:path}",
        methods=list(_METHODS),
        include_in_schema=False,
    )
    def unknown_api_path(rest: str, request: Request) -> None:
        """Paths under /api/v1 that no route took: 405 when the path exists with other methods
        (else the dashboard mounted at / would answer 404), 404 otherwise."""
        path = f"/api/v1/{rest}"
        routes = [
            r
            for r in app.router.routes
            if not isinstance(r, Mount) and getattr(r, "endpoint", None) is not unknown_api_path
        ]
        allowed = [
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in routes
            )
        ]
        if allowed:
            raise MethodNotAllowed(f"{request.method} is not allowed on {path}", allow=allowed)
        raise NotFound(f"no such endpoint: {request.method} {path}")

    app.mount("/", DashboardMount(app.state), name="dashboard")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


class BodyLimit:
    """Refuse JSON bodies over the limit with 413 before they are read into memory: by their
    declared length, or, for a chunked body with none, by counting while buffering it.
    Checkpoint and weights uploads (PUT) have their own, larger limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "PUT":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:  # the HTTP server never passes on more than this
            if declared.isdigit() and int(declared) > self.limit:
                await _too_large(send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _too_large(send)
                return
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return body

        await self.app(scope, replay, send)


async def _too_large(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send(
        {"type": "http.response.body", "body": b'{"detail": "the request body is too large"}'}
    )
