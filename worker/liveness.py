"""Moved to :mod:`p2sam.liveness` (the application layer); this old import path still works."""

from p2sam.liveness import mark, keep_ready, state, BEAT_S, FRESH_S

__all__ = ["mark", "keep_ready", "state", "BEAT_S", "FRESH_S"]
