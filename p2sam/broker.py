"""The Celery configuration both sides share: the API publishes with it, workers consume with it.

Redis broker, no result backend (results live in the job store).

Conventions (../shared/design/SERVICE.md): one worker process per GPU (``--concurrency 1``),
prefetch 1, ``acks_late`` + ``task_reject_on_worker_lost`` (safe because the task is
idempotent), a visibility timeout longer than the longest job, soft/hard time limits, and two
queues: ``interactive`` (single jobs from planning systems) and ``batch`` (longitudinal batches).
Only the job id travels through the broker.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from .settings import Settings, get_settings

TASK_NAME = "p2sam.run_job"
QUEUES = ("interactive", "batch")


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from P2SAM_ settings (broker_url must be set). Its task module,
    ``worker.tasks``, is imported only by a worker process (``include``), never by the API."""
    settings = settings or get_settings()
    app = Celery("p2sam", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process loads the model in worker_process_init before it reports UP; Celery's default
        # 4 s made a restarted process (after a kill -9) time out and restart forever on a busy host.
        worker_proc_alive_timeout=settings.worker_start_timeout_s,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_hard_time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="interactive",
        task_routes={TASK_NAME: {"queue": "interactive"}},
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app

