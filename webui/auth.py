"""Who may write through the API: a bearer token (``api.token``), compared in constant time.

Reads are open (the default bind is 127.0.0.1). A write endpoint depends on `writer`: with no token
configured every write is refused with 403 and the way to set one; a missing or wrong token is 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from edge.errors import Unauthorized, WritesDisabled

HOW_TO_ENABLE = (
    "writes are disabled: set api.token (edge run --set api.token=SECRET, or EDGE_API__TOKEN) and send"
    " 'Authorization: Bearer SECRET'"
)


def writer(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer <token>``."""

    def check(request: Request) -> None:
        if not token:
            raise WritesDisabled(HOW_TO_ENABLE)
        header = request.headers.get("authorization")
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            if header is None:
                why = "no Authorization header was sent"
            elif scheme.lower() != "bearer":
                why = f"the header's scheme is {scheme[:20]!r}, not Bearer"
            else:
                why = "the token given is wrong"
            raise Unauthorized(f"a write needs 'Authorization: Bearer <api.token>'; {why}")

    return check
