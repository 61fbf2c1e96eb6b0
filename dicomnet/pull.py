"""A job's inputs by identifiers: ``{"peer", "study_uid", "series_uid"}`` pulled from a PACS.

At submit (:func:`plan`): each prior / target given by UIDs instead of an upload id becomes one
entry of the record's ``pull`` list, with an upload id reserved for it (so the job's purge and
retention remove what was pulled, like any upload) and a placeholder path in the spec.

Before the job runs (:func:`pull_inputs`, called by the worker): each entry not yet done is
retrieved (:mod:`dicomnet.pacs`: WADO-RS or C-GET) into its upload, ingested exactly like
``POST /v1/uploads`` (read back, sorted, validated), and the spec's path replaced by the upload's.
The prior pulls its image series and the study's RTSTRUCT / SEG series (``mask_series_uid`` names
one; otherwise the one on the same Frame of Reference holding ``roi``).

Outcomes: the PACS down -> retried with backoff (``P2SAM_DICOM_RETRY_BASE_S`` doubling, at most
``P2SAM_DICOM_PULL_ATTEMPTS`` tries), then the job fails 503 ``pacs-unavailable``; the PACS does
not hold the series -> 404 ``not-on-pacs``; several candidates -> 422 ``invalid-input``. A
worker that dies mid-pull leaves the entry not done: the next attempt pulls it again from scratch.
Logs name job ids, peers and counts, never UIDs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

from p2sam.jobstore import JobStore, new_id
from p2sam.records import JobRecord

from .pacs import NotOnPacs, PacsError, PacsRefused, PacsUnavailable, source_for
from .peers import PeerError, peers_of

log = logging.getLogger("p2sam.dicomnet.pull")

#: modalities that are not images (never the prior's or a target's image series)
NOT_IMAGES = frozenset({"RTSTRUCT", "SEG", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE", "RTRECORD", "DOC", "OT"})
CONTOURS = ("RTSTRUCT", "SEG")
PENDING_PATH = "pending-pull"


class PullInputError(ValueError):
    """The reference cannot be resolved as asked (several candidate series, no contour, ...)."""


__all__ = ["NotOnPacs", "PacsRefused", "PacsUnavailable", "PullInputError", "plan", "pull_inputs"]


# --- at submit
def default_peer(settings) -> str | None:
    return (settings.dicom_pull_source or "").strip() or None


def plan(role: str, ref: dict[str, Any], settings, peers: dict | None = None) -> dict[str, Any]:
    """The pull entry for one reference (``role``: "prior" or "targets[i]"); PeerError when its peer
    is unknown. ``ref``: peer, study_uid, series_uid (+ prior: roi, mask_series_uid)."""
    peers = peers_of(settings) if peers is None else peers
    name = ref.get("peer") or default_peer(settings)
    if not name:
        raise PeerError(f"{role}: name the PACS to pull from ('peer'), or set P2SAM_DICOM_PULL_SOURCE; peers: "
                        f"{', '.join(sorted(peers)) or 'none configured (P2SAM_DICOM_PEERS)'}")
    if name not in peers:
        raise PeerError(f"{role}.peer: unknown peer '{name}'; peers: "
                        f"{', '.join(sorted(peers)) or 'none configured (P2SAM_DICOM_PEERS)'}")
    keys = ("study_uid", "series_uid", "mask_series_uid", "roi")
    return {"role": role, "peer": name, **{k: ref.get(k) for k in keys}, "upload_id": new_id(), "done": False}


def placeholder(entry: dict[str, Any]) -> str:
    """The spec path of an input not pulled yet (inside its reserved upload)."""
    return f"uploads/{entry['upload_id']}/{PENDING_PATH}"


# --- before the job runs
def pull_inputs(record: JobRecord, store: JobStore, settings, progress: Callable[..., None] | None = None,
                is_cancelled: Callable[[], bool] | None = None) -> JobRecord:
    """Pull every entry of ``record.pull`` not yet done; returns the updated record."""
    entries = [e for e in record.pull or [] if not e.get("done")]
    progress = progress or (lambda *a, **k: None)
    is_cancelled = is_cancelled or (lambda: False)
    peers = peers_of(settings)
    for k, entry in enumerate(entries):
        peer = peers.get(entry["peer"])
        if peer is None:
            raise PullInputError(f"{entry['role']}: peer '{entry['peer']}' is no longer configured (P2SAM_DICOM_PEERS)")
        what = f"pulling {entry['role']} from {entry['peer']} ({k + 1} of {len(entries)})"
        progress("pulling", 0.01 + 0.02 * k / len(entries), what)
        source = source_for(peer, settings)
        paths = _retrying(lambda e=entry, src=source, rec=record: _pull(e, src, store, settings, rec), settings, entry,
                          progress, is_cancelled, what)
        record = _record_done(store, record.id, entry, paths)
        log.info("job %s: %s pulled from %s (%d instances)", record.id, entry["role"], entry["peer"], paths["instances"])
    return record


def _retrying(fn: Callable[[], dict], settings, entry: dict, progress, is_cancelled, what: str) -> dict:
    from p2sam.followup import JobCancelled

    attempts = settings.dicom_pull_attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except PacsUnavailable as exc:
            if attempt == attempts:
                raise PacsUnavailable(f"{exc} (gave up after {attempts} attempts)") from None
            wait = min(settings.dicom_retry_max_s, settings.dicom_retry_base_s * 2 ** (attempt - 1))
            log.warning("%s: %s; retry %d of %d in %.0f s", entry["role"], exc, attempt + 1, attempts, wait)
            progress("pulling", 0.01, f"{what}: {exc}; retry {attempt + 1} of {attempts} in {wait:.0f} s")
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if is_cancelled():
                    raise JobCancelled() from None
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


def _pull(entry: dict, source, store: JobStore, settings, record: JobRecord) -> dict[str, Any]:
    """Retrieve and ingest one entry into its reserved upload; the spec paths it gives."""
    study_uid, image = _image_series(entry, source)
    contours = _contour_series(entry, source, study_uid) if entry["role"] == "prior" else []
    folder = store.upload_dir(entry["upload_id"])
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left
    incoming = folder / ".incoming"
    incoming.mkdir(parents=True)
    n = source.retrieve(study_uid, image["series_uid"], incoming, prefix="i")
    if n == 0:
        raise NotOnPacs(f"{entry['role']}: the PACS sent no instance of series {image['series_uid']}")
    for j, c in enumerate(contours):
        n += source.retrieve(study_uid, c["series_uid"], incoming, prefix=f"m{j}_")
    manifest = _ingest(store, settings, entry, record, sum(p.stat().st_size for p in incoming.iterdir()))
    series = [s for s in manifest["series"] if s["series_instance_uid"] == image["series_uid"]]
    if not series:
        raise PullInputError(f"{entry['role']}: series {image['series_uid']} is not an image series this service reads")
    out = {"image": series[0]["path"], "instances": n}
    if entry["role"] == "prior":
        out["mask"] = _choose_mask(entry, manifest, series[0])
    return out


def _image_series(entry: dict, source) -> tuple[str, dict]:
    role, study_uid, series_uid = entry["role"], entry.get("study_uid"), entry.get("series_uid")
    if series_uid and not study_uid:
        found = source.find_series(series_uid)
        if found is None:
            raise NotOnPacs(f"{role}: the PACS holds no series {series_uid}")
        return found["study_uid"], found
    listed = source.series_of_study(study_uid)
    if not listed:
        raise NotOnPacs(f"{role}: the PACS holds no study {study_uid}")
    if series_uid:
        found = [s for s in listed if s["series_uid"] == series_uid]
        if not found:
            raise NotOnPacs(f"{role}: the PACS holds no series {series_uid} in study {study_uid}")
        return study_uid, found[0]
    images = [s for s in listed if s["modality"] not in NOT_IMAGES]
    if len(images) != 1:
        listing = "; ".join(f"{s['series_uid']} ({s['modality']})" for s in images) or "none"
        raise PullInputError(f"{role}: study {study_uid} holds {len(images)} image series; choose one with series_uid "
                             f"({listing})")
    return study_uid, images[0]


def _contour_series(entry: dict, source, study_uid: str) -> list[dict]:
    listed = source.series_of_study(study_uid)
    if entry.get("mask_series_uid"):
        found = [s for s in listed if s["series_uid"] == entry["mask_series_uid"]]
        if not found:
            raise NotOnPacs(f"prior: the PACS holds no series {entry['mask_series_uid']} in study {study_uid}")
        return found
    found = [s for s in listed if s["modality"] in CONTOURS]
    if not found:
        raise PullInputError(f"prior: study {study_uid} holds no RTSTRUCT or SEG (the prior's contour); "
                             "name its series with mask_series_uid")
    return found


def _ingest(store: JobStore, settings, entry: dict, record: JobRecord, size: int) -> dict:
    from service.problems import Problem
    from service.uploads import UploadStore

    owner = record.owner.key_id or settings.dicom_upload_owner
    try:
        return UploadStore(store).ingest(entry["upload_id"], owner, size)
    except Problem as exc:
        raise PullInputError(f"{entry['role']}: what the PACS sent is not usable: {exc.detail}") from None


def _choose_mask(entry: dict, manifest: dict, series: dict) -> str:
    roi = entry.get("roi")
    masks = manifest["masks"]
    same_frame = [m for m in masks if m.get("frame_of_reference_uid") in (None, series["frame_of_reference_uid"])]
    candidates = same_frame or masks
    if roi is not None:
        candidates = [m for m in candidates if roi in m["rois"]] or candidates
    if len(candidates) != 1:
        raise PullInputError(f"prior: {len(candidates)} contour objects fit (RTSTRUCT / SEG of the study); name one "
                             "with mask_series_uid")
    chosen = candidates[0]
    if roi is not None and roi not in chosen["rois"] and not roi.isdigit():
        raise PullInputError(f"prior.roi: no ROI '{roi}'; the contour object holds: {', '.join(chosen['rois']) or 'none'}")
    if roi is None and len(chosen["rois"]) != 1:
        raise PullInputError(f"prior.roi: the contour object holds {len(chosen['rois'])} ROIs, name one: "
                             f"{', '.join(chosen['rois'])}")
    return chosen["path"]


def _record_done(store: JobStore, job_id: str, entry: dict, paths: dict) -> JobRecord:
    def change(r: JobRecord) -> None:
        for e in r.pull or []:  # the entries and the spec are plain dicts of the record: changed in place
            if e["upload_id"] != entry["upload_id"]:
                continue
            e.update(done=True, instances=paths["instances"], pulled_at=time.time())
            spec = r.spec
            if e["role"] == "prior":
                spec["prior_image"], spec["prior_mask"] = paths["image"], paths["mask"]
            else:
                i = int(e["role"].split("[")[1].rstrip("]"))
                spec["targets"][i]["path"] = paths["image"]
        entry.update(done=True)

    record = store.update(job_id, change)
    if record is None:
        raise KeyError(job_id)
    return record


def is_pull_error(exc: BaseException) -> bool:
    return isinstance(exc, (PacsError, PullInputError))
