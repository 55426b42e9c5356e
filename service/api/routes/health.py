"""Liveness and Prometheus metrics (outside /api/v1, where probes and scrapers expect them)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response

from service import metrics
from service.api.deps import READ, ServicesDep
from service.schemas import ErrorBody, Health

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"model": ErrorBody, "description": "No database"}})
def healthz(services: ServicesDep) -> Health:
    """OK when the database answers."""
    with services.backend.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return Health(status="ok", storage=services.backend.engine.dialect.name)


@router.get(
    "/metrics",
    dependencies=[READ],
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"model": ErrorBody, "description": "Tokens are on and none or a wrong one was sent"},
        503: {"model": ErrorBody, "description": "No database"},
    },
)
def prometheus_metrics(services: ServicesDep) -> Response:
    return Response(
        metrics.render(services.app_collector), media_type="text/plain; version=0.0.4"
    )
