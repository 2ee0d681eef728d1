"""One exception root for the appliance, split by who is to blame (as caproto does)."""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error the appliance raises on purpose."""


class ConfigError(EdgeError, ValueError):
    """A configuration value is missing or out of range; the message names the key."""


class LocalProtocolError(EdgeError, ValueError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(EdgeError, ValueError):
    """A peer sent something the protocol does not allow."""


class NotFound(EdgeError, KeyError):
    """A run, file or consumer that the caller named does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class Refused(EdgeError, RuntimeError):
    """The appliance refuses an operation now (e.g. a run while the disk holds unverified data)."""


class Unauthorized(EdgeError, PermissionError):
    """A write to the API without the right bearer token (HTTP 401)."""


class WritesDisabled(EdgeError, PermissionError):
    """The API takes no writes because no token is configured (HTTP 403); the message says how to set one."""
