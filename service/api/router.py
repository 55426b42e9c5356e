"""All routers, collected in one place and mounted under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.routes import studies, trials, workers
from service.schemas import ErrorBody

# Answers any route can give; each route declares its own 404/409/413 besides. Every error
# body is an ErrorBody: FastAPI's default 422 schema (a list of pydantic errors) is replaced.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Tokens are on and none or a wrong one was sent"},
    403: {"model": ErrorBody, "description": "The token is of the wrong kind"},
    413: {"model": ErrorBody, "description": "The request body is too large"},
    422: {"model": ErrorBody, "description": "Invalid input: the field and the reason"},
    503: {"model": ErrorBody, "description": "No database; retry after Retry-After seconds"},
}

api_router = APIRouter(prefix="/api/v1", responses=COMMON_ERRORS)
api_router.include_router(studies.router)
api_router.include_router(trials.router)
api_router.include_router(workers.router)
