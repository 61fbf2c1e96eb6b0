"""`p2sam dicom-listener` (C-STORE SCP + the result sender) and `p2sam dicom-send` (sender only)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "dicom-listener":
        parser.add_argument("--host", default=None, help="address to listen on (default P2SAM_DICOM_LISTEN_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default P2SAM_DICOM_PORT)")
        parser.add_argument("--no-send", action="store_true", help="only receive: do not send job results (run `p2sam dicom-send` elsewhere)")
        parser.set_defaults(run=listen)
    else:
        parser.add_argument("--once", action="store_true", help="one round (enqueue, send what is due), then exit")
        parser.set_defaults(run=send)


def _settings(args):
    from p2sam.settings import Settings

    overrides = {}
    if getattr(args, "host", None):
        overrides["dicom_listen_host"] = args.host
    if getattr(args, "port", None):
        overrides["dicom_port"] = args.port
    return Settings(**overrides)


def _quiet_libraries(level: str) -> None:
    """pynetdicom logs whole data sets (patient names included) at DEBUG: keep it at WARNING."""
    import logging

    from p2sam.logs import configure

    configure(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def listen(args: argparse.Namespace) -> int:
    from .gateway import Gateway
    from .listener import Listener
    from .peers import PeerError

    settings = _settings(args)
    _quiet_libraries(settings.log_level)
    try:
        listener = Listener(settings)
        gateway = None if args.no_send else Gateway(settings)
    except PeerError as exc:
        print(f"p2sam dicom-listener: error: {exc}", file=sys.stderr)
        return 2
    try:
        listener.start()
    except OSError as exc:
        print(f"p2sam dicom-listener: error: cannot listen on {settings.dicom_listen_host}:{settings.dicom_port} "
              f"({exc.strerror})", file=sys.stderr)
        return 2
    stop = _stop_on_signals()
    if gateway is not None:
        threading.Thread(target=gateway.run_forever, args=(stop,), name="dicom-sender", daemon=True).start()
    listener.run_forever(stop, interval=min(1.0, settings.dicom_quiet_period_s / 4))
    listener.stop()
    return 0


def send(args: argparse.Namespace) -> int:
    from .gateway import Gateway
    from .peers import PeerError

    settings = _settings(args)
    _quiet_libraries(settings.log_level)
    try:
        gateway = Gateway(settings)
    except PeerError as exc:
        print(f"p2sam dicom-send: error: {exc}", file=sys.stderr)
        return 2
    if args.once:
        done = gateway.run_once()
        for r in done:
            print(f"{r['job_id']} {r['target']}/{r['artifact']} -> {r['destination']}: {r['state']}"
                  + (f" ({r['last_error']})" if r.get("last_error") else ""))
        return 0
    gateway.run_forever(_stop_on_signals())
    return 0
