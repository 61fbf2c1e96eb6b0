"""`p2sam worker`: a Celery worker for one GPU (concurrency 1, prefetch 1, both queues)."""

from __future__ import annotations

import argparse
import os
import socket
import sys


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hostname", "-n", default=None,
                        help="worker name (default p2sam@<host>-<gpu or pid>); unique per worker")
    parser.add_argument("--queues", "-Q", default="interactive,batch", help="queues to consume (default interactive,batch)")
    parser.add_argument("--concurrency", type=int, default=1, help="processes (keep 1: one worker per GPU)")
    parser.add_argument("--loglevel", "-l", default=None, help="log level (default P2SAM_LOG_LEVEL)")
    parser.set_defaults(run=run)


def celery_argv(args: argparse.Namespace, log_level: str) -> list[str]:
    gpu = os.environ.get("NVIDIA_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES")
    suffix = f"gpu{gpu}" if gpu and gpu not in ("all", "none") else str(os.getpid())
    hostname = args.hostname or f"p2sam@{socket.gethostname()}-{suffix}"
    return ["worker", f"--loglevel={log_level}", f"--concurrency={args.concurrency}", "--prefetch-multiplier=1",
            "-Q", args.queues, "-n", hostname, "--without-gossip", "--without-mingle", "--pool=prefork"]


def run(args: argparse.Namespace) -> int:
    from p2sam.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        print("p2sam worker: P2SAM_BROKER_URL is not set. Without a broker `p2sam serve` runs jobs in-process "
              "(embedded mode); set P2SAM_BROKER_URL=redis://host:6379/0 to run separate workers.", file=sys.stderr)
        return 2
    from .celery_app import app

    app.worker_main(argv=celery_argv(args, args.loglevel or settings.log_level))
    return 0
