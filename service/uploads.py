"""Uploaded inputs: sorted into series, contours and single images by :mod:`imaging.ingest`
(which validates them by reading them), described in ``manifest.json``.

Layout of ``data_dir/uploads/<id>/``::

    manifest.json          what was found; the API returns it
    series/<n>/  objects/<n>.dcm  files/<n>.<ext>   (imaging.ingest's layout)

Anything unusable is reported: an upload with nothing readable, or with a series / contour /
image the imaging layer refuses, is rejected (422) with the imaging layer's one-line reason.
Jobs refer to uploads by id; :meth:`UploadStore.resolve_image` / :meth:`resolve_mask` turn
(upload id, series UID / item / ROI) into paths relative to ``data_dir``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import imaging
from imaging.ingest import MASK_CLASSES, ingest
from p2sam.jobstore import JobStore, new_id, valid_id, write_json_atomic

from .problems import Problem

class UploadStore:
    def __init__(self, store: JobStore, max_bytes: int | None = None) -> None:
        self.store = store
        self.max_bytes = max_bytes  # the most an upload may hold once its zips are expanded (P2SAM_MAX_UPLOAD_MB)
        self.root = store.data_dir / "uploads"

    def new(self) -> tuple[str, Path]:
        """A fresh upload id and the folder its raw files stream into."""
        upload_id = new_id()
        incoming = self.store.upload_dir(upload_id) / ".incoming"
        incoming.mkdir(parents=True)
        return upload_id, incoming

    def discard(self, upload_id: str) -> None:
        shutil.rmtree(self.store.upload_dir(upload_id), ignore_errors=True)

    def manifest(self, upload_id: str) -> dict[str, Any] | None:
        if not valid_id(upload_id):
            return None
        try:
            return json.loads((self.store.upload_dir(upload_id) / "manifest.json").read_text())
        except FileNotFoundError:
            return None

    # --- ingest
    def ingest(self, upload_id: str, owner: str, size: int) -> dict[str, Any]:
        """Sort, validate and describe the raw files of an upload; 422 (and nothing kept) when unusable."""
        folder = self.store.upload_dir(upload_id)
        try:
            manifest = ingest(folder, self.max_bytes, relative_to=self.store.data_dir)
        except imaging.ImagingError as exc:
            self.discard(upload_id)
            raise Problem(422, str(exc), title="Unreadable upload", slug="invalid-upload") from None
        manifest.update(id=upload_id, owner=owner, created_at=time.time(), size_bytes=size)
        write_json_atomic(folder / "manifest.json", manifest)
        return manifest

    # --- resolving references from a job request
    def _owned(self, upload_id: str, owner: str | None) -> dict[str, Any]:
        manifest = self.manifest(upload_id)
        if manifest is None or (owner is not None and manifest.get("owner") != owner):
            raise Problem(404, f"upload {upload_id} not found (uploads are usable by the key that sent them; "
                          "they are deleted after the retention period)", slug="upload-not-found")
        return manifest

    def resolve_image(self, upload_id: str, series_uid: str | None, owner: str | None, what: str) -> str:
        """data_dir-relative path of the image in an upload (a DICOM series folder or a file)."""
        m = self._owned(upload_id, owner)
        candidates = m["series"] + m["images"]
        if series_uid:
            found = [s for s in m["series"] if s["series_instance_uid"] == series_uid]
            if not found:
                raise Problem(422, f"{what}: series {series_uid} is not in upload {upload_id}; it holds: "
                              f"{_list_series(m) or 'no DICOM series'}", slug="series-not-found")
            return found[0]["path"]
        if len(candidates) != 1:
            raise Problem(422, f"{what}: upload {upload_id} holds {len(candidates)} images; choose one with series_uid "
                          f"({_list_series(m) or 'no DICOM series'})", slug="ambiguous-image")
        return candidates[0]["path"]

    def resolve_mask(self, upload_id: str, item: str | None, roi: str | None, owner: str | None,
                     same_as_image: bool, rois: list[str] | str | None = None) -> tuple[str, str | None]:
        """(data_dir-relative path, ROI) of the prior's contour: an RTSTRUCT/SEG in the upload, or a
        NIfTI/PNG mask uploaded on its own. ``rois`` (a multi-ROI job): every name must be in it
        (one 422 lists those that are not, and what the object holds)."""
        m = self._owned(upload_id, owner)
        if item:
            found = [x for x in m["masks"] + m["images"] if x["item"] == item]
            if not found:
                raise Problem(422, f"prior.mask_item: no item '{item}' in upload {upload_id}", slug="mask-not-found")
            chosen = found[0]
        else:
            candidates = m["masks"] or ([] if same_as_image else m["images"])
            if len(candidates) != 1:
                raise Problem(422, f"prior: upload {upload_id} holds {len(candidates)} contour objects (RTSTRUCT, SEG, or a "
                              "NIfTI/PNG mask uploaded separately); choose one with mask_item or mask_upload_id",
                              slug="ambiguous-mask")
            chosen = candidates[0]
        held = chosen.get("rois")
        if held is not None and rois is not None:
            _check_rois(rois, held)
            return chosen["path"], None
        if held is not None:
            if roi is None and len(held) != 1:
                raise Problem(422, f"prior.roi: the contour object holds {len(held)} ROIs, name one: {', '.join(held)}",
                              slug="roi-not-found")
            if roi is not None and roi not in held and not (_roi_number(roi) is not None and 1 <= _roi_number(roi) <= 100000):
                raise Problem(422, f"prior.roi: no ROI '{roi}'; the contour object holds: {', '.join(held) or 'none'}",
                              slug="roi-not-found")
        return chosen["path"], roi


def _check_rois(rois: list[str] | str, held: list[str]) -> None:
    """422 naming every requested ROI the contour object does not hold (names compared ignoring
    case, as the job does; an ASCII number is an ROI number, checked when the job reads the file)."""
    if rois == "all":
        return
    known = {h.strip().lower() for h in held}
    unknown = [r for r in rois if r.strip().lower() not in known and _roi_number(r) is None]
    if unknown:
        raise Problem(422, f"prior.rois: no ROI {', '.join(repr(u) for u in unknown)}; the contour object holds: "
                      f"{', '.join(held) or 'none'}", slug="roi-not-found")


def _roi_number(roi: str) -> int | None:
    """An ROI given by number: ASCII digits only ("²" and "③" are digits to str.isdigit, not to int)."""
    return int(roi) if roi.isascii() and roi.isdigit() else None


def _list_series(m: dict[str, Any]) -> str:
    return "; ".join(f"{s['series_instance_uid']} ({s['modality']}, {s['n_slices']} slices)" for s in m["series"])


__all__ = ["UploadStore", "MASK_CLASSES"]
