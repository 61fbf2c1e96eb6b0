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
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from . import dicom_common as dc
from .errors import EmptyRoiError, FrameOfReferenceError, GeometryError, UnsupportedFileError
from .limits import check_voxels
from .mask_common import RoiMask, plane_slice, select
from .volume import Volume, direction_from_iop


def write_seg(data: np.ndarray, image: Volume, path, *, fractional: bool = False, segment_label: str = "GTV",
              algorithm_name: str = "P2SAM", algorithm_version: str = "", series_description: str = "P2SAM segmentation",
              series_number: int = 902, property_category=None, property_type=None,
              manufacturer: str = dc.MANUFACTURER, uid_entropy: str | None = None) -> Path:
    """Write a one-segment DICOM SEG for ``image`` with highdicom.

    ``data`` (z, y, x) on the image grid: bool mask (``fractional=False`` -> BINARY) or
    probabilities in [0, 1] (``fractional=True`` -> FRACTIONAL/PROBABILITY, 8-bit). Default
    segment coding: category "Morphologically Abnormal Structure", type "Neoplasm"."""
    info = dc.require_dicom(image, "DICOM SEG")
    if not info.headers or len(info.headers) != image.shape[0]:
        raise GeometryError(f"DICOM SEG needs the image's per-slice DICOM headers; {image.source} has none")
    data = np.asarray(data)
    if data.shape != image.shape:
        raise GeometryError(f"DICOM SEG: array shape {data.shape} differs from image {image.shape} (z, y, x)")
    if fractional:
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)) or data.min() < 0 or data.max() > 1:
            raise GeometryError("DICOM SEG FRACTIONAL: probabilities must be finite and within [0, 1]")
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        if data.dtype.kind == "f":
            raise GeometryError("DICOM SEG BINARY: got a float array; pass a bool mask or fractional=True")
        data = data != 0
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64], version=(algorithm_version or "unknown")[:64],
        family=codes.cid7162.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=segment_label[:64],
        segmented_property_category=property_category or codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=property_type or codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    uid = (lambda what: dc.new_uid(f"{uid_entropy}-{what}")) if uid_entropy else (lambda what: dc.new_uid())
    kwargs = {}
    if fractional:
        kwargs = dict(fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255)
    with warnings.catch_warnings():  # highdicom warns about source-data quirks (e.g. one-part names)
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=info.headers, pixel_array=data, segmentation_type=seg_type,
            segment_descriptions=[description], series_instance_uid=uid("series"), series_number=series_number,
            sop_instance_uid=uid("sop"), instance_number=1, manufacturer=manufacturer[:64],
            manufacturer_model_name=algorithm_name[:64], software_versions=(algorithm_version or "unknown")[:64],
            device_serial_number="none", series_description=series_description[:64],
            omit_empty_frames=False, **kwargs)
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
