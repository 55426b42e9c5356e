"""Typed dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, BinaryIO

from fastapi import Depends, Header, Path, Query, Request

from service import keys
from service.artifacts import Artifacts
from service.auth import Role, authorize
from service.claims import Claims
from service.leases import Leases
from service.messages import TrialMessages
from service.metrics import Metrics
from service.preflight import Preflights
from service.registry import StudyRegistry
from service.settings import Settings
from service.storage import Backend
from service.studies import StudyService


@dataclass(frozen=True)
class Services:
    settings: Settings
    backend: Backend
    registry: StudyRegistry
    studies: StudyService
    claims: Claims
    messages: TrialMessages
    preflights: Preflights
    leases: Leases
    artifacts: Artifacts
    metrics: Metrics


# Dependencies that do not block are `async def`: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop per dependency per request (two on every worker message).
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _requires(role: Role):  # noqa: ANN202 - a dependency factory
    async def check(
        services: ServicesDep, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        authorize(services.settings, authorization, role)

    return Depends(check)


READ = _requires(Role.READ)
WORKER = _requires(Role.WORKER)
ADMIN = _requires(Role.ADMIN)

StudyName = Annotated[str, Path(pattern=keys.STUDY_NAME_PATTERN, description="Study name")]
TrialId = Annotated[int, Path(ge=0, le=2**62, description="The trial_id a claim returned")]
HolderId = Annotated[
    str | None,
    Query(
        pattern=keys.WORKER_ID_PATTERN,
        description="The worker_id of the claim (optional): a message from another worker is "
        "refused with 409, as when SQLite gave a deleted study's trial id to a new trial",
    ),
]


def base_url(request: Request) -> str:
    return str(request.base_url)


def stream_file(reader: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        while chunk := reader.read(size):
            yield chunk
    finally:
        reader.close()
