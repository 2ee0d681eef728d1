"""The edge daemon: ingest, reduce, store and forward detector frames, and the ``edge`` CLI."""

__version__ = "0.1.0"
