"""Read DICOM image series into a :class:`Volume`.

Files are grouped by SeriesInstanceUID; non-image objects (RTSTRUCT, RTDOSE, RTPLAN, SEG,
SR, ...) are ignored. Slices are sorted by position along the slice normal
``n = row_dir x col_dir`` (from ImageOrientationPatient), never by file name or
InstanceNumber. Gantry tilt (slices offset sideways), uneven slice spacing, duplicate
positions and mixed orientations are refused with a :class:`GeometryError` explaining what
was found. Output geometry: LPS mm, array ``(z, y, x)``; see ``imaging.volume``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .errors import FrameOfReferenceError, GeometryError, SeriesSelectionError, UnsupportedFileError
from .errors import check_voxels
from .volume import PATIENT_STUDY_KEYWORDS, DicomInfo, Volume, direction_from_iop

NON_IMAGE_MODALITIES = {
    "RTDOSE", "RTPLAN", "RTSTRUCT", "RTRECORD", "RTIMAGE", "SEG", "SR", "KO", "PR", "REG",
    "RWV", "FID", "PLAN", "DOC", "RTTREATMENT", "RTRAD",
}
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class SeriesSummary:
    """One image series found in an input (no patient identifiers)."""

    series_instance_uid: str
    modality: str
    n_slices: int
    description: str = ""
    series_number: int | None = None
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    rows: int = 0
    columns: int = 0

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.series_instance_uid} ({self.modality}, {self.n_slices} slices{desc})"


@dataclass
class DicomScan:
    """Headers (no pixel data) of every DICOM file in an input."""

    image_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = field(default_factory=dict)
    other_objects: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    not_dicom: list[Path] = field(default_factory=list)


def read_header(path: Path) -> pydicom.Dataset | None:
    """DICOM header without pixel data, or None when the file is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception:
        return None
    try:  # old files without the 128-byte preamble
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return ds if "SOPClassUID" in ds else None
    except Exception:
        return None


def is_image(ds: pydicom.Dataset) -> bool:
    """True for image objects we can segment (not RTSTRUCT/RTDOSE/RTPLAN/SEG/SR/DICOMDIR)."""
    if str(ds.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return False
    if str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds


def scan_files(files: list[Path]) -> DicomScan:
    """Read the headers of ``files`` and sort them into image series / other objects."""
    scan = DicomScan()
    for f in files:
        ds = read_header(f)
        if ds is None:
            scan.not_dicom.append(f)
        elif is_image(ds):
            scan.image_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
        else:
            scan.other_objects.append((f, ds))
    return scan


def summarize(scan: DicomScan) -> list[SeriesSummary]:
    """Summaries of the image series in a scan, largest first."""
    out = []
    for uid, items in scan.image_series.items():
        ds = items[0][1]
        number = ds.get("SeriesNumber")
        out.append(SeriesSummary(
            series_instance_uid=uid, modality=str(ds.get("Modality", "")), n_slices=len(items),
            description=str(ds.get("SeriesDescription", "")),
            series_number=int(number) if number not in (None, "") else None,
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            rows=int(ds.Rows), columns=int(ds.Columns)))
    return sorted(out, key=lambda s: (-s.n_slices, s.series_instance_uid))


def choose_series(scan: DicomScan, series_uid: str | None, source: str) -> list[tuple[Path, pydicom.Dataset]]:
    """Pick the series to read; error (listing what exists) when ambiguous or absent."""
    found = summarize(scan)
    if not found:
        others = sorted({str(ds.get("Modality", "?")) for _, ds in scan.other_objects})
        extra = f"; found only non-image objects ({', '.join(others)})" if others else ""
        raise SeriesSelectionError(f"{source}: no DICOM image series found{extra}")
    if series_uid is not None:
        if series_uid not in scan.image_series:
            raise SeriesSelectionError(f"{source}: series {series_uid} not found; series present: "
                                       + "; ".join(map(str, found)))
        return scan.image_series[series_uid]
    if len(found) > 1:
        raise SeriesSelectionError(f"{source}: {len(found)} image series found, choose one with series_uid=: "
                                   + "; ".join(map(str, found)))
    return scan.image_series[found[0].series_instance_uid]


def _floats(ds: pydicom.Dataset, keyword: str) -> np.ndarray | None:
    v = ds.get(keyword)
    return None if v is None or v == "" else np.array([float(x) for x in v], dtype=float)


def stack_geometry(headers: list[pydicom.Dataset], names: list[str], source: str):
    """Sort slices along the normal and check the stack; return (order, origin, spacing,
    direction, notes). Spacing is (x, y, z) mm; PixelSpacing is (row, col) = (y, x)."""
    notes: list[str] = []
    first = headers[0]
    ps = _floats(first, "PixelSpacing")
    if ps is None:
        ps = np.ones(2)
        notes.append("no PixelSpacing: assuming 1 mm pixels")
    iops = [_floats(ds, "ImageOrientationPatient") for ds in headers]
    ipps = [_floats(ds, "ImagePositionPatient") for ds in headers]
    if any(v is None for v in iops + ipps):
        if len(headers) > 1:
            raise GeometryError(f"{source}: {len(headers)} slices without ImagePositionPatient/"
                                "ImageOrientationPatient; cannot order them in space")
        notes.append("no patient geometry (ImagePositionPatient/ImageOrientationPatient): pixel grid only")
        return [0], np.zeros(3), np.array([ps[1], ps[0], 1.0]), np.eye(3), notes
    for ds, n in zip(headers, names):
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise GeometryError(f"{source}: slice {n} is {ds.Rows}x{ds.Columns}, others "
                                f"{first.Rows}x{first.Columns}; one series must have one size")
        p = _floats(ds, "PixelSpacing")
        if p is not None and np.max(np.abs(p - ps)) > 1e-4:
            raise GeometryError(f"{source}: slice {n} has PixelSpacing {list(p)}, others {list(ps)}")
    iop = np.stack(iops)
    if np.max(np.abs(iop - iop[0])) > 1e-4:
        raise GeometryError(f"{source}: slices have {len(np.unique(np.round(iop, 4), axis=0))} different "
                            "orientations (localizer images mixed into the series?); separate them")
    direction = direction_from_iop(iop[0], source)
    normal = direction[:, 2]
    pos = np.stack(ipps)
    d = pos @ normal
    order = list(np.argsort(d, kind="stable"))
    d, pos = d[order], pos[order]
    if len(headers) == 1:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return order, pos[0], np.array([ps[1], ps[0], dz]), direction, notes
    gaps = np.diff(d)
    if np.min(gaps) < 1e-3:
        i = int(np.argmin(gaps))
        raise GeometryError(f"{source}: two slices at the same position {d[i]:.2f} mm along the normal "
                            "(several acquisitions, echoes or phases in one series?); split them")
    med = float(np.median(gaps))
    if np.max(gaps) - np.min(gaps) > max(0.01, 0.01 * med):
        raise GeometryError(f"{source}: uneven slice spacing, from {np.min(gaps):.3f} to {np.max(gaps):.3f} mm "
                            "(missing slices?); provide a complete, evenly spaced series")
    rel = pos - pos[0]
    lateral = rel - np.outer(rel @ normal, normal)
    drift = float(np.max(np.linalg.norm(lateral, axis=1)))
    if drift > 0.1 * float(min(ps)):
        angle = np.degrees(np.arctan2(np.linalg.norm(lateral[-1]), abs(d[-1] - d[0])))
        tilt = first.get("GantryDetectorTilt", "not given")
        raise GeometryError(f"{source}: slices are sheared {angle:.1f} degrees from their plane normal (gantry "
                            f"tilt; GantryDetectorTilt={tilt}); resample to an orthogonal grid first")
    dz = float(d[-1] - d[0]) / (len(d) - 1)
    return order, pos[0], np.array([ps[1], ps[0], dz]), direction, notes


def _pixels(path: Path, source: str) -> tuple[np.ndarray, pydicom.Dataset]:
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise UnsupportedFileError(f"{source}: cannot read {path.name} as DICOM ({type(exc).__name__})") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedFileError(f"{source}: {path.name} is a multi-frame (enhanced) image; "
                                   "export the series as single-frame images")
    try:
        return ds.pixel_array, ds
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and not ts.is_compressed:  # plain pixel data that does not fit its header
            raise UnsupportedFileError(f"{source}: pixel data of {path.name} is truncated or does not match its "
                                       f"Rows/Columns/BitsAllocated ({type(exc).__name__})") from None
        raise UnsupportedFileError(f"{source}: cannot decode pixel data of {path.name} (transfer syntax "
                                   f"{ts or 'unknown'}): {type(exc).__name__}; install a decoder such as pylibjpeg") from None


def volume_from_series(items: list[tuple[Path, pydicom.Dataset]], source: str) -> Volume:
    """Read pixel data of one series (already chosen) into a Volume. CT values are float32
    HU (RescaleSlope/Intercept applied); RGB images become (1, y, x, 3) uint8."""
    headers = [ds for _, ds in items]
    frames = sorted({str(ds.get("FrameOfReferenceUID", "") or "") for ds in headers} - {""})
    if len(frames) > 1:
        counts = {f: sum(str(ds.get("FrameOfReferenceUID", "")) == f for ds in headers) for f in frames}
        raise FrameOfReferenceError(
            f"{source}: the series' slices are in {len(frames)} different Frames of Reference ("
            + ", ".join(f"{n} slices in {f}" for f, n in counts.items())
            + "); their positions are not in one coordinate system. Send one consistent series")
    order, origin, spacing, direction, notes = stack_geometry(headers, [p.name for p, _ in items], source)
    items = [items[i] for i in order]
    first = items[0][1]
    rgb = int(first.get("SamplesPerPixel", 1)) == 3
    if rgb and len(items) > 1:
        raise UnsupportedFileError(f"{source}: a series of {len(items)} colour images is not a volume we read")
    check_voxels((len(items), int(first.Rows), int(first.Columns), int(first.get("SamplesPerPixel", 1) or 1)), source,
                 "series")  # before any pixel data is read
    slices = []
    for path, _ in items:
        arr, ds = _pixels(path, source)
        if rgb:
            slices.append(np.asarray(arr, dtype=np.uint8))
        else:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            slices.append(arr.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    array = np.stack(slices)
    number = first.get("SeriesNumber")
    info = DicomInfo(
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in items],
        sop_class_uids=[str(ds.SOPClassUID) for _, ds in items],
        patient_study={k: first.get(k) for k in PATIENT_STUDY_KEYWORDS if k in first},
        series_description=str(first.get("SeriesDescription", "")),
        series_number=int(number) if number not in (None, "") else None,
        headers=[ds for _, ds in items], files=[str(p) for p, _ in items])
    return Volume(array=array, origin=origin, spacing=spacing, direction=direction,
                  modality=str(first.get("Modality", "OT")), dicom=info, source=source, notes=notes)
