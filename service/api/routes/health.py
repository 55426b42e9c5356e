"""Liveness and Prometheus metrics (outside /api/v1, where probes and scrapers expect them)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import READ, ServicesDep
from service.schemas import ErrorBody, Health

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"model": ErrorBody, "description": "No database"}})
def healthz(services: ServicesDep) -> Health:
    """OK when the database answers."""
    return Health(status="ok", storage=services.backend.ping())


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
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
