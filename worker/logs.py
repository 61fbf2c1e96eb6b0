"""Moved to :mod:`p2sam.logs` (the application layer); this old import path still works."""

from p2sam.logs import configure, QUIET

__all__ = ["configure", "QUIET"]
