"""Query and retrieve from a PACS: QIDO-RS / WADO-RS (httpx) for DICOMweb peers, C-FIND / C-GET
(pynetdicom) for DIMSE peers. Both sources answer the same three questions (the series of a
study, the study of a series, the instances of a series written to a folder) and raise the same
three errors, so :mod:`dicomnet.pull` does not know which protocol it talks.

Errors: :class:`PacsUnavailable` (down, timed out, 5xx, association rejected for now: retry),
:class:`PacsRefused` (the PACS answered and said no: credentials, not allowed; retrying will not
help), :class:`NotOnPacs` (the PACS does not hold what was asked for). Messages name the peer,
HTTP / DIMSE statuses and counts; the caller's own UIDs only where they say what is missing.
"""

from __future__ import annotations

import logging
import mmap
import re
from pathlib import Path
from typing import Any

from .peers import Peer


class PacsError(Exception):
    """Something went wrong talking to a PACS; subclasses say whether retrying can help."""


class PacsUnavailable(PacsError):
    """The PACS could not be reached or answered 5xx / 429: worth retrying later."""


class PacsRefused(PacsError):
    """The PACS answered and refused (HTTP 401/403/4xx, association rejected permanently)."""


class NotOnPacs(PacsError):
    """The PACS does not hold the study / series asked for."""


SeriesInfo = dict[str, Any]  # {"study_uid", "series_uid", "modality", "instances"}


def source_for(peer: Peer, settings):
    quiet_libraries()
    return DicomWebSource(peer, settings) if peer.protocol == "stow-rs" else DimseSource(peer, settings)


def quiet_libraries() -> None:
    """httpx logs every URL (study / series UIDs in the path) and pynetdicom every query identifier
    at INFO: keep them at WARNING in the processes that pull (the worker)."""
    for name in ("httpx", "httpcore", "pynetdicom"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


# --- DICOMweb
def _value(item: dict, tag: str, default: Any = "") -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def _series_info(item: dict, study_uid: str = "") -> SeriesInfo:
    return {"study_uid": str(_value(item, "0020000D", study_uid)), "series_uid": str(_value(item, "0020000E")),
            "modality": str(_value(item, "00080060")), "instances": int(_value(item, "00201209", 0) or 0)}


class DicomWebSource:
    def __init__(self, peer: Peer, settings) -> None:
        self.peer, self.settings = peer, settings
        self.root = peer.url.rstrip("/")
        self.where = f"{peer.name} (DICOMweb)"

    def _client(self):
        import httpx

        from .send import _auth

        auth, headers = _auth(self.peer)
        return httpx.Client(auth=auth, headers=headers, timeout=self.settings.dicom_timeout_s, verify=self.peer.verify)

    def _check(self, r, what: str) -> None:
        if r.status_code == 429 or r.status_code >= 500:
            raise PacsUnavailable(f"{self.where}: HTTP {r.status_code} for {what}")
        if r.status_code in (401, 403):
            raise PacsRefused(f"{self.where} refused {what}: HTTP {r.status_code} (check the peer's credentials)")
        if r.status_code >= 400 and r.status_code != 404:
            raise PacsRefused(f"{self.where} refused {what}: HTTP {r.status_code}")

    def _qido(self, path: str, params: dict[str, str], what: str) -> list[dict]:
        import httpx

        try:
            with self._client() as c:
                r = c.get(self.root + path, params=params, headers={"Accept": "application/dicom+json"})
        except httpx.TransportError as exc:
            raise PacsUnavailable(f"{self.where} is unreachable ({type(exc).__name__})") from None
        self._check(r, what)
        if r.status_code in (204, 404) or not r.content:
            return []
        try:
            body = r.json()
        except ValueError:
            raise PacsRefused(f"{self.where}: the answer to {what} is not DICOM JSON") from None
        return body if isinstance(body, list) else []

    def series_of_study(self, study_uid: str) -> list[SeriesInfo]:
        items = self._qido(f"/studies/{study_uid}/series", {"includefield": "00201209"}, "a series query (QIDO-RS)")
        return [_series_info(i, study_uid) for i in items]

    def find_series(self, series_uid: str) -> SeriesInfo | None:
        items = self._qido("/series", {"SeriesInstanceUID": series_uid, "includefield": "00201209"},
                           "a series query (QIDO-RS)")
        found = [_series_info(i) for i in items if str(_value(i, "0020000E")) == series_uid]
        return found[0] if found else None

    def retrieve(self, study_uid: str, series_uid: str, into: Path, prefix: str = "") -> int:
        """Every instance of the series into ``into`` (``<prefix><n>.dcm``); returns how many."""
        import httpx

        into.mkdir(parents=True, exist_ok=True)
        raw = into / ".wado-rs.multipart"
        url = f"{self.root}/studies/{study_uid}/series/{series_uid}"
        try:
            with self._client() as c, c.stream("GET", url, headers={"Accept": 'multipart/related; type="application/dicom"'}) as r:
                if r.status_code == 404:
                    raise NotOnPacs(f"{self.where} holds no series {series_uid} in study {study_uid}")
                self._check(r, "a retrieve (WADO-RS)")
                content_type = r.headers.get("content-type", "")
                with open(raw, "wb") as f:
                    f.writelines(r.iter_bytes(1 << 20))
        except httpx.TransportError as exc:
            raise PacsUnavailable(f"{self.where}: retrieve interrupted ({type(exc).__name__})") from None
        try:
            return split_multipart(raw, content_type, into, self.where, prefix)
        finally:
            raw.unlink(missing_ok=True)


def split_multipart(raw: Path, content_type: str, into: Path, where: str, prefix: str = "") -> int:
    """Write each part of a multipart/related body (a file) as ``<prefix><n>.dcm``; returns the count."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise PacsRefused(f"{where}: the retrieve answer is not multipart (Content-Type {content_type.split(';')[0]})")
    boundary = b"--" + m.group(1).encode()
    n = 0
    if raw.stat().st_size == 0:
        return 0
    with open(raw, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as body:
        pos = body.find(boundary)
        while pos != -1:
            start = pos + len(boundary)
            if body[start:start + 2] == b"--":
                break
            head_end = body.find(b"\r\n\r\n", start)
            nxt = body.find(b"\r\n" + boundary, head_end)
            if head_end == -1 or nxt == -1:
                raise PacsUnavailable(f"{where}: the retrieve answer was cut short after {n} instances")
            n += 1
            (into / f"{prefix}{n:06d}.dcm").write_bytes(body[head_end + 4:nxt])
            pos = nxt + 2
    return n


# --- DIMSE: C-FIND + C-GET
_GET_STORAGE = ("CTImageStorage", "MRImageStorage", "PositronEmissionTomographyImageStorage", "EnhancedCTImageStorage",
                "EnhancedMRImageStorage", "RTStructureSetStorage", "SegmentationStorage", "SecondaryCaptureImageStorage",
                "RTDoseStorage", "RTPlanStorage", "ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation",
                "UltrasoundImageStorage", "NuclearMedicineImageStorage")


class DimseSource:
    def __init__(self, peer: Peer, settings) -> None:
        self.peer, self.settings = peer, settings
        self.where = f"{peer.name} ({peer.ae_title})"

    def _associate(self, contexts: list, roles: list | None = None, handlers: list | None = None):
        from pynetdicom import AE

        from .send import tls_context

        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.dicom_timeout_s
        ae.connection_timeout = self.settings.dicom_timeout_s
        for cx in contexts:
            ae.add_requested_context(cx)
        tls_args = (tls_context(self.settings, server=False), self.peer.host) if self.peer.tls else None
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title, tls_args=tls_args,
                             ext_neg=roles or None, evt_handlers=handlers)
        if assoc.is_rejected:
            result = getattr(assoc.acceptor.primitive, "result", None)
            kind = PacsRefused if result == 0x01 else PacsUnavailable
            raise kind(f"{self.where} rejected the association{' permanently' if result == 0x01 else ' for now'}")
        if not assoc.is_established:
            raise PacsUnavailable(f"{self.where} at {self.peer.host}:{self.peer.port} is unreachable (no association)")
        return assoc

    def _find(self, query) -> list:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        assoc = self._associate([FIND])
        out = []
        try:
            if not assoc.accepted_contexts:
                raise PacsRefused(f"{self.where} does not accept C-FIND (Study Root)")
            for status, identifier in assoc.send_c_find(query, FIND):
                if status is None or "Status" not in status:
                    raise PacsUnavailable(f"{self.where}: no C-FIND response (connection lost or timed out)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    out.append(identifier)
                elif code != 0x0000:
                    kind = PacsUnavailable if 0xA700 <= code <= 0xA7FF else PacsRefused
                    raise kind(f"{self.where}: C-FIND status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _series_query(self, **keys: str):
        from pydicom import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = keys.get("study_uid", "")
        q.SeriesInstanceUID = keys.get("series_uid", "")
        q.Modality = ""
        q.NumberOfSeriesRelatedInstances = ""
        return q

    @staticmethod
    def _info(ds) -> SeriesInfo:
        n = ds.get("NumberOfSeriesRelatedInstances", 0)
        return {"study_uid": str(ds.get("StudyInstanceUID", "")), "series_uid": str(ds.get("SeriesInstanceUID", "")),
                "modality": str(ds.get("Modality", "")), "instances": int(n) if str(n).strip() else 0}

    def series_of_study(self, study_uid: str) -> list[SeriesInfo]:
        return [self._info(ds) for ds in self._find(self._series_query(study_uid=study_uid))]

    def find_series(self, series_uid: str) -> SeriesInfo | None:
        found = [self._info(ds) for ds in self._find(self._series_query(series_uid=series_uid))]
        found = [f for f in found if f["series_uid"] == series_uid]
        return found[0] if found else None

    def retrieve(self, study_uid: str, series_uid: str, into: Path, prefix: str = "") -> int:
        from pydicom import Dataset
        from pynetdicom import build_role, evt, sop_class
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        into.mkdir(parents=True, exist_ok=True)
        received = [0]

        def on_store(event) -> int:
            received[0] += 1
            (into / f"{prefix}{received[0]:06d}.dcm").write_bytes(event.encoded_dataset())
            return 0x0000

        storage = [getattr(sop_class, name) for name in _GET_STORAGE]
        assoc = self._associate([GET, *storage], [build_role(uid, scp_role=True) for uid in storage],
                                [(evt.EVT_C_STORE, on_store)])
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID, q.SeriesInstanceUID = study_uid, series_uid
        final = None
        try:
            if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
                raise PacsRefused(f"{self.where} does not accept C-GET (Study Root)")
            for status, _ in assoc.send_c_get(q, GET):
                if status is None or "Status" not in status:
                    raise PacsUnavailable(f"{self.where}: C-GET interrupted after {received[0]} instances")
                final = status
        finally:
            if assoc.is_established:
                assoc.release()
        code = int(final.Status) if final is not None else 0xC000
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final is not None else 0
        if 0xA700 <= code <= 0xA7FF:
            raise PacsUnavailable(f"{self.where}: out of resources, C-GET status 0x{code:04X}")
        if code not in (0x0000, 0xB000) or failed:
            raise PacsRefused(f"{self.where}: C-GET status 0x{code:04X}, {failed} instances not sent (a SOP class we "
                              "did not offer?)")
        return received[0]
