"""Sorting a folder of raw input files into image series, contour objects and single images.

The files of one upload (or of a folder handed to the CLI) arrive in ``<folder>/.incoming`` in
any order and shape: DICOM files of several series, RTSTRUCT / SEG objects, NIfTI, PNG or JPEG
files, zips of any of these. :func:`ingest` sorts them into::

    series/<n>/            one DICOM image series per folder (files renamed 000001.dcm ...)
    objects/<n>.dcm        RTSTRUCT / DICOM SEG objects (their ROI names listed)
    files/<n>.<ext>        NIfTI, PNG or JPEG files

validates each by reading it, and returns the manifest ``{"series", "masks", "images", "notes"}``
(paths relative to ``relative_to``). Anything unusable raises :class:`ImagingError` with a
one-line reason (no file names from the server); unreadable extras are listed in ``notes``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import dicom_read, sources
from .errors import ImagingError
from .readers import list_rois, read_image
from .sources import extracted_zip, kind_of_file

MASK_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.3": "rtstruct", "1.2.840.10008.5.1.4.1.1.66.4": "seg"}


def ingest(folder: Path, max_bytes: int | None = None, relative_to: Path | None = None) -> dict[str, Any]:
    """Sort and validate ``<folder>/.incoming`` into ``folder`` (see the module); returns the manifest.

    Raises ImagingError when nothing readable is found or a series / contour / image is refused."""
    return Ingest(folder, max_bytes, relative_to).run()


class Ingest:
    """One pass over a folder's raw files (``<folder>/.incoming``), building its folders and manifest.

    ``max_bytes``: the most all of its zips may expand to together (None: ``sources.MAX_ZIP_BYTES``);
    ``relative_to``: the folder the manifest's paths are relative to (default ``folder``)."""

    def __init__(self, folder: Path, max_bytes: int | None = None, relative_to: Path | None = None) -> None:
        self.folder, self.incoming = Path(folder), Path(folder) / ".incoming"
        self.relative_to = Path(relative_to) if relative_to is not None else self.folder
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
            raise ImagingError(self._nothing_found())
        return {"series": series, "masks": masks, "images": images, "notes": self.notes}

    def _expand_zips(self, files: list[Path]) -> list[Path]:
        out = []
        for k, f in enumerate(files):
            if kind_of_file(f) != "zip":
                out.append(f)
                continue
            # expanded inside the upload's own folder (the data volume, never $TMPDIR), counted as it
            # goes: a zip may hold no more than the upload limit once expanded
            limit = (self.max_bytes if self.max_bytes is not None else sources.MAX_ZIP_BYTES) - self.expanded
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
                volume = read_image(target)
            except ImagingError as exc:
                raise ImagingError(f"series {summary.series_instance_uid}: {exc}") from None
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
            rois = list_rois(target)
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
            volume = read_image(target)
            out.append({"item": f"f{n}", "path": self._rel(target), "kind": "nifti" if kind == "nifti" else kind,
                        "shape": list(volume.shape), "rgb": bool(volume.is_rgb)})
        return out

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.relative_to))

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
