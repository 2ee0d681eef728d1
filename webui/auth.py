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


#: HTTP authentication schemes (IANA's registry and common ones) named back in a refusal; any other
#: first word is not repeated, as it may be a secret sent without a scheme
_KNOWN_SCHEMES = frozenset(
    [
        "basic",
        "digest",
        "negotiate",
        "ntlm",
        "token",
        "hoba",
        "mutual",
        "vapid",
        "oauth",
        "apikey",
        "scram-sha-1",
        "scram-sha-256",
        "aws4-hmac-sha256",
        "dpop",
        "privatetoken",
        "concealed",
    ]
)


def writer(token: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer <token>``."""

    def check(request: Request) -> None:
        if not token:
            raise WritesDisabled(HOW_TO_ENABLE)
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:  # which one counts would be the server's choice: neither does
            raise Unauthorized(
                f"a write needs 'Authorization: Bearer <api.token>'; {len(headers)} Authorization headers"
                " were sent, send one"
            )
        header = headers[0] if headers else None
        parts = (header or "").split(None, 1)
        scheme, given = (parts[0], parts[1]) if len(parts) == 2 else ("", "")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            if header is None:
                why = "no Authorization header was sent"
            elif len(parts) == 1 and parts[0].lower() == "bearer":
                why = "no token follows 'Bearer'"
            elif not scheme:  # (the header's text is never echoed: it may be the token itself)
                why = "the header is not a scheme and a token"
            elif scheme.lower() != "bearer":
                known = scheme if scheme.lower() in _KNOWN_SCHEMES else "not a known one"
                why = f"the header's scheme is {known!r}, not Bearer"
            else:
                why = "the token given is wrong"
            raise Unauthorized(f"a write needs 'Authorization: Bearer <api.token>'; {why}")

    return check
