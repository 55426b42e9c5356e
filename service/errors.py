"""Service errors and the one map from error to HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the API turns into a JSON body: {"detail": message, "field"?: path}."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request is valid but the resource's state forbids it (name taken, trial finished)."""

    status_code = 409


class InvalidInput(ServiceError):
    status_code = 422


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class MethodNotAllowed(ServiceError):
    """The path exists but not with this method; `allow` lists the methods it has."""

    status_code = 405

    def __init__(self, message: str, *, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(ServiceError):
    status_code = 413


class Unavailable(ServiceError):
    """The database cannot be reached; clients should retry after `retry_after` seconds."""

    status_code = 503
    retry_after = 5
