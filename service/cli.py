"""`p2sam serve` (the HTTP API) and `p2sam apikey create|list|revoke`."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "serve":
        parser.add_argument("--host", default=None, help="address to listen on (default P2SAM_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default P2SAM_PORT)")
        parser.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a reverse proxy")
        parser.set_defaults(run=serve)
        return
    sub = parser.add_subparsers(dest="apikey_command", required=True, metavar="action")
    p = sub.add_parser("create", help="create a key and print it (once: only its hash is stored)")
    p.add_argument("--name", required=True, help="who uses it, e.g. planning-system (logged and audited)")
    p.add_argument("--scope", action="append", required=True, choices=["submit", "read", "admin"],
                   help="repeat: submit, read, admin (admin implies all)")
    p.set_defaults(run=apikey_create)
    p = sub.add_parser("list", help="list keys (names, scopes, dates; never the keys)")
    p.set_defaults(run=apikey_list)
    p = sub.add_parser("revoke", help="revoke a key by name or id")
    p.add_argument("key", help="key name or id")
    p.set_defaults(run=apikey_revoke)


def serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from p2sam.settings import get_settings

    from .app import create_app

    from p2sam.logs import configure

    settings = get_settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # third-party libraries: warnings only
    configure(settings.log_level)
    uvicorn.run(create_app(settings), host=args.host or settings.host, port=args.port or settings.port,
                log_level=settings.log_level.lower(), proxy_headers=args.proxy_headers, timeout_graceful_shutdown=10,
                # slow clients (deploy/README.md says which layer guards what): idle keep-alive
                # connections close after 5 s; beyond P2SAM_MAX_CONNECTIONS new requests get 503
                timeout_keep_alive=5, limit_concurrency=settings.max_connections)
    return 0


def _keys():
    from p2sam.settings import get_settings

    from .auth import KeyStore

    return KeyStore(get_settings().data_dir)


def apikey_create(args: argparse.Namespace) -> int:
    key = _keys().create(args.name, args.scope)
    print(key)
    print(f"created API key '{args.name}' with scopes {', '.join(sorted(set(args.scope)))}; it is shown only now",
          file=sys.stderr)
    return 0


def apikey_list(args: argparse.Namespace) -> int:
    keys = _keys().list()
    print(f"{'id':<14}{'name':<24}{'scopes':<22}{'created':<22}revoked")
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k["created_at"]))
        revoked = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k["revoked_at"])) if k.get("revoked_at") else "-"
        print(f"{k['id']:<14}{k['name']:<24}{','.join(k['scopes']):<22}{created:<22}{revoked}")
    return 0


def apikey_revoke(args: argparse.Namespace) -> int:
    n = _keys().revoke(args.key)
    if not n:
        print(f"no live key named or with id '{args.key}'", file=sys.stderr)
        return 1
    print(f"revoked {n} key(s)")
    return 0
