"""Uploaded inputs: sorted into series, contours and single images, validated by reading them
with the imaging package, described in ``manifest.json``.

Layout of ``data_dir/uploads/<id>/``::

    manifest.json          what was found (below); the API returns it
    series/<n>/            one DICOM image series per folder (files renamed 000001.dcm ...)
    objects/<n>.dcm        RTSTRUCT / DICOM SEG objects (their ROI names listed)
    files/<n>.<ext>        NIfTI, PNG or JPEG files

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
from imaging import dicom_read
from imaging.sources import MAX_ZIP_BYTES, extracted_zip, kind_of_file
from p2sam.jobstore import JobStore, new_id, valid_id, write_json_atomic

from .problems import Problem

MASK_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.3": "rtstruct", "1.2.840.10008.5.1.4.1.1.66.4": "seg"}


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
            manifest = _Ingest(folder, self.max_bytes).run()
        except imaging.ImagingError as exc:
            self.discard(upload_id)
            raise Problem(422, str(exc), title="Unreadable upload", slug="invalid-upload") from None
        except Problem:
            self.discard(upload_id)
            raise
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


class _Ingest:
    """One pass over an upload's raw files (``.incoming``), building its folders and manifest."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder, self.incoming = folder, folder / ".incoming"
        self.max_bytes = max_bytes
        self.expanded = 0  # bytes expanded from zips so far (all of the upload's zips together)
        self.notes: list[str] = []
        self.unreadable_dicom: list[Path] = []
        self.dicom_reason = ""

    def run(self) -> dict[str, Any]:
        files = self._expand_zips(sorted(self.incoming.iterdir()))
        by_kind: dict[str, list[Path]] = {}
        for f in files:
            kind = kind_of_file(f)
            by_kind.setdefault("dicom" if kind in ("dicom", "dicom?") else kind, []).append(f)
        series, masks = self._dicom(by_kind.get("dicom", []))
        images = self._pictures(by_kind.get("nifti", []) + by_kind.get("png", []) + by_kind.get("jpeg", []))
        ignored = len(by_kind.get("unknown", [])) + len(by_kind.get("zip", []))
        if ignored:
            self.notes.append(f"ignored {ignored} file(s) that are not DICOM, NIfTI, PNG or JPEG")
        shutil.rmtree(self.incoming, ignore_errors=True)
        if not (series or masks or images):
            raise Problem(422, self._nothing_found(), title="Unreadable upload", slug="invalid-upload")
        return {"series": series, "masks": masks, "images": images, "notes": self.notes}

    def _expand_zips(self, files: list[Path]) -> list[Path]:
        out = []
        for k, f in enumerate(files):
            if kind_of_file(f) != "zip":
                out.append(f)
                continue
            # expanded inside the upload's own folder (the data volume, never $TMPDIR), counted as it
            # goes: a zip may hold no more than the upload limit once expanded
            limit = (self.max_bytes if self.max_bytes is not None else MAX_ZIP_BYTES) - self.expanded
            with extracted_zip(f, into=self.folder, max_bytes=max(limit, 0)) as root:
                for i, member in enumerate(sorted(p for p in root.iterdir() if p.is_file())):
                    self.expanded += member.stat().st_size
                    suffix = next((s for s in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm") if member.name.lower().endswith(s)), "")
                    target = self.incoming / f"z{k:03d}_{i:06d}{suffix}"
                    shutil.move(str(member), target)
                    out.append(target)
            f.unlink()
        return out

    def _dicom(self, files: list[Path]) -> tuple[list[dict], list[dict]]:
        if not files:
            return [], []
        scan = dicom_read.scan_files(files)
        self.unreadable_dicom = list(scan.not_dicom)
        series = []
        for n, summary in enumerate(dicom_read.summarize(scan), start=1):
            target = self.folder / "series" / str(n)
            target.mkdir(parents=True)
            for i, (path, _) in enumerate(scan.image_series[summary.series_instance_uid], start=1):
                shutil.move(str(path), target / f"{i:06d}.dcm")
            try:
                volume = imaging.read_image(target)
            except imaging.ImagingError as exc:
                raise imaging.ImagingError(f"series {summary.series_instance_uid}: {exc}") from None
            series.append({"item": f"s{n}", "path": self._rel(target), "series_instance_uid": summary.series_instance_uid,
                           "modality": summary.modality, "n_slices": summary.n_slices, "rows": summary.rows,
                           "columns": summary.columns, "description": summary.description,
                           "frame_of_reference_uid": summary.frame_of_reference_uid,
                           "study_instance_uid": summary.study_instance_uid, "shape": list(volume.shape)})
        masks, other = [], {}
        for path, ds in scan.other_objects:
            if "SOPClassUID" not in ds:
                self.unreadable_dicom.append(path)
                continue
            kind = MASK_CLASSES.get(str(ds.get("SOPClassUID", "")))
            if kind is None:
                modality = str(ds.get("Modality", "?"))
                other[modality] = other.get(modality, 0) + 1
                path.unlink()
                continue
            target = self.folder / "objects" / f"{len(masks) + 1}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
            rois = imaging.list_rois(target)
            masks.append({"item": f"m{len(masks) + 1}", "path": self._rel(target), "kind": kind, "rois": rois,
                          "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")) or None})
        if other:
            self.notes.append("ignored " + ", ".join(f"{n} {m} object(s)" for m, n in sorted(other.items())))
        if self.unreadable_dicom:
            self.notes.append(f"ignored {len(self.unreadable_dicom)} file(s) that are not readable DICOM")
            self.dicom_reason = _dicom_reason(self.unreadable_dicom[0])
        return series, masks

    def _pictures(self, files: list[Path]) -> list[dict]:
        out = []
        for n, f in enumerate(files, start=1):
            suffix = next((s for s in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg") if f.name.lower().endswith(s)), "")
            kind = kind_of_file(f)
            suffix = suffix or {"nifti": ".nii", "png": ".png", "jpeg": ".jpg"}[kind]
            target = self.folder / "files" / f"{n}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), target)
            volume = imaging.read_image(target)
            out.append({"item": f"f{n}", "path": self._rel(target), "kind": "nifti" if kind == "nifti" else kind,
                        "shape": list(volume.shape), "rgb": bool(volume.is_rgb)})
        return out

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.folder.parent.parent))

    def _nothing_found(self) -> str:
        if self.unreadable_dicom:
            return (f"no readable image or contour: {len(self.unreadable_dicom)} file(s) look like DICOM but cannot be read "
                    f"({self.dicom_reason})")
        found = f" ({'; '.join(self.notes)})" if self.notes else ""
        return ("no readable image or contour: expected DICOM image series or RTSTRUCT/SEG files (multipart or a zip), "
                f"a NIfTI (.nii/.nii.gz), PNG or JPEG file{found}")


def _dicom_reason(path: Path) -> str:
    """pydicom's one-line complaint about a file (no file names)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return ("no SOP Class UID: not a DICOM object" if "SOPClassUID" not in ds
                else "not an image or contour object")
    except Exception as exc:  # the parser's message, shortened, without server paths
        return " ".join(f"{type(exc).__name__}: {exc}".replace(str(path), path.name).split())[:200]
