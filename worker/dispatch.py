"""Moved to :mod:`p2sam.dispatch` (the application layer); this old import path still works."""

from p2sam.dispatch import Dispatcher

__all__ = ["Dispatcher"]
