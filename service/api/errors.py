"""The one exception-to-response map: every error body is {"detail", "field"?, "errors"?}.

Service errors carry their own status (service/errors.py); the few library exceptions that reach
a route are translated here, in one table, so no route sets a status code by hand."""

from __future__ import annotations

import logging

import optuna
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import Conflict, MethodNotAllowed, ServiceError, Unavailable
from service.storage import DATABASE_DOWN
from service.validation import format_errors

logger = logging.getLogger(__name__)


# Library errors a request can run into, as the service error they mean.
TRANSLATED: dict[type[Exception], ServiceError] = {
    # Another thread or server process finished the trial (the lease sweep failed it, another
    # report pruned it) between our state check and the write.
    optuna.exceptions.UpdateFinishedTrialError: Conflict(
        "the trial is already finished: its lease has ended"
    ),
}


def _body(
    detail: str, field: str | None = None, errors: list[dict[str, str]] | None = None
) -> dict:
    body: dict = {"detail": detail}
    if field:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return body


def _service_error(exc: ServiceError) -> JSONResponse:
    headers = None
    if isinstance(exc, Unavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, MethodNotAllowed):
        headers = {"Allow": ", ".join(exc.allow)}
    errors = [{"field": exc.field, "reason": exc.message}] if exc.field else None
    return JSONResponse(_body(exc.message, exc.field, errors), exc.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _service_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = format_errors(exc.errors(), exc.body)
        first = errors[0] if errors else {"field": "body", "reason": "invalid"}
        detail = f"invalid request: {first['field']}: {first['reason']}"
        return JSONResponse(_body(detail, first["field"], errors), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8, not JSON)
            reason = str(exc.detail)
            body = _body(
                f"invalid request: body: {reason}", "body", [{"field": "body", "reason": reason}]
            )
            return JSONResponse(body, 422)
        return JSONResponse(_body(str(exc.detail)), exc.status_code, headers=exc.headers)

    for kind, meaning in TRANSLATED.items():
        app.add_exception_handler(kind, _translated(meaning))

    for kind in DATABASE_DOWN:
        app.add_exception_handler(kind, _database_down)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error", exc_info=exc)
        return JSONResponse(_body("internal error; the server log has the details"), 500)


def _translated(meaning: ServiceError):  # noqa: ANN202 - an exception handler factory
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        logger.info("%s: %s", type(exc).__name__, meaning.message)
        return _service_error(meaning)

    return handler


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(exc).__name__)
    return _service_error(Unavailable("the database is unavailable; retry later"))
