"""The worker protocol: claim, report, heartbeat, complete, fail, checkpoints and weights.

The messages are `async def` endpoints that run their blocking work with one explicit
`run_in_threadpool`: for a plain `def` endpoint FastAPI also validates the answer in its thread
pool, a second thread hop per message (a few thousand a second under load, on one core).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import WORKER, HolderId, ServicesDep, TrialId, stream_file
from service.claims import NothingYet
from service.errors import PayloadTooLarge
from service.schemas import (
    ClaimedTrial,
    ErrorBody,
    HeartbeatAnswer,
    PreflightAnswer,
    PreflightResult,
    ReportAnswer,
    TrialAck,
    TrialClaim,
    TrialComplete,
    TrialFail,
    TrialPause,
    TrialReport,
)

router = APIRouter(prefix="/trials", tags=["trials"], dependencies=[WORKER])

ERRORS = {
    404: {"model": ErrorBody, "description": "No such trial"},
    409: {"model": ErrorBody, "description": "The trial is finished or its lease ended"},
}


def _links_to_the_trial() -> dict[str, dict]:
    """OpenAPI links from a claim to the operations on the claimed trial, so that clients and
    stateful API fuzzers know that `trial_id` of the answer feeds them."""
    operations = {
        "Report": ("report", "post"),
        "Heartbeat": ("heartbeat", "post"),
        "Complete": ("complete", "post"),
        "Fail": ("fail", "post"),
        "Pause": ("pause", "post"),
        "UploadCheckpoint": ("checkpoint", "put"),
        "UploadWeights": ("weights", "put"),
    }
    return {
        name: {
            # A JSON pointer into this document: "/" in the path is written "~1".
            "operationRef": f"#/paths/~1api~1v1~1trials~1{{trial_id}}~1{path}/{method}",
            "parameters": {"trial_id": "$response.body#/trial_id"},
        }
        for name, (path, method) in operations.items()
    }


@router.post(
    "/claim",
    responses={
        200: {"description": "The leased trial", "links": _links_to_the_trial()},
        204: {
            "description": "Nothing to run now; with Retry-After, work is coming (a study's "
            "preflight runs on another worker): ask again then",
            "headers": {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}},
        },
        404: ERRORS[404],
    },
)
async def claim_trial(
    body: TrialClaim, services: ServicesDep, response: Response
) -> ClaimedTrial | None:
    """Lease the next trial: a waiting one (the baseline, a retry) first, else a new sample."""
    claimed = await run_in_threadpool(services.claims.claim, body)
    if isinstance(claimed, NothingYet):
        # Work is coming (a preflight runs elsewhere): Retry-After tells workers that exit
        # when idle to ask again rather than leave.
        response.status_code = 204
        response.headers["Retry-After"] = str(claimed.retry_after_s)
        return None
    if claimed is None:
        response.status_code = 204
        return None
    return claimed


@router.post("/{trial_id}/report", responses=ERRORS)
async def report_epoch(
    trial_id: TrialId, body: TrialReport, services: ServicesDep, worker_id: HolderId = None
) -> ReportAnswer:
    """Record one epoch's validation loss and ask the pruner; prune=true means the trial is
    already finished as PRUNED and the worker should stop."""
    return await run_in_threadpool(
        services.messages.report,
        trial_id,
        body.epoch,
        body.val_loss,
        body.val_accuracy,
        body.train_loss,
        worker_id,
    )


@router.post("/{trial_id}/heartbeat", responses=ERRORS)
async def heartbeat(
    trial_id: TrialId, services: ServicesDep, worker_id: HolderId = None
) -> HeartbeatAnswer:
    await run_in_threadpool(services.messages.heartbeat, trial_id, worker_id)
    return HeartbeatAnswer(
        trial_id=trial_id, heartbeat_interval=services.settings.heartbeat_interval
    )


@router.post("/{trial_id}/complete", responses=ERRORS)
async def complete_trial(
    trial_id: TrialId, body: TrialComplete, services: ServicesDep, worker_id: HolderId = None
) -> TrialAck:
    """The trial's result. test_loss/test_accuracy (the kept weights on the test folder) are
    stored for `best` to show; they never rank, prune or count toward the budget."""
    return await run_in_threadpool(
        services.messages.complete,
        trial_id,
        body.val_loss,
        body.val_accuracy,
        worker_id,
        body.epoch,
        test=_test_metrics(body),
    )


def _test_metrics(body: TrialComplete) -> dict[str, float]:
    pairs = (("test_loss", body.test_loss), ("test_accuracy", body.test_accuracy))
    return {name: value for name, value in pairs if value is not None}


@router.post("/{trial_id}/fail", responses=ERRORS)
async def fail_trial(
    trial_id: TrialId, body: TrialFail, services: ServicesDep, worker_id: HolderId = None
) -> TrialAck:
    """Fail the trial with a reason; retry=true hands it back to be run again at once."""
    return await run_in_threadpool(
        services.messages.fail, trial_id, body.reason, body.retry, worker_id
    )


@router.post("/{trial_id}/pause", responses=ERRORS)
async def pause_trial(
    trial_id: TrialId, body: TrialPause, services: ServicesDep, worker_id: HolderId = None
) -> TrialAck:
    """Pause the trial after `epoch`, as the report's answer asked (pruner asha, promotion
    mode), once the checkpoint of that epoch is uploaded: the worker is free to claim another
    trial, and this one may be promoted later and resumed from its checkpoint. 409 when the
    trial was not at a rung's epoch or its checkpoint is missing."""
    return await run_in_threadpool(services.messages.pause, trial_id, body.epoch, worker_id)


@router.post("/{trial_id}/preflight", responses=ERRORS)
async def preflight_result(
    trial_id: TrialId, body: PreflightResult, services: ServicesDep, worker_id: HolderId = None
) -> PreflightAnswer:
    """The result of the study's preflight, run before this trial (claimed with
    preflight=true) trains: passed (train it), a spec fault (the study goes into error, the
    trial fails) or a fault of this worker's machine (the trial is handed back, the worker
    skips the study)."""
    return await run_in_threadpool(services.preflights.record, trial_id, body, worker_id)


@contextlib.asynccontextmanager
async def _spooled_body(request: Request, limit: int) -> AsyncIterator[Path]:
    """The request body, written to a temporary file chunk by chunk as it arrives (never whole
    in memory); the file is removed afterwards unless the artifact store took it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    fd, name = tempfile.mkstemp(prefix="hpsearch-upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


UPLOAD = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    "responses": {**ERRORS, 413: {"model": ErrorBody, "description": "Too large"}},
    "status_code": 204,
}


@router.put("/{trial_id}/checkpoint", **UPLOAD)
async def upload_checkpoint(
    trial_id: TrialId,
    epoch: Annotated[int, Query(ge=0, le=100_000)],
    request: Request,
    services: ServicesDep,
    worker_id: HolderId = None,
) -> Response:
    """Store the training state after `epoch`; a retry of this trial resumes from it."""
    async with _spooled_body(request, services.settings.max_artifact_bytes) as upload:
        await run_in_threadpool(
            services.artifacts.save_checkpoint, trial_id, epoch, upload, worker_id
        )
    return Response(status_code=204)


@router.put("/{trial_id}/weights", **UPLOAD)
async def upload_weights(
    trial_id: TrialId, request: Request, services: ServicesDep, worker_id: HolderId = None
) -> Response:
    """Store the trial's final weights (before it completes); the top-k are kept."""
    async with _spooled_body(request, services.settings.max_artifact_bytes) as upload:
        await run_in_threadpool(services.artifacts.save_weights, trial_id, upload, worker_id)
    return Response(status_code=204)


@router.get(
    "/{trial_id}/checkpoint",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
)
async def download_checkpoint(trial_id: TrialId, services: ServicesDep) -> StreamingResponse:
    reader = await run_in_threadpool(services.artifacts.open_checkpoint, trial_id)
    return StreamingResponse(stream_file(reader), media_type="application/octet-stream")
