"""The HTTP client of the CLI's user commands: one place that adds the token and turns every
transport failure or error answer into a `CliError` a person can read in one line.

Imports only httpx and the standard library, so `pip install hpsearch` is enough to use it."""

from __future__ import annotations

import json
import re
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from cli.errors import CliError

API = "/api/v1"
TIMEOUT_S = 30.0


class ServerUnreachable(CliError):
    """No answer: connection refused, DNS, timeout, a connection dropped mid-answer."""


class ApiError(CliError):
    """The server answered with an error status. `errors` holds its [{field, reason}] list."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(f"server answered {status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = errors


def normalize_url(server: str) -> str:
    """`host:8000` -> `http://host:8000`; no trailing slash."""
    server = server.strip()
    if not server:
        raise CliError("no server URL: pass --server or set HPSEARCH_SERVER")
    if "://" not in server:
        server = f"http://{server}"
    try:
        host = urlsplit(server).netloc
    except ValueError as exc:  # 'http://[::1'
        raise CliError(f"invalid server URL {server!r}: {exc}") from None
    if not host:
        raise CliError(f"invalid server URL {server!r}: no host")
    return server.rstrip("/")


def _reason(exc: Exception) -> str:
    """'[Errno 111] Connection refused' -> 'connection refused'."""
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[-1]).strip()
    text = text.rstrip(".")
    return text[:1].lower() + text[1:]


class Client:
    """`with Client(server, token) as api: api.get("/studies")`. Paths are under /api/v1."""

    def __init__(self, server: str, token: str | None = None, timeout: float = TIMEOUT_S) -> None:
        self.server = normalize_url(server)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"invalid server URL {server!r}: {_reason(exc)}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (None for an empty one). Raises ServerUnreachable or ApiError."""
        try:
            response = self._http.request(method, API + path, **kwargs)
        except httpx.TimeoutException:
            raise ServerUnreachable(
                f"the server at {self.server} did not answer within {self._http.timeout.read:g} s"
            ) from None
        except httpx.ConnectError as exc:
            raise ServerUnreachable(
                f"cannot reach the server at {self.server}: {_reason(exc)}"
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CliError(f"invalid server URL {self.server!r}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise ServerUnreachable(
                f"lost the connection to the server at {self.server}: {_reason(exc)}"
            ) from None
        if response.is_error:
            raise _api_error(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CliError(
                f"the server at {self.server} answered {response.status_code} with something "
                "that is not JSON: is it an hpsearch server?"
            ) from None


def _api_error(response: httpx.Response) -> ApiError:
    detail, errors = "", []
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail") or "")
        raw = body.get("errors")
        if isinstance(raw, list):
            errors = [
                {"field": str(e.get("field", "")), "reason": str(e.get("reason", ""))}
                for e in raw
                if isinstance(e, dict)
            ]
    if not detail:  # a proxy's HTML page, an empty body
        first = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        detail = response.reason_phrase or first or "error"
    if response.status_code in (401, 403):
        detail += " (pass --token or set HPSEARCH_TOKEN)"
    return ApiError(response.status_code, detail, errors)
