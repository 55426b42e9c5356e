"""Studies: create, list, inspect, rank, stop, resume, delete; the kept weights of top trials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import ADMIN, READ, ServicesDep, StudyName, base_url, stream_file
from service.schemas import BestList, ErrorBody, StudyPatch, StudyPublic, TrialPublic
from service.spec import StudySpec
from service.storage import StudyState

router = APIRouter(prefix="/studies", tags=["studies"])

NOT_FOUND = {404: {"model": ErrorBody, "description": "No such study"}}


@router.post(
    "",
    status_code=201,
    dependencies=[ADMIN],
    responses={409: {"model": ErrorBody, "description": "The name is taken"}},
)
def create_study(spec: StudySpec, services: ServicesDep, request: Request) -> StudyPublic:
    """Create an Optuna study from a spec; the baseline recipe is its first trial."""
    return services.studies.create(spec, base_url(request))


@router.get("", dependencies=[READ], response_model=list[StudyPublic])
def list_studies(
    services: ServicesDep,
    request: Request,
    limit: Annotated[int | None, Query(ge=1, le=1000, description="At most this many")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31, description="Skip this many first")] = 0,
    state: Annotated[StudyState | None, Query(description="Only studies in this state")] = None,
) -> Response:
    """Studies in creation order; without parameters, all of them."""
    # Built from each study's JSON: a done study's is kept, so long histories cost nothing.
    body = services.studies.list_json(base_url(request), state, limit, offset)
    return Response(body, media_type="application/json")


@router.get("/{name}", dependencies=[READ], responses=NOT_FOUND)
def get_study(name: StudyName, services: ServicesDep, request: Request) -> StudyPublic:
    """State, trial counts by state, the best trial, the baseline and the improvement over it."""
    return services.studies.summary(name, base_url(request))


@router.get("/{name}/best", dependencies=[READ], responses=NOT_FOUND)
def best_trials(
    name: StudyName, services: ServicesDep, k: Annotated[int, Query(ge=1, le=1000)] = 5
) -> BestList:
    """The top-k complete trials by validation loss, each with a training config to reuse."""
    return services.studies.best(name, k)


@router.get("/{name}/trials", dependencies=[READ], responses=NOT_FOUND)
def list_trials(name: StudyName, services: ServicesDep) -> list[TrialPublic]:
    return services.studies.trials(name)


@router.patch(
    "/{name}",
    dependencies=[ADMIN],
    responses={
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "n_trials below the trials finished or running"},
    },
)
def change_study(
    name: StudyName, change: StudyPatch, services: ServicesDep, request: Request
) -> StudyPublic:
    """Change the budget (n_trials) or the scheduling. A done study given more trials runs
    again; its sampler keeps every earlier trial."""
    return services.studies.patch(name, change, base_url(request))


@router.post("/{name}/stop", dependencies=[ADMIN], responses=NOT_FOUND)
def stop_study(
    name: StudyName,
    services: ServicesDep,
    request: Request,
    cancel_running: Annotated[
        bool,
        Query(
            description="Also hand back the running trials (their workers move on at their next "
            "message); `resume` later runs them from their last checkpoints"
        ),
    ] = False,
) -> StudyPublic:
    """Hand out no more trials; running trials finish, unless cancel_running hands them back."""
    stopped = services.studies.stop(name, base_url(request))
    if not cancel_running:
        return stopped
    services.messages.hand_back_running(name)
    return services.studies.summary(name, base_url(request))


@router.post("/{name}/resume", dependencies=[ADMIN], responses=NOT_FOUND)
def resume_study(name: StudyName, services: ServicesDep, request: Request) -> StudyPublic:
    """Undo `stop`: trials are handed out again while the budget lasts. Resuming a study that
    is not stopped changes nothing and answers the same (200)."""
    return services.studies.resume(name, base_url(request))


@router.delete("/{name}", status_code=204, dependencies=[ADMIN], responses=NOT_FOUND)
def delete_study(name: StudyName, services: ServicesDep) -> Response:
    services.studies.delete(name)
    return Response(status_code=204)


@router.get(
    "/{name}/trials/{number}/weights",
    dependencies=[READ],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND},
)
async def download_weights(
    name: StudyName, number: Annotated[int, Path(ge=0, le=2**31)], services: ServicesDep
) -> StreamingResponse:
    """The final weights (a PyTorch state dict) of one of the top-k complete trials."""
    reader = await run_in_threadpool(services.artifacts.open_weights, name, number)
    return StreamingResponse(
        stream_file(reader),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}-trial{number}.pt"'},
    )
