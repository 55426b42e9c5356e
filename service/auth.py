"""Optional bearer tokens: admin (everything), worker (the trial protocol and reads), read.

Tokens are compared in constant time and never logged. Browsers reach the dashboard with HTTP
Basic auth: any user name, the token as the password."""

from __future__ import annotations

import base64
import binascii
import hmac
from enum import IntEnum

from service.errors import Forbidden, Unauthorized
from service.settings import Settings


class Role(IntEnum):
    NONE = 0
    READ = 1
    WORKER = 2
    ADMIN = 3


def token_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def role_of(settings: Settings, token: str | None) -> Role:
    """The role a token grants; every configured token is compared, so timing says nothing."""
    if token is None:
        return Role.NONE
    role = Role.NONE
    given = token.encode()
    for candidate, candidate_role in (
        (settings.admin_token, Role.ADMIN),
        (settings.worker_token, Role.WORKER),
        (settings.read_token, Role.READ),
    ):
        if candidate is None:
            continue
        if hmac.compare_digest(given, candidate.get_secret_value().encode()):
            role = max(role, candidate_role)
    return role


def authorize(settings: Settings, authorization: str | None, needed: Role) -> None:
    """Raise Unauthorized (missing or wrong token) or Forbidden (a token of the wrong kind)."""
    if not settings.tokens_enabled:
        return
    if needed == Role.READ and settings.read_access == "open":
        return
    token = token_from_header(authorization)
    role = role_of(settings, token)
    if role == Role.NONE:
        raise Unauthorized("a valid token is required: send 'Authorization: Bearer <token>'")
    if role < needed:
        raise Forbidden(f"this needs the {needed.name.lower()} token")
