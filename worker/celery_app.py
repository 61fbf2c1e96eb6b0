"""The worker's Celery application (``celery -A worker.celery_app``), configured by p2sam.broker."""

from __future__ import annotations

from p2sam.broker import QUEUES, TASK_NAME, make_app

app = make_app()

__all__ = ["app", "make_app", "TASK_NAME", "QUEUES"]
