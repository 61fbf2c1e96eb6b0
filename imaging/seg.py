"""DICOM SEG write (highdicom) and read (pydicom).

Frames are ``(row, col)`` planes of the image grid; frame ``i`` of the array we hand to
highdicom is slice ``k = i`` of the image (array order ``(z, y, x)``), so highdicom records
each frame's source SOP instance and ImagePositionPatient (LPS mm). BINARY stores a mask;
FRACTIONAL (PROBABILITY) stores a probability map in [0, 1] quantised to 1/255.

The reader maps each frame to a slice by its source SOPInstanceUID when present, else by
ImagePositionPatient along the slice normal, and requires the SEG's in-plane grid to be
the image's (same rows/columns, pixel spacing, orientation, in-plane origin).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from . import dicom_common as dc
from .errors import EmptyRoiError, FrameOfReferenceError, GeometryError, UnsupportedFileError
from .errors import check_voxels
from .mask_common import RoiMask, check_same_patient, plane_slice, select
from .volume import Volume, direction_from_iop


def write_seg(data: np.ndarray, image: Volume, path, *, fractional: bool = False, segment_label: str = "GTV",
              algorithm_name: str = "P2SAM", algorithm_version: str = "", series_description: str = "P2SAM segmentation",
              series_number: int = 902, property_category=None, property_type=None,
              manufacturer: str = dc.MANUFACTURER, uid_entropy: str | None = None) -> Path:
    """Write a one-segment DICOM SEG for ``image`` with highdicom.

    ``data`` (z, y, x) on the image grid: bool mask (``fractional=False`` -> BINARY) or
    probabilities in [0, 1] (``fractional=True`` -> FRACTIONAL/PROBABILITY, 8-bit). Default
    segment coding: category "Morphologically Abnormal Structure", type "Neoplasm"."""
    data = _checked(np.asarray(data), image, fractional)
    segment = SegmentSpec(segment_label, property_category=property_category, property_type=property_type)
    return _write(data, [segment], image, path, fractional, algorithm_name, algorithm_version, series_description,
                  series_number, manufacturer, uid_entropy, omit_empty_frames=False)


@dataclass
class SegmentSpec:
    """One segment of a multi-segment SEG: its label and coding (default: from the RTSTRUCT
    interpreted type, see :func:`segment_codes`)."""

    label: str
    interpreted_type: str = ""
    property_category: object = None
    property_type: object = None


def segment_codes(interpreted_type: str):
    """(category, type) codes for an RTROIInterpretedType: targets (GTV, CTV, PTV, ITV) are a
    neoplasm, EXTERNAL the entire body, organs at risk and the rest an organ / tissue."""
    kind = (interpreted_type or "").upper()
    if kind in ("", "GTV", "CTV", "PTV", "ITV"):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    if kind == "EXTERNAL":
        return codes.SCT.AnatomicalStructure, codes.SCT.EntireBody
    if kind in ("ORGAN", "AVOIDANCE"):
        return codes.SCT.AnatomicalStructure, codes.SCT.Organ
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_seg_segments(data: np.ndarray, segments: list[SegmentSpec], image: Volume, path, *, fractional: bool = False,
                       algorithm_name: str = "P2SAM", algorithm_version: str = "",
                       series_description: str = "P2SAM segmentation", series_number: int = 902,
                       manufacturer: str = dc.MANUFACTURER, uid_entropy: str | None = None) -> Path:
    """Write one DICOM SEG with several (possibly overlapping) segments.

    ``data`` (S, z, y, x): one bool mask (or, ``fractional``, probability map) per segment, in
    the order of ``segments`` (segment numbers 1..S). Frames that are empty for a segment are
    left out (each segment keeps at least one frame)."""
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[0] != len(segments) or not segments:
        raise GeometryError(f"DICOM SEG: {len(segments)} segment(s) need a (S, z, y, x) array, got shape {data.shape}")
    planes = np.stack([_checked(d, image, fractional) for d in data], axis=-1)  # (z, y, x, S): highdicom's layout
    return _write(planes, segments, image, path, fractional, algorithm_name, algorithm_version, series_description,
                  series_number, manufacturer, uid_entropy, omit_empty_frames=len(segments) > 1)


def _checked(data: np.ndarray, image: Volume, fractional: bool) -> np.ndarray:
    info = dc.require_dicom(image, "DICOM SEG")
    if not info.headers or len(info.headers) != image.shape[0]:
        raise GeometryError(f"DICOM SEG needs the image's per-slice DICOM headers; {image.source} has none")
    if data.shape != image.shape:
        raise GeometryError(f"DICOM SEG: array shape {data.shape} differs from image {image.shape} (z, y, x)")
    if fractional:
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)) or data.min() < 0 or data.max() > 1:
            raise GeometryError("DICOM SEG FRACTIONAL: probabilities must be finite and within [0, 1]")
        return data
    if data.dtype.kind == "f":
        raise GeometryError("DICOM SEG BINARY: got a float array; pass a bool mask or fractional=True")
    return data != 0


def _write(data, segments: list[SegmentSpec], image: Volume, path, fractional: bool, algorithm_name: str,
           algorithm_version: str, series_description: str, series_number: int, manufacturer: str,
           uid_entropy: str | None, omit_empty_frames: bool) -> Path:
    info = dc.require_dicom(image, "DICOM SEG")
    seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64], version=(algorithm_version or "unknown")[:64],
        family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        category, kind = segment_codes(segment.interpreted_type)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.label[:64],
            segmented_property_category=segment.property_category or category,
            segmented_property_type=segment.property_type or kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    uid = (lambda what: dc.new_uid(f"{uid_entropy}-{what}")) if uid_entropy else (lambda what: dc.new_uid())
    kwargs = {}
    if fractional:
        kwargs = dict(fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255)
    with warnings.catch_warnings():  # highdicom warns about source-data quirks (e.g. one-part names)
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=info.headers, pixel_array=data, segmentation_type=seg_type,
            segment_descriptions=descriptions, series_instance_uid=uid("series"), series_number=series_number,
            sop_instance_uid=uid("sop"), instance_number=1, manufacturer=manufacturer[:64],
            manufacturer_model_name=algorithm_name[:64], software_versions=(algorithm_version or "unknown")[:64],
            device_serial_number="none", series_description=series_description[:64],
            omit_empty_frames=omit_empty_frames, **kwargs)
    return dc.save(seg, path)


def _open(path):
    ds = dc.read_dataset(path, "a DICOM SEG")
    if str(ds.get("SOPClassUID", "")) != SegmentationStorage:
        raise UnsupportedFileError(f"{Path(path).name}: is a {ds.get('Modality', 'non-SEG')} object, not a DICOM SEG")
    if str(ds.get("SegmentationType", "")) not in ("BINARY", "FRACTIONAL"):
        raise UnsupportedFileError(f"{Path(path).name}: SegmentationType {ds.get('SegmentationType')} is not "
                                   "supported (BINARY or FRACTIONAL expected)")
    return ds


def seg_segments(path) -> list[tuple[int, str]]:
    """(segment number, label) of every segment in a DICOM SEG."""
    ds = _open(path)
    return [(int(s.SegmentNumber), str(s.get("SegmentLabel", ""))) for s in ds.get("SegmentSequence", [])]


def _first(item, *keywords):
    for kw in keywords:
        seq = item.get(kw) if item is not None else None
        if not seq:
            return None
        item = seq[0]
    return item


def read_seg_segment(path, image: Volume, segment: "int | str | None" = None, *,
                     probability: bool = False) -> RoiMask:
    """One SEG segment on ``image``'s grid: ``RoiMask.mask`` is (z, y, x) bool
    (FRACTIONAL: value >= 0.5), or float32 probabilities in [0, 1] with ``probability``."""
    name = Path(path).name
    ds = _open(path)
    number, label = select(seg_segments(path), segment, name, "segment")
    src = f"{name} segment {number} '{label}'"
    check_same_patient(ds, image, name)
    img_for = image.dicom.frame_of_reference_uid if image.dicom else None
    seg_for = str(ds.get("FrameOfReferenceUID", ""))
    if img_for and seg_for and seg_for != img_for:
        raise FrameOfReferenceError(f"{src} is in Frame of Reference {seg_for} but the image is in {img_for}; "
                                    "use the image series it was made on (or a registered copy)")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    iop = _first(shared, "PlaneOrientationSequence")
    measures = _first(shared, "PixelMeasuresSequence")
    if (int(ds.Rows), int(ds.Columns)) != image.shape[1:]:
        raise GeometryError(f"{src}: frames are {ds.Rows}x{ds.Columns} but image slices are "
                            f"{image.shape[1]}x{image.shape[2]}; resample the SEG onto the image first")
    if iop is not None and not np.allclose(direction_from_iop(iop.ImageOrientationPatient, name)[:, :2],
                                           image.direction[:, :2], atol=1e-4):
        raise GeometryError(f"{src}: frame orientation differs from the image's")
    if measures is not None and "PixelSpacing" in measures and not np.allclose(
            [float(v) for v in measures.PixelSpacing][::-1], image.spacing[:2], atol=1e-4):
        raise GeometryError(f"{src}: pixel spacing {list(measures.PixelSpacing)} differs from the image's")
    check_voxels((int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)), src, "SEG")  # before decoding
    frames = ds.pixel_array
    frames = frames[None] if frames.ndim == 2 else frames
    scale = float(ds.get("MaximumFractionalValue", 1)) if ds.SegmentationType == "FRACTIONAL" else 1.0
    out = np.zeros(image.shape, dtype=np.float32)
    result = RoiMask(mask=out, name=label, number=number)
    sop_index = image.dicom.slice_index_of() if image.dicom else {}
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = _first(fg, "SegmentIdentificationSequence") or _first(shared, "SegmentIdentificationSequence")
        if ident is None or int(ident.ReferencedSegmentNumber) != number:
            continue
        plane = _first(fg, "PlanePositionSequence") or _first(shared, "PlanePositionSequence")
        if plane is None:
            raise GeometryError(f"{src}: frame {i + 1} has no ImagePositionPatient")
        pos = np.array([float(v) for v in plane.ImagePositionPatient])
        ref = (_first(fg, "DerivationImageSequence", "SourceImageSequence")
               or _first(shared, "DerivationImageSequence", "SourceImageSequence"))
        ref_uid = str(ref.ReferencedSOPInstanceUID) if ref is not None else None
        k, how = plane_slice(image, pos[None], ref_uid, sop_index, src)
        if k is None:
            result.skipped += 1
            continue
        in_plane = image.world_to_index(pos)[1:]
        if np.max(np.abs(in_plane)) > 0.01:
            raise GeometryError(f"{src}: frame origin is offset by {in_plane} pixels (row, col) from the slice origin")
        result.by_reference += how == "reference"
        result.by_position += how != "reference"
        out[k] = np.maximum(out[k], frames[i].astype(np.float32) / scale)
    if result.skipped:
        result.notes.append(f"{result.skipped} frame(s) not on the image were skipped")
    if not probability:
        result.mask = out >= 0.5
        if not result.mask.any():
            raise EmptyRoiError(f"{src} is empty on the given image")
    return result
