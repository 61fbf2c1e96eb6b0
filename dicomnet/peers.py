"""The DICOM peers this service talks to (``P2SAM_DICOM_PEERS``) and who may talk to it.

A peer is either a DIMSE node ``{"ae_title": "ORTHANC", "host": "pacs", "port": 4242, "tls": false}``
(C-STORE) or a DICOMweb service ``{"url": "http://pacs:8042/dicom-web", "username": ..., "password": ...}``
or ``{"url": ..., "token": ...}`` (STOW-RS for sending, QIDO-RS / WADO-RS for pulling). The
setting holds JSON, or ``@/path/to/peers.json`` (keeps passwords out of the environment).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_AE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,14}[\x21-\x7e])?$")  # 1-16 printable, no backslash checked below
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PeerError(ValueError):
    """The peer configuration (or a peer name a job asks for) is wrong; the message says how."""


class Peer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    ae_title: str | None = Field(None, description="DIMSE: the peer's AE title")
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = Field(False, description="DIMSE over TLS (P2SAM_DICOM_TLS_*)")
    url: str | None = Field(None, description="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool | str = Field(True, description="DICOMweb over https: verify the certificate (or a CA bundle path)")

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        dimse = self.ae_title is not None or self.host is not None or self.port is not None
        if dimse == (self.url is not None):
            raise ValueError("a peer is either {ae_title, host, port} (C-STORE) or {url} (DICOMweb)")
        if dimse:
            if not (self.ae_title and self.host and self.port):
                raise ValueError("a C-STORE peer needs ae_title, host and port")
            if not _AE.match(self.ae_title) or "\\" in self.ae_title:
                raise ValueError(f"ae_title '{self.ae_title}': 1-16 printable ASCII characters, no backslash")
        elif not re.match(r"^https?://", self.url or ""):
            raise ValueError("url: http:// or https://")
        return self

    @property
    def protocol(self) -> Literal["c-store", "stow-rs"]:
        return "stow-rs" if self.url else "c-store"

    def describe(self) -> str:
        """For logs and the job's deliveries (never the password)."""
        return f"{self.url}" if self.url else f"{self.ae_title}@{self.host}:{self.port}"


def load_peers(value: str | None) -> dict[str, Peer]:
    """Parse P2SAM_DICOM_PEERS (JSON or @file); raises PeerError with a one-line reason."""
    if not value or not value.strip():
        return {}
    text = value.strip()
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise PeerError(f"P2SAM_DICOM_PEERS: cannot read {text[1:]} ({exc.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PeerError(f"P2SAM_DICOM_PEERS: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(raw, dict):
        raise PeerError("P2SAM_DICOM_PEERS: a JSON object {name: peer}")
    peers = {}
    for name, spec in raw.items():
        if not _NAME.match(str(name)):
            raise PeerError(f"P2SAM_DICOM_PEERS: peer name '{name}': letters, digits, '.', '_', '-'")
        try:
            peers[name] = Peer.model_validate({**(spec if isinstance(spec, dict) else {"?": spec}), "name": name})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise PeerError(f"P2SAM_DICOM_PEERS: peer '{name}'{' ' + where if where else ''}: {first['msg']}") from None
    return peers


def peers_of(settings) -> dict[str, Peer]:
    return load_peers(settings.dicom_peers)


def default_destinations(settings) -> list[str]:
    return [d.strip() for d in settings.dicom_destinations.split(",") if d.strip()]


def check_destinations(names: list[str], peers: dict[str, Peer]) -> None:
    unknown = [n for n in names if n not in peers]
    if unknown:
        offered = ", ".join(sorted(peers)) or "none configured (P2SAM_DICOM_PEERS)"
        raise PeerError(f"destinations: unknown peer {', '.join(repr(n) for n in unknown)}; peers: {offered}")


def allowed_calling_aes(settings, peers: dict[str, Peer]) -> list[str] | None:
    """AE titles the listener accepts associations from; None means any (``*``)."""
    extra = [a.strip() for a in settings.dicom_allowed_aes.split(",") if a.strip()]
    if "*" in extra:
        return None
    return sorted({p.ae_title for p in peers.values() if p.ae_title} | set(extra))
