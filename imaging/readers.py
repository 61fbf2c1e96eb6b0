"""Entry points that accept whatever a user uploads and pick the right reader.

``read_image`` / ``list_series``: DICOM folder, files, zip, single DICOM file, NIfTI, PNG/JPEG.
``read_mask`` / ``list_rois``: RTSTRUCT (ROI by name or number), DICOM SEG (segment by number
or label), NIfTI (label value; resampled onto the image grid when needed), PNG/JPEG (2-D).
All return arrays in ``(z, y, x)`` order on the image grid; geometry is LPS (see
``imaging.volume``). Every bad input raises :class:`ImagingError`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from . import dicom_read, nifti, picture, rtstruct, seg
from .errors import ImagingError, UnsupportedFileError
from .mask_common import RoiMask
from .sources import PathLike, kind_of_file, local_files
from .volume import Volume

log = logging.getLogger(__name__)
_WHAT = "a DICOM series/file, zip of DICOM files, NIfTI (.nii/.nii.gz), PNG or JPEG"


def _single_kind(path: "PathLike | Sequence[PathLike]") -> str | None:
    if isinstance(path, (list, tuple)) or Path(path).is_dir():
        return None
    p = Path(path)
    if not p.is_file():
        raise ImagingError(f"{p}: no such file or folder")
    return kind_of_file(p)


def _label(path) -> str:
    return f"{len(path)} files" if isinstance(path, (list, tuple)) else Path(path).name


def list_series(path: "PathLike | Sequence[PathLike]") -> list[dicom_read.SeriesSummary]:
    """Image series in a DICOM input, largest first; RTSTRUCT/RTDOSE/RTPLAN/SEG/SR and
    non-DICOM files are ignored."""
    kind = _single_kind(path)
    if kind in ("nifti", "png", "jpeg"):
        return []
    with local_files(path) as files:
        return dicom_read.summarize(dicom_read.scan_files(files))


def read_image(path: "PathLike | Sequence[PathLike]", series_uid: str | None = None) -> Volume:
    """Read an image -> Volume ((z, y, x), LPS geometry; CT as float32 HU).

    Arguments:
      path: a DICOM series (folder, zip, file or list of files), a NIfTI file, or a PNG/JPEG picture.
      series_uid: which DICOM series, when the input holds several (the error lists them).

    Returns:
      a :class:`Volume`: ``array`` ``(z, y, x)`` = (slice, row, col) (RGB pictures ``(1, H, W, 3)``
      uint8); ``world = origin + direction @ (spacing * [col, row, slice])`` in DICOM patient
      coordinates (LPS, mm; see imaging.volume); NIfTI's RAS is converted.
      Non-image DICOM objects and non-DICOM files in folders/zips are ignored; anything
      unreadable raises ImagingError with a one-line reason."""
    kind = _single_kind(path)
    if kind == "nifti":
        return nifti.read_nifti(path)
    if kind in ("png", "jpeg"):
        return picture.read_picture(path)
    if kind == "unknown":
        raise UnsupportedFileError(f"{_label(path)}: not {_WHAT}")
    label = _label(path)
    with local_files(path) as files:
        scan = dicom_read.scan_files(files)
        if kind is not None and not scan.image_series:
            if scan.other_objects:
                modality = scan.other_objects[0][1].get("Modality", "non-image")
                raise UnsupportedFileError(f"{label}: is a DICOM {modality} object, not an image")
            raise UnsupportedFileError(f"{label}: not {_WHAT}")
        items = dicom_read.choose_series(scan, series_uid, label)
        volume = dicom_read.volume_from_series(items, label)
        if scan.not_dicom:
            volume.notes.append(f"ignored {len(scan.not_dicom)} non-DICOM file(s)")
        if scan.other_objects:
            kinds = sorted({str(ds.get("Modality", "?")) for _, ds in scan.other_objects})
            volume.notes.append(f"ignored {len(scan.other_objects)} non-image DICOM object(s): {', '.join(kinds)}")
    return volume


def _mask_file(path: PathLike) -> tuple[Path, str]:
    """Resolve a mask path to one file and its kind ('rtstruct', 'seg', 'nifti', 'picture')."""
    p = Path(path)
    if p.is_dir():
        found = []
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            ds = dicom_read.read_header(f)
            if ds is not None and str(ds.get("SOPClassUID", "")) in (RTStructureSetStorage, SegmentationStorage):
                found.append(f)
        if len(found) != 1:
            raise ImagingError(f"{p.name}: expected exactly one RTSTRUCT or SEG in the folder, found {len(found)}")
        p = found[0]
    if not p.is_file():
        raise ImagingError(f"{p}: no such file")
    kind = kind_of_file(p)
    if kind == "nifti":
        return p, "nifti"
    if kind in ("png", "jpeg"):
        return p, "picture"
    ds = dicom_read.read_header(p) if kind in ("dicom", "dicom?") else None
    if ds is None:
        raise UnsupportedFileError(f"{p.name}: not a mask file (expected RTSTRUCT, DICOM SEG, NIfTI or PNG)")
    sop = str(ds.get("SOPClassUID", ""))
    if sop == RTStructureSetStorage:
        return p, "rtstruct"
    if sop == SegmentationStorage:
        return p, "seg"
    raise UnsupportedFileError(f"{p.name}: is a DICOM {ds.get('Modality', '?')} object, not an RTSTRUCT or SEG")


def read_mask_detail(path: PathLike, image: Volume, roi: "str | int | None" = None, *,
                     allow_missing_references: bool = False) -> RoiMask:
    """Like :func:`read_mask` but returns the :class:`RoiMask` with how planes were placed."""
    p, kind = _mask_file(path)
    if kind == "rtstruct":
        result = rtstruct.read_rtstruct_roi(p, image, roi, allow_missing_references=allow_missing_references)
    elif kind == "seg":
        result = seg.read_seg_segment(p, image, roi)
    elif kind == "nifti":
        result = nifti.read_nifti_mask(p, image, roi)
    else:
        result = picture.read_picture_mask(p, image)
    for note in result.notes:
        log.warning("%s: %s", p.name, note)
    return result


def read_mask(path: PathLike, image: Volume, roi: "str | int | None" = None, *,
              allow_missing_references: bool = False) -> np.ndarray:
    """Prior mask on ``image``'s grid -> bool (z, y, x).

    Arguments:
      path: an RTSTRUCT, DICOM SEG, NIfTI label map or PNG/JPEG mask.
      image: the Volume the mask is drawn on (from :func:`read_image`); the mask is resampled onto
        its grid through patient coordinates (LPS mm), never by array index.
      roi: RTSTRUCT ROI name or number, SEG segment label or number, NIfTI label value (None: the
        only ROI/segment, or any non-zero NIfTI voxel).
      allow_missing_references: see :func:`imaging.rtstruct.read_rtstruct_roi`.

    Returns:
      ``(z, y, x)`` bool, ``image.shape``; ImagingError (one line) when it does not fit the image."""
    return read_mask_detail(path, image, roi, allow_missing_references=allow_missing_references).mask


def list_rois(path: PathLike) -> list[str]:
    """ROI names of an RTSTRUCT, or segment labels of a DICOM SEG (in file order)."""
    p, kind = _mask_file(path)
    if kind == "rtstruct":
        return [r.name for r in rtstruct.rtstruct_rois(p)]
    if kind == "seg":
        return [label for _, label in seg.seg_segments(p)]
    raise UnsupportedFileError(f"{p.name}: ROI names exist only in RTSTRUCT and SEG files")


def roi_catalog(path: PathLike, image: Volume | None = None) -> list[rtstruct.RoiInfo]:
    """Every ROI a contour object holds, in file order, with what the writers carry over:
    RTSTRUCT ROIs (number, name, contour count, RTROIInterpretedType, ROIDisplayColor), SEG
    segments (number, label), NIfTI label values (on ``image``'s grid; needs ``image``).
    A PNG/JPEG mask is one unnamed ROI."""
    p, kind = _mask_file(path)
    if kind == "rtstruct":
        return rtstruct.rtstruct_rois(p)
    if kind == "seg":
        return [rtstruct.RoiInfo(number, label, 1) for number, label in seg.seg_segments(p)]
    if kind == "nifti":
        if image is None:
            raise UnsupportedFileError(f"{p.name}: NIfTI labels are listed on an image grid; give the image")
        values = [v for v in np.unique(nifti.read_nifti_array(p, image)) if v != 0]
        return [rtstruct.RoiInfo(int(v), f"{v:g}", 1) for v in values if float(v).is_integer()]
    return [rtstruct.RoiInfo(1, "mask", 1)]
