"""All routers, collected in one place and mounted under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import studies, trials, workers

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(studies.router)
api_router.include_router(trials.router)
api_router.include_router(workers.router)
