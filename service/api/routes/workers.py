"""Connected workers: who they are, their device, what they run, when they were last heard."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import READ, ServicesDep
from service.schemas import WorkerPublic
from service.views import utc_time

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", dependencies=[READ])
def list_workers(services: ServicesDep) -> list[WorkerPublic]:
    """Workers heard from (claim or heartbeat) within three lease grace periods, with their
    labels and the study they run now."""
    rows = services.backend.list_workers(3 * services.settings.grace_period)
    return [
        WorkerPublic(
            **{
                **{k: row[k] for k in WorkerPublic.model_fields},
                "last_seen": utc_time(row["last_seen"]),
            }
        )
        for row in rows
    ]
