"""The appliance's web face: REST status, run lookup, Prometheus metrics and a plain dashboard page."""

from webui.app import create_app

__all__ = ["create_app"]
