"""Send one DICOM file to one peer: C-STORE (pynetdicom) or STOW-RS (httpx).

Every outcome is a :class:`Outcome`: ``ok`` (the destination acknowledged the instance),
``transient`` (down, timed out, out of resources: retry later) or ``refused`` (the destination
answered and said no: unknown SOP class, our AE not allowed, bad request: retrying will not help).
Messages name SOP classes, status codes and peers, never patient data.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .peers import Peer

log = logging.getLogger("p2sam.dicomnet")

OK, TRANSIENT, REFUSED = "ok", "transient", "refused"


@dataclass
class Outcome:
    result: Literal["ok", "transient", "refused"]
    message: str
    status: int | None = None  # DIMSE status or HTTP status

    @property
    def ok(self) -> bool:
        return self.result == OK


def sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


def tls_context(settings, server: bool) -> ssl.SSLContext | None:
    """The TLS context from P2SAM_DICOM_TLS_* (None when no certificate is configured and we are
    the server; a client context checks the peer against the CA bundle, or the system's)."""
    if server:
        if not settings.dicom_tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.dicom_tls_ca) if settings.dicom_tls_ca else None)
        ctx.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key) if settings.dicom_tls_key else None)
        if settings.dicom_tls_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.dicom_tls_ca) if settings.dicom_tls_ca else None)
    if settings.dicom_tls_cert:
        ctx.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key) if settings.dicom_tls_key else None)
    return ctx


def send_file(path: Path, peer: Peer, settings) -> Outcome:
    """Send ``path`` to ``peer`` once; never raises for network or protocol trouble."""
    try:
        if peer.protocol == "stow-rs":
            return send_stow(path, peer, settings)
        return send_cstore(path, peer, settings)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(TRANSIENT, f"{peer.name}: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")


# --- C-STORE
_WARNINGS = {0x0001, 0xB000, 0xB006, 0xB007}
_REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context name not supported",
                   (1, 3): "our calling AE title is not recognised", (1, 7): "its called AE title is not "
                   "recognised", (2, 1): "no reason given", (2, 2): "protocol version not supported",
                   (3, 1): "temporary congestion", (3, 2): "local limit exceeded"}


def send_cstore(path: Path, peer: Peer, settings) -> Outcome:
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    sop_class = str(ds.SOPClassUID)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.dicom_timeout_s
    ae.connection_timeout = settings.dicom_timeout_s
    ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
    tls_args = (tls_context(settings, server=False), peer.host) if peer.tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    where = f"{peer.name} ({peer.ae_title})"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result, source, diagnostic = (getattr(rsp, k, None) for k in ("result", "result_source", "diagnostic"))
        reason = _REJECT_REASONS.get((source, diagnostic), f"source {source}, reason {diagnostic}")
        if result == 0x01:  # rejected-permanent
            return Outcome(REFUSED, f"{where} rejected the association permanently: {reason}")
        return Outcome(TRANSIENT, f"{where} rejected the association for now: {reason}")
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            return Outcome(REFUSED, f"{where} does not accept {sop_name(sop_class)} (presentation context rejected)")
        return Outcome(TRANSIENT, f"{where} at {peer.host}:{peer.port} is unreachable (no association)")
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            return Outcome(REFUSED, f"{where} does not accept {sop_name(sop_class)} (presentation context rejected)")
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        return Outcome(TRANSIENT, f"{where}: no C-STORE response (connection lost or timed out)")
    code = int(status.Status)
    comment = f" ({status.ErrorComment})" if "ErrorComment" in status and status.ErrorComment else ""
    if code == 0x0000 or code in _WARNINGS:
        return Outcome(OK, f"{where}: stored" + (f" with warning 0x{code:04X}{comment}" if code else ""), code)
    if 0xA700 <= code <= 0xA7FF:
        return Outcome(TRANSIENT, f"{where}: out of resources, C-STORE status 0x{code:04X}{comment}", code)
    return Outcome(REFUSED, f"{where} refused the {sop_name(sop_class)}: C-STORE status 0x{code:04X}"
                   f" ({_status_name(code)}){comment}", code)


def _status_name(code: int) -> str:
    if code == 0x0122:
        return "SOP class not supported"
    if code == 0x0124:
        return "not authorised"
    if 0xA900 <= code <= 0xA9FF:
        return "data set does not match SOP class"
    if 0xC000 <= code <= 0xCFFF:
        return "cannot understand"
    return "failure"


# --- STOW-RS
def _auth(peer: Peer):
    import httpx

    if peer.token:
        return None, {"Authorization": f"Bearer {peer.token}"}
    if peer.username is not None:
        return httpx.BasicAuth(peer.username, peer.password or ""), {}
    return None, {}


def send_stow(path: Path, peer: Peer, settings) -> Outcome:
    import httpx

    data = Path(path).read_bytes()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    auth, headers = _auth(peer)
    headers.update({"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json"})
    where = f"{peer.name} (STOW-RS)"
    try:
        r = httpx.post(peer.url.rstrip("/") + "/studies", content=body, headers=headers, auth=auth,
                       timeout=settings.dicom_timeout_s, verify=peer.verify)
    except httpx.TransportError as exc:
        return Outcome(TRANSIENT, f"{where} is unreachable ({type(exc).__name__})")
    failed = _failed_reasons(r)
    if r.status_code in (200, 202) and not failed:
        return Outcome(OK, f"{where}: stored (HTTP {r.status_code})", r.status_code)
    if r.status_code == 429 or r.status_code >= 500:
        return Outcome(TRANSIENT, f"{where}: HTTP {r.status_code}", r.status_code)
    why = f" (failure reason 0x{failed[0]:04X}: {_status_name(failed[0])})" if failed else ""
    return Outcome(REFUSED, f"{where} refused the instance: HTTP {r.status_code}{why}", r.status_code)


def _failed_reasons(r) -> list[int]:
    """FailureReason (0008,1197) of each FailedSOPSequence (0008,1198) item in a STOW response."""
    try:
        body = json.loads(r.content) if r.content else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    items = ((body or {}).get("00081198") or {}).get("Value") or [] if isinstance(body, dict) else []
    reasons = []
    for item in items:
        value = ((item.get("00081197") or {}).get("Value") or [0xC000])[0]
        reasons.append(int(value))
    return reasons
