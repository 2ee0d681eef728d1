"""The upstream outlook: one place says how delivery to the HPC side is going, and when it will be done.

Everything that shows an ETA reads it from here (the dashboard's upstream card and header, the runs
table, ``edge where``), so an outage never shows three different answers. The facts:

- ``state``: ``up to date`` (nothing pending), ``stalled`` (data pending and no consumer the policy
  requires is connected, or one is connected but refusing what it is sent, say because its disk is full,
  and nothing became verified over the rate window: nothing can move until that changes), ``delivering``
  (files became verified over the rate window) or ``waiting`` (a consumer is connected, nothing verified
  in the window yet).
  A required consumer that is connected (it heartbeats) but has answered none of the chunks sent to it
  for ``UNANSWERED_SECONDS`` is a stall too, when nothing became verified over the rate window.
  A required consumer that refuses every chunk (``held_back``: refused many in a row, none taken), or
  whose last ``STUCK_REFUSALS`` answers were refusals, is a stall at once, whatever was verified earlier
  in the window.
  The appliance's own ledger refusing to record the consumers' answers (its disk full:
  ``ledger_refusing`` in the forwarder's counters) is a stall too, said as such.
- ``refusing``: the connected required consumers that refused a chunk in the last ``REFUSING_SECONDS``.
- ``unanswering``: the connected required consumers that answered no chunk sent to them for
  ``UNANSWERED_SECONDS`` (a wedged client: it heartbeats, it writes and acknowledges nothing).
- ``eta_seconds``: pending bytes over the verified rate; ``None`` whenever it cannot be known (stalled,
  or no file verified in the window). Verified bytes, not sent bytes: a chunk sent twice, or sent to a
  consumer that then vanished, moves no data upstream.
- ``unreadable_files``: stored files not yet verified that cannot be sent as they are on the local disk
  (gone, unreadable, changed since stored): named in the reason; no ETA while there are any.
- ``lag_seconds``: the age of the oldest data not yet verified upstream (0 when there is none).
- ``bytes_sent`` / ``bytes_resent``: first sends and resends, counted apart by the forwarder session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

RATE_WINDOW_SECONDS = 120.0
#: the shortest rate window: just after the required consumers (re)connected, the window is the time since
#: (`rate_window`), but not under this
MIN_RATE_WINDOW_SECONDS = 10.0
REFUSING_SECONDS = 30.0  # a consumer that refused a chunk this recently is "refusing" (it resends every 10 s)
UNANSWERED_SECONDS = 60.0  # chunks sent and none answered for this long: the consumer is not pulling
#: refusals in a row (none taken since) after which a refusing consumer is stuck, held back or not yet:
#: one refusal is a bit flipped on the way (resent at once); a full disk refuses chunk after chunk
STUCK_REFUSALS = 3


class _UpstreamLedger(Protocol):
    required_consumers: Sequence[str]

    def verified_rate(self, window: float, now: float) -> float: ...

    def oldest_unverified_at(self) -> float | None: ...


def eta_seconds(pending_bytes: int, rate_bytes_per_s: float, connected: bool = True) -> float | None:
    """Seconds until ``pending_bytes`` are verified at ``rate_bytes_per_s``: 0 when nothing is pending,
    None when it cannot be known (no required consumer connected, or no rate yet)."""
    if pending_bytes <= 0:
        return 0.0
    if not connected or rate_bytes_per_s <= 0:
        return None
    return round(pending_bytes / rate_bytes_per_s, 1)


def rate_window(required: Sequence[str], forwarder: Mapping[str, Any]) -> float:
    """The window the verified rate (and the ETA) is measured over: ``RATE_WINDOW_SECONDS``, or, when
    every required consumer is connected and the newest connection (or recovery from a hold-back,
    ``flowing_seconds``) is younger, the time since it (at least ``MIN_RATE_WINDOW_SECONDS``).
    Measured over an outage too, a backlog sent after it read "ETA 4 min" and was gone in 10 s (an
    outside probe): the outage's silence is no rate of the link now."""
    ages = {  # since it began taking chunks: its hello, or its recovery from a hold-back (a probe's
        # consumer held back 48 s, then "ETA 244 s" for a backlog gone in 3 s)
        str(c.get("consumer")): float(c.get("flowing_seconds", c["connected_seconds"]))
        for c in forwarder.get("consumers") or ()
        if c.get("connected") and c.get("connected_seconds") is not None
    }
    if not required or any(name not in ages for name in required):
        return RATE_WINDOW_SECONDS
    newest = min(ages[name] for name in required)
    return max(MIN_RATE_WINDOW_SECONDS, min(RATE_WINDOW_SECONDS, newest))


def _not_connected(forwarder: Mapping[str, Any]) -> str:
    """ "no consumer connected", or, when some are (an optional one, or another required one), "a
    required consumer not connected" (an outside probe read the first beside two consumers pulling)."""
    if any(c.get("connected") for c in forwarder.get("consumers") or ()):
        return "a required consumer not connected"
    return "no consumer connected"


def _handshakes(forwarder: Mapping[str, Any]) -> str:
    """What the upstream link's failed handshakes say of a consumer not connected, in brackets ("" when
    none failed): a key not admitted, a client without CurveZMQ keys, or another failure (a client
    holding another server key than this appliance's). An outside probe's client with the wrong server
    key showed only in ``handshakes_failed``, its stall naming no cause."""
    said = []
    for field, what in (
        ("curve_handshakes_refused", "of a key not admitted (upstream.curve_clients_dir; the log names it)"),
        ("curve_handshakes_without_curve", "without CurveZMQ keys (pull.curve_secret_file)"),
        (
            "handshakes_failed",
            "failed otherwise (a client whose pull.curve_server_file is not this appliance's public key,"
            " or one that gave up)",
        ),
    ):
        count = int(forwarder.get(field) or 0)
        if count:
            said.append(f"{count} {what}")
    return f" (handshakes since start: {'; '.join(said)})" if said else ""


def _missing(required: list[str], forwarder: Mapping[str, Any]) -> list[str]:
    """The required consumers not connected now."""
    connected = {str(c.get("consumer")) for c in forwarder.get("consumers") or () if c.get("connected")}
    return [name for name in required if name not in connected]


def _blocking(missing: list[str], owing: Callable[[list[str]], list[str]] | None) -> list[str]:
    """Of the required consumers not connected, those that have not confirmed every file still to go
    upstream: one that has is waited for by nothing (an outside probe read "hpc, tape must pull" with
    hpc's confirmations all in, while the storage alarm rightly named tape alone)."""
    if not missing or owing is None:
        return missing
    owed = set(owing(missing))
    return [name for name in missing if name in owed]


def stall(
    required: list[str],
    forwarder: Mapping[str, Any],
    owing: Callable[[list[str]], list[str]] | None = None,
) -> str | None:
    """Why nothing pending can be verified now, in the cheap cases (no ledger query): a required
    consumer not connected, or the appliance's ledger unable to record acknowledgements; else None. A
    run's where report gives no ETA then (an outside probe: "ETA 8 s" for data one required consumer,
    stopped, would never confirm, beside the outlook's "stalled")."""
    if forwarder.get("ledger_refusing"):
        return "the appliance's own disk is full: its ledger cannot record acknowledgements"
    missing = _blocking(_missing(required, forwarder), owing)
    if missing:
        # a key the appliance does not admit is no connection: said, or the cause was in a counter and
        # the log only (an outside probe's required consumer's key, removed from the clients directory)
        return f"{_not_connected(forwarder)}: {', '.join(missing)} must pull{_handshakes(forwarder)}"
    # a required consumer refusing chunk after chunk, or held back for it (its disk full, say): a probe read
    # "ETA 30 s" in `edge where` beside the outlook's "stalled"
    held = _held_back(required, forwarder)
    if held:
        said = "; ".join(f"{name}: {why}" for name, why in sorted(held.items()))
        return f"consumer refusing chunks ({said[:300]})"
    return None


def _held_back(required: Sequence[str], forwarder: Mapping[str, Any]) -> dict[str, str]:
    """The connected required consumers stuck refusing (`_stuck`), whenever they last refused: held back,
    the pause before their next chunk grows to a minute, longer than ``REFUSING_SECONDS`` (an outside
    probe read "delivering" 30 s into a pause): why, in their last refusal's words."""
    stuck = _stuck(forwarder)
    return {
        str(c.get("consumer")): str(c.get("last_refusal"))
        for c in forwarder.get("consumers") or []
        if c.get("connected") and str(c.get("consumer")) in required and str(c.get("consumer")) in stuck
    }


def _stuck(forwarder: Mapping[str, Any]) -> set[str]:
    """The consumers whose latest answers are refusals: held back (refusing everything), or
    ``STUCK_REFUSALS`` in a row with none taken since (an outside probe: a full HPC disk's first six
    refusals left `edge where` at "ETA 30 s" for half a minute, the ETA of files verified before)."""
    return {
        str(c.get("consumer"))
        for c in forwarder.get("consumers") or []
        if c.get("held_back") or int(c.get("refused_in_a_row") or 0) >= STUCK_REFUSALS
    }


def _refusals(required: list[str], forwarder: Mapping[str, Any]) -> dict[str, str]:
    """The connected required consumers that refused chunks in the last ``REFUSING_SECONDS``: why."""
    return {
        str(c.get("consumer")): str(c.get("last_refusal"))
        for c in forwarder.get("consumers") or []
        if c.get("connected")
        and str(c.get("consumer")) in required
        and c.get("seconds_since_refusal") is not None
        and float(c["seconds_since_refusal"]) < REFUSING_SECONDS
    }


def upstream_outlook(
    ledger: _UpstreamLedger,
    bytes_pending: int,
    forwarder: Mapping[str, Any],
    now: float,
    local_bytes: int = 0,
) -> dict[str, Any]:
    """The one answer to "how is upstream delivery going?" (see the module docstring for the fields).

    ``bytes_pending`` is the ledger's summary figure; ``forwarder`` the forwarder's counters (its
    ``consumers`` list says who is connected); ``now`` is wall-clock time, as the ledger's times are.
    """
    consumers = forwarder.get("consumers") or []
    connected = sorted(str(c.get("consumer")) for c in consumers if c.get("connected"))
    required = list(ledger.required_consumers)
    missing = _missing(required, forwarder)
    refusals = _refusals(required, forwarder)
    held_back = _held_back(required, forwarder)
    silent = {
        str(c.get("consumer")): float(c["seconds_unanswered"])
        for c in consumers
        if c.get("connected")
        and str(c.get("consumer")) in required
        and c.get("seconds_unanswered") is not None
        and float(c["seconds_unanswered"]) >= UNANSWERED_SECONDS
    }
    window = rate_window(required, forwarder)
    rate = float(ledger.verified_rate(window, now))
    oldest = ledger.oldest_unverified_at()
    pending = int(bytes_pending)
    if pending <= 0:
        state, reason = "up to date", "every stored file is verified upstream"
        if local_bytes > 0:  # (an outside probe read "every stored file" beside 20 MB never sent)
            reason = (
                "every file that goes upstream is verified; the rest stays here by upstream.forward"
                f" ({local_bytes:,} bytes kept local)"
            )
    elif forwarder.get("ledger_refusing"):
        state = "stalled"
        reason = (
            "the appliance's own disk is full: its ledger cannot record what the consumers acknowledge"
            " (they are asked again; nothing is lost), so nothing can be verified and purged"
        )
    elif blocking := _blocking(missing, getattr(ledger, "consumers_owing", None)):
        state = "stalled"
        reason = (
            f"{_not_connected(forwarder)}: {', '.join(blocking)} must pull (data stays on the local disk)"
        )
        if done := [name for name in missing if name not in blocking]:
            has = "has" if len(done) == 1 else "have"
            reason += f"; {', '.join(done)}, not connected, {has} confirmed all of it"
    elif held_back or (refusals and rate <= 0):
        # (files verified earlier in the rate window say nothing once it refuses every chunk)
        state = "stalled"
        said = "; ".join(f"{name}: {why}" for name, why in sorted({**refusals, **held_back}.items()))
        reason = f"consumer refusing chunks ({said[:300]}); data stays on the local disk"
    elif silent and rate <= 0:
        state = "stalled"
        said = ", ".join(f"{name} for {seconds:.0f} s" for name, seconds in sorted(silent.items()))
        reason = (
            f"consumer connected but acknowledging nothing sent to it ({said}): check the HPC side's"
            " client; data stays on the local disk"
        )
    elif rate > 0:
        state, reason = "delivering", f"files verified over the last {window:.0f} s"
    else:
        state, reason = "waiting", "consumer connected; no file verified yet in the rate window"
    unreadable = forwarder.get("unreadable_files") or []
    if unreadable and pending > 0:  # the pending bytes include files that cannot arrive as they are
        reason += (
            f"; {len(unreadable)} stored file(s) cannot be read locally and will not arrive until restored"
            f" (first: {unreadable[0].get('path')})"
        )
    return {
        "state": state,
        "reason": reason,
        "bytes_pending": pending,
        "verified_bytes_per_s": round(rate, 1),
        "rate_window_seconds": window,
        # no ETA while some pending file cannot be sent: its bytes would never arrive
        "eta_seconds": eta_seconds(pending, rate, connected=state != "stalled" and not unreadable),
        "lag_seconds": 0.0 if oldest is None else round(max(0.0, now - oldest), 1),
        "consumers_connected": connected,
        "consumers_required": required,
        "refusing": sorted(refusals.keys() | held_back.keys()),
        "unanswering": sorted(silent),
        "unreadable_files": len(unreadable),
        "bytes_sent": int(forwarder.get("bytes_sent", 0) or 0),
        "bytes_resent": int(forwarder.get("bytes_resent", 0) or 0),
    }
