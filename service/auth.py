"""API keys with scopes: stored as salted hashes, sent as ``X-API-Key`` or ``Authorization: Bearer``.

A key looks like ``p2s_<key id>_<secret>``; the key id finds the entry, the secret is checked
against ``sha256(salt + secret)`` (keys are 256-bit random, so a fast hash is safe; a slow KDF
guards low-entropy passwords, not random keys). Keys live in ``data_dir/apikeys.json``
(mode 0600), managed with ``p2sam apikey create|list|revoke``; the API re-reads the file when it
changes. Scopes:

- ``submit``: upload inputs, submit jobs; read, cancel and purge the jobs this key submitted;
- ``read``: job status, results and artifact downloads (any job: e.g. a QA viewer's key);
- ``admin``: everything, incl. deleting any job. ``admin`` implies the others.

With ``P2SAM_AUTH=none`` every request acts as the admin ``anonymous`` (local use only).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from p2sam.jobstore import file_lock, write_json_atomic

from .problems import Problem

SCOPES = ("submit", "read", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and name (logged and audited; the key itself never is)."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"admin"}))


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class KeyStore:
    """data_dir/apikeys.json: {"keys": [{id, name, scopes, salt, hash, created_at, revoked_at}]}."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "apikeys.json"
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_suffix(".lock")):
            yield

    def _load(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {"keys": []}
        with self._lock:
            if self._cache is None or self._cache[0] != mtime:
                self._cache = (mtime, json.loads(self.path.read_text()))
            return self._cache[1]

    def _save(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path, data)
        os.chmod(self.path, 0o600)

    def create(self, name: str, scopes: list[str]) -> str:
        """Add a key; returns the key (shown once, never stored)."""
        bad = sorted(set(scopes) - set(SCOPES))
        if bad or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)} (got {', '.join(bad) or 'none'})")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        with self._locked():
            data = self._load()
            data = {"keys": list(data["keys"])}
            data["keys"].append({"id": key_id, "name": name, "scopes": sorted(set(scopes)), "salt": salt,
                                 "hash": _digest(salt, secret), "created_at": time.time(), "revoked_at": None})
            self._save(data)
        return f"p2s_{key_id}_{secret}"

    def list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in ("salt", "hash")} for e in self._load()["keys"]]

    def revoke(self, name_or_id: str) -> int:
        """Revoke every live key with this id or name; returns how many."""
        with self._locked():
            data = {"keys": [dict(e) for e in self._load()["keys"]]}
            n = 0
            for e in data["keys"]:
                if (e["id"] == name_or_id or e["name"] == name_or_id) and not e.get("revoked_at"):
                    e["revoked_at"] = time.time()
                    n += 1
            if n:
                self._save(data)
        return n

    def verify(self, key: str) -> Principal | None:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "p2s":
            return None
        for e in self._load()["keys"]:
            if e["id"] == parts[1] and not e.get("revoked_at"):
                if hmac.compare_digest(e["hash"], _digest(e["salt"], parts[2])):
                    return Principal(e["id"], e["name"], frozenset(e["scopes"]))
        return None


_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (`p2sam apikey create`)")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def principal(request: Request, api_key: str | None = Depends(_api_key),
              bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller, from X-API-Key or Authorization: Bearer; 401 when missing or unknown."""
    services = request.app.state.services
    if services.settings.auth == "none":
        return ANONYMOUS
    key = api_key or (bearer.credentials if bearer else None)
    if not key:
        services.audit.write(None, "authenticate", outcome="denied", status=401, path=request.url.path)
        raise Problem(401, "this API needs an API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>' "
                      "(an administrator creates one with `p2sam apikey create`)", slug="unauthenticated",
                      headers={"WWW-Authenticate": "Bearer"})
    who = services.keys.verify(key)
    if who is None:
        services.audit.write(None, "authenticate", outcome="denied", status=401, path=request.url.path)
        raise Problem(401, "the API key is not valid (unknown or revoked)", slug="unauthenticated",
                      headers={"WWW-Authenticate": "Bearer"})
    return who


def require(scope: str):
    """Dependency: the caller, who must hold ``scope`` (403 otherwise)."""

    def check(request: Request, who: Principal = Depends(principal)) -> Principal:
        if not who.has(scope):
            request.app.state.services.audit.write(who, "authorize", outcome="denied", status=403, path=request.url.path)
            raise Problem(403, f"this API key ('{who.name}') lacks the '{scope}' scope "
                          f"(it has: {', '.join(sorted(who.scopes))})", slug="forbidden")
        return who

    return check
