"""The C-STORE SCP (``p2sam dicom-listener``): received instances become uploads, one per series.

Instances are written as they arrive under ``data_dir/dicom-inbox/<key>/`` (``key`` hashes the
calling AE title and the Series Instance UID); a series is *complete* once no association that
sent to it is still open and nothing arrived for ``P2SAM_DICOM_QUIET_PERIOD_S``. It then goes
through the same ingest as ``POST /v1/uploads`` (validated by reading it) and becomes an upload
owned by ``P2SAM_DICOM_UPLOAD_OWNER``; ``data_dir/dicom-received/<key>.json`` maps its series
UID to the upload id (jobs naming a ``series_uid`` find it there before pulling from a PACS).

Only calling AE titles on the allow-list may associate (the peers' AE titles plus
``P2SAM_DICOM_ALLOWED_AES``); others are rejected (permanent, "calling AE not recognised").
A bad or partial association is logged in one line and never stops the listener. Logs name AE
titles, addresses, upload ids and counts: never patient data or UIDs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from p2sam.jobstore import JobStore, open_store, write_json_atomic

from .peers import PeerError, allowed_calling_aes, peers_of
from .send import tls_context

log = logging.getLogger("p2sam.dicomnet.listener")

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


def series_key(calling_ae: str, series_uid: str) -> str:
    return hashlib.sha256(f"{calling_ae}\0{series_uid}".encode()).hexdigest()[:32]


class Listener:
    def __init__(self, settings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.inbox = self.store.data_dir / "dicom-inbox"
        self.index = self.store.data_dir / "dicom-received"
        self.inbox.mkdir(exist_ok=True)
        self.index.mkdir(exist_ok=True)
        self.allowed = allowed_calling_aes(settings, peers_of(settings))
        if self.allowed == []:
            raise PeerError("the listener would refuse every association: no peer has an AE title and "
                            "P2SAM_DICOM_ALLOWED_AES is empty (set it, or '*' to accept any calling AE)")
        self._lock = threading.Lock()
        self._open: dict[int, set[str]] = {}  # association -> series keys it wrote to
        self._last: dict[str, float] = {}     # series key -> monotonic time of its last instance
        self.server = None
        self.completed: list[dict[str, Any]] = []

    # --- the SCP
    def start(self):
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.require_calling_aet = self.allowed or []
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.dicom_timeout_s
        ae.maximum_associations = 32
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_RELEASED, self._on_closed),
                    (evt.EVT_ABORTED, self._on_aborted), (evt.EVT_CONN_CLOSE, self._on_closed)]
        ssl_ctx = tls_context(self.settings, server=True)
        self.server = ae.start_server((self.settings.dicom_listen_host, self.settings.dicom_port), block=False,
                                      evt_handlers=handlers, ssl_context=ssl_ctx)
        self.port = self.server.server_address[1]
        log.info("DICOM listener %s on %s:%d%s; calling AEs allowed: %s", self.settings.dicom_ae_title,
                 self.settings.dicom_listen_host, self.port, " (TLS)" if ssl_ctx else "",
                 "any" if self.allowed is None else ", ".join(self.allowed))
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @staticmethod
    def _who(event) -> str:
        r = event.assoc.requestor
        return f"AE {r.ae_title} from {r.address}"

    def _on_accepted(self, event) -> None:
        log.info("association accepted: %s", self._who(event))

    def _on_rejected(self, event) -> None:
        log.warning("association rejected: %s (calling AE or called AE not allowed)", self._who(event))

    def _on_aborted(self, event) -> None:
        log.warning("association aborted: %s (instances received so far are kept)", self._who(event))
        self._on_closed(event)

    def _on_closed(self, event) -> None:
        with self._lock:
            for key in self._open.pop(id(event.assoc), set()):
                self._last[key] = time.monotonic()

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            study_uid = str(ds.get("StudyInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - any decoding error: refuse this instance, keep the association
            log.warning("C-STORE from AE %s: unreadable data set (%s); refused", calling, type(exc).__name__)
            return CANNOT_UNDERSTAND
        if not series_uid or not sop_uid:
            log.warning("C-STORE from AE %s: no Series/SOP Instance UID; refused", calling)
            return CANNOT_UNDERSTAND
        key = series_key(calling, series_uid)
        folder = self.inbox / key
        try:
            folder.mkdir(exist_ok=True)
            meta = folder / "series.json"
            if not meta.exists():
                write_json_atomic(meta, {"calling_ae": calling, "series_uid": series_uid, "study_uid": study_uid,
                                         "modality": str(ds.get("Modality", "")), "first_at": time.time()})
            name = hashlib.sha256(sop_uid.encode()).hexdigest()[:40] + ".dcm"
            tmp = folder / f".{name}.part"
            tmp.write_bytes(event.encoded_dataset())
            tmp.replace(folder / name)  # the same instance sent twice is kept once
        except OSError as exc:
            log.error("C-STORE from AE %s: cannot write to the data volume (%s)", calling, exc.strerror)
            return OUT_OF_RESOURCES
        with self._lock:
            self._open.setdefault(id(event.assoc), set()).add(key)
            self._last[key] = time.monotonic()
        return SUCCESS

    # --- series -> uploads
    def _quiet(self, key: str, folder: Path, now: float) -> bool:
        with self._lock:
            if any(key in keys for keys in self._open.values()):
                return False
            last = self._last.get(key)
        if last is None:  # left by an earlier run of the listener: judge by the files' age
            newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
            return time.time() - newest >= self.settings.dicom_quiet_period_s
        return now - last >= self.settings.dicom_quiet_period_s

    def sweep(self) -> list[dict[str, Any]]:
        """Turn every complete series into an upload; returns what was done."""
        done = []
        now = time.monotonic()
        for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not self._quiet(folder.name, folder, now):
                continue
            entry = self._ingest(folder)
            with self._lock:
                self._last.pop(folder.name, None)
            if entry is not None:
                done.append(entry)
        self.completed += done
        return done

    def _ingest(self, folder: Path) -> dict[str, Any] | None:
        from service.problems import Problem
        from service.uploads import UploadStore

        try:
            meta = json.loads((folder / "series.json").read_text())
        except (OSError, json.JSONDecodeError):
            meta = {"calling_ae": "?", "series_uid": "", "study_uid": "", "modality": ""}
        files = sorted(folder.glob("*.dcm"))
        uploads = UploadStore(self.store)
        upload_id, incoming = uploads.new()
        size = 0
        for f in files:
            size += f.stat().st_size
            shutil.move(str(f), incoming / f.name)
        try:
            manifest = uploads.ingest(upload_id, self.settings.dicom_upload_owner, size)
        except Problem as exc:
            log.warning("series from AE %s (%d instances, %s): not usable as an upload: %s", meta["calling_ae"],
                        len(files), meta.get("modality") or "?", exc.detail)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        entry = {"upload_id": upload_id, "series_uid": meta["series_uid"], "study_uid": meta["study_uid"],
                 "calling_ae": meta["calling_ae"], "modality": meta.get("modality", ""), "instances": len(files),
                 "received_at": time.time(), "owner": self.settings.dicom_upload_owner}
        write_json_atomic(self.index / f"{folder.name}.json", entry)
        shutil.rmtree(folder, ignore_errors=True)
        n_series = len(manifest.get("series", []))
        log.info("series from AE %s complete: upload %s (%d instances, %s, %d image series, %d contour objects)",
                 meta["calling_ae"], upload_id, len(files), meta.get("modality") or "?", n_series,
                 len(manifest.get("masks", [])))
        self._audit(entry)
        return entry

    def _audit(self, entry: dict[str, Any]) -> None:
        from service.audit import AuditLog

        AuditLog(self.store.data_dir).write(f"dicom:{entry['calling_ae']}", "upload.received", upload_id=entry["upload_id"],
                                            instances=entry["instances"])

    def run_forever(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # keep listening; the next sweep retries
                log.warning("listener sweep failed (%s)", type(exc).__name__, exc_info=exc)
            stop.wait(interval)


def received_upload(data_dir: Path, series_uid: str) -> dict[str, Any] | None:
    """The newest upload the listener made of ``series_uid`` (from any calling AE), or None."""
    best = None
    for p in (Path(data_dir) / "dicom-received").glob("*.json"):
        try:
            entry = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if entry.get("series_uid") == series_uid and (best is None or entry["received_at"] > best["received_at"]):
            best = entry
    return best
