"""The API's HTTP connections, guarded: a cap on how many are open and a deadline for a request's headers.

uvicorn times out an idle keep-alive connection, but not one that sends a request's headers slowly or
never finishes them: an outside probe held 20,000 such connections open, the daemon ran out of file
descriptors, the API stopped answering, a detector's new stream could not be taken in, and asyncio
logged a traceback for every retried accept (260 MB in a minute). Here each connection beyond
``api.max_connections`` is closed as it opens, and one whose request headers are not complete
``api.header_seconds`` after its bytes began (or after it opened) is closed; both are counted
(``REFUSED``) and logged (the first, then every 100th). A request being answered, a live event stream
(``/api/events``) included, is never cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: connections closed: ``over_limit`` (``api.max_connections`` open already), ``header_timeout``; and
#: ``event_streams``: live event streams refused (503) as `event_stream_limit` were open
REFUSED: Counter[str] = Counter()
#: API requests answered 4xx (refused: a bad token, body or value, a conflict with a run, an unknown
#: path), by kind (``read``: GET, HEAD, OPTIONS; ``write``: any other method) and status code
REQUESTS_REFUSED: Counter[tuple[str, int]] = Counter()


def count_refusal(method: str, status: int) -> None:
    """One API request answered ``status``: counted in `REQUESTS_REFUSED` when it is a 4xx."""
    if 400 <= status < 500:
        kind = "read" if method in ("GET", "HEAD", "OPTIONS") else "write"
        REQUESTS_REFUSED[(kind, status)] += 1


def requests_refused() -> dict[str, dict[str, int]]:
    """`REQUESTS_REFUSED` as ``{"write": {"409": n, ...}, "read": {...}}`` (both kinds always present)."""
    out: dict[str, dict[str, int]] = {"write": {}, "read": {}}
    for (kind, status), n in sorted(REQUESTS_REFUSED.items()):
        out[kind][str(status)] = int(n)
    return out


def event_stream_limit(max_connections: int) -> int:
    """How many live event streams (``/api/events``) may be open at once: ``api.max_connections`` less a
    quarter of them (at least 4), kept for requests. A stream holds its connection for as long as the
    client keeps it: 16 streams under a cap of 16 shut every status poll and metrics scrape out for as
    long as they stayed (an outside probe)."""
    return max_connections - max(4, max_connections // 4)


def refused_stream(limit: int) -> None:
    """A live event stream refused: counted and logged (the first, then every 100th)."""
    _refused(
        "event_streams",
        f"a live event stream refused: {limit} are open (api.max_connections keeps the rest for requests)",
    )


def guarded_protocol(max_connections: int, header_seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the cap and the header deadline (``uvicorn.Config(http=...)``).
    uvicorn is imported here, by the API's start, not by the status view that reads ``REFUSED``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._waiting_cycle: Any = None  # the request cycle there was when the deadline was set

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _refused("over_limit", f"{max_connections} API connections are open (api.max_connections)")
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # bytes of a request yet to start
                self._arm()
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._waiting_cycle:
                self._disarm()  # its headers are in: a request is being answered

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._waiting_cycle = self.cycle
                self._deadline = self.loop.call_later(header_seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.cycle is self._waiting_cycle and (self.cycle is None or self.cycle.response_complete):
                _refused("header_timeout", f"a request's headers not complete in {header_seconds:g} s")
                self.transport.close()

    return GuardedH11


def _refused(kind: str, why: str) -> None:
    REFUSED[kind] += 1
    n = REFUSED[kind]
    if n == 1 or n % 100 == 0:
        log.warning("API connection closed: %s (%d such so far)", why, n)
