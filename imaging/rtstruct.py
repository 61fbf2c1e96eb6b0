"""RTSTRUCT read and write.

Contours are CLOSED_PLANAR polygons in **LPS mm** (patient coordinates of the image's Frame
of Reference). Our writer emits **pixel-edge outlines** (vertices on pixel corners) so that
mask -> RTSTRUCT -> mask is exact; holes are written as separate inner contours on the
same slice and the reader fills every slice with the **even-odd rule** over all contours of
the ROI (inner contours are holes, islands inside holes come back; keyhole contours from
other systems work too). See ``imaging.raster``.

Each contour references its image slice (ContourImageSequence); the reader maps contours
to slices by that reference when present, else by position along the slice normal, and
counts which rule was used (:class:`~imaging.mask_common.RoiMask`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import RTStructureSetStorage

from . import dicom_common as dc
from .errors import EmptyRoiError, FrameOfReferenceError, GeometryError, MissingReferenceError, UnsupportedFileError
from .mask_common import RoiMask, check_same_patient, plane_slice, select
from .raster import mask_to_rings, remove_small_islands, rings_to_mask
from .volume import Volume

# Contour islands smaller than this are dropped (the one default: jobs use it unless P2SAM_MIN_ISLAND_MM2 is set)
DEFAULT_MIN_ISLAND_AREA_MM2 = 2.0
_CONTOUR_DATA = Tag(0x3006, 0x0050)
_CLOSED = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")  # both filled even-odd (XOR) with the slice's others
_STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (what RTSTRUCTs reference)


@dataclass
class RoiInfo:
    number: int
    name: str
    n_contours: int
    interpreted_type: str = ""
    frame_of_reference_uid: str = ""
    color: tuple[int, int, int] | None = None  # ROIDisplayColor, when the file gives one


@dataclass
class RoiSpec:
    """One ROI to write: ``mask`` (z, y, x) bool on the image grid."""

    mask: np.ndarray
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "GTV"
    number: int | None = None  # ROINumber to write (default: position in the list, from 1)


# ----------------------------------------------------------------------------- reading
def _open(path) -> Dataset:
    ds = dc.read_dataset(path, "an RTSTRUCT")
    if str(ds.get("SOPClassUID", "")) != RTStructureSetStorage:
        raise UnsupportedFileError(f"{Path(path).name}: is a {ds.get('Modality', 'non-RTSTRUCT')} object, "
                                   "not an RTSTRUCT")
    return ds


def rtstruct_rois(path) -> list[RoiInfo]:
    """ROIs of an RTSTRUCT (number, name, contour count, interpreted type, FoR, colour)."""
    ds = _open(path)
    counts = {int(rc.ReferencedROINumber): len(rc.get("ContourSequence", []))
              for rc in ds.get("ROIContourSequence", [])}
    colors = {int(rc.ReferencedROINumber): _color(rc.get("ROIDisplayColor")) for rc in ds.get("ROIContourSequence", [])}
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", ""))
             for o in ds.get("RTROIObservationsSequence", [])}
    return [RoiInfo(int(r.ROINumber), str(r.get("ROIName", "")), counts.get(int(r.ROINumber), 0),
                    types.get(int(r.ROINumber), ""), str(r.get("ReferencedFrameOfReferenceUID", "")),
                    colors.get(int(r.ROINumber)))
            for r in ds.get("StructureSetROISequence", [])]


def _color(value) -> tuple[int, int, int] | None:
    """ROIDisplayColor as three 0-255 integers, or None when absent or malformed."""
    try:
        rgb = tuple(round(float(c)) for c in (value or []))
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) else None


def _points(contour: Dataset) -> np.ndarray:
    raw = contour.get_item(_CONTOUR_DATA)
    value = raw.value if raw is not None else b""
    if isinstance(value, (bytes, bytearray)):
        text = value.decode("ascii", "replace").strip(" \x00")
        vals = np.array(text.split("\\"), dtype=float) if text else np.zeros(0)
    else:
        vals = np.asarray(contour.ContourData, dtype=float)
    return vals[: len(vals) // 3 * 3].reshape(-1, 3)


def read_rtstruct_roi(path, image: Volume, roi: "str | int | None" = None, *,
                      allow_missing_references: bool = False) -> RoiMask:
    """Rasterise one ROI onto ``image``'s grid -> RoiMask (mask (z, y, x) bool).

    ``roi``: name (str) or ROI number (int). Contours referencing SOP instances that are not
    in ``image`` raise MissingReferenceError, unless ``allow_missing_references`` (then
    they are placed by position when they lie on a slice, else skipped and counted)."""
    name = Path(path).name
    ds = _open(path)
    infos = rtstruct_rois(path)
    number, roi_name = select([(i.number, i.name) for i in infos], roi, name, "ROI")
    info = next(i for i in infos if i.number == number)
    src = f"{name} ROI '{roi_name}'"
    check_same_patient(ds, image, name)
    img_for = image.dicom.frame_of_reference_uid if image.dicom else None
    if img_for and info.frame_of_reference_uid and info.frame_of_reference_uid != img_for:
        raise FrameOfReferenceError(f"{src} is in Frame of Reference {info.frame_of_reference_uid} but the image "
                                    f"is in {img_for}; contours would land in the wrong place. Use the image "
                                    "series it was drawn on (or a registered copy)")
    contours = next((rc.get("ContourSequence", []) for rc in ds.get("ROIContourSequence", [])
                     if int(rc.ReferencedROINumber) == number), [])
    if not contours:
        raise EmptyRoiError(f"{src} has no contours")
    result = RoiMask(mask=np.zeros(image.shape, dtype=bool), name=roi_name, number=number)
    sop_index = image.dicom.slice_index_of() if image.dicom else {}
    per_slice: dict[int, list[np.ndarray]] = {}
    missing: list[str] = []
    ignored: dict[str, int] = {}
    for contour in contours:
        kind = str(contour.get("ContourGeometricType", "")).upper()
        pts = _points(contour)
        if kind not in _CLOSED or len(pts) < 3:
            label = kind if kind not in _CLOSED else "fewer than 3 points"
            ignored[label] = ignored.get(label, 0) + 1
            continue
        refs = contour.get("ContourImageSequence", [])
        ref = str(refs[0].ReferencedSOPInstanceUID) if refs and "ReferencedSOPInstanceUID" in refs[0] else None
        k, how = plane_slice(image, pts, ref, sop_index, src)
        if how == "missing_reference":
            missing.append(ref or "")
            if not allow_missing_references:
                continue
        if k is None:
            result.skipped += 1
            continue
        if how == "reference":
            result.by_reference += 1
        else:
            result.by_position += 1
        per_slice.setdefault(k, []).append(image.world_to_index(pts)[:, 1:])
    if missing and not allow_missing_references:
        series = [str(s.SeriesInstanceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
                  for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])]
        drawn_on = f" (drawn on series {series[0]})" if series else ""
        raise MissingReferenceError(
            f"{src}: {len(missing)} of {len(contours)} contours reference images that are not in the given "
            f"series{drawn_on}, e.g. SOPInstanceUID {missing[0]}; give the complete series the RTSTRUCT was "
            "drawn on, or allow missing references to keep only contours on the given slices")
    for label, n in ignored.items():
        result.notes.append(f"{n} contour(s) ignored: {label}")
    if missing:
        result.notes.append(f"{len(missing)} contour(s) reference images not in the series; placed by position "
                            "where they lie on a slice, else skipped")
    if result.skipped:
        result.notes.append(f"{result.skipped} contour(s) lie outside the image slices and were skipped")
    if result.by_position and not missing:
        why = "the image has no DICOM identity" if not sop_index else "contours without image reference"
        result.notes.append(f"{result.by_position} contour(s) placed by position along the slice normal ({why})")
    if img_for is None:
        result.notes.append("the image has no Frame of Reference: the RTSTRUCT's could not be checked")
    for k, polys in per_slice.items():
        result.mask[k] = rings_to_mask(polys, image.shape[1:])
    if not result.mask.any():
        raise EmptyRoiError(f"{src} has no contour covering a pixel of the given image "
                            f"({len(contours)} contours, {result.skipped} outside its slices)")
    return result


# ----------------------------------------------------------------------------- writing
def write_rtstruct(mask: np.ndarray, image: Volume, path, roi_name: str = "GTV",
                   color: tuple[int, int, int] = (255, 0, 0), **kwargs) -> Path:
    """Write one ROI; see :func:`write_rtstruct_rois` for the keyword arguments."""
    interpreted_type = kwargs.pop("interpreted_type", "GTV")
    return write_rtstruct_rois([RoiSpec(mask, roi_name, color, interpreted_type)], image, path, **kwargs)


def write_rtstruct_rois(rois: list[RoiSpec], image: Volume, path, *, algorithm_name: str = "P2SAM",
                        algorithm_version: str = "", generation_algorithm: str = "AUTOMATIC",
                        min_island_area_mm2: float | None = DEFAULT_MIN_ISLAND_AREA_MM2,
                        structure_set_label: str = "P2SAM", series_description: str = "P2SAM contours",
                        series_number: int = 901, manufacturer: str = dc.MANUFACTURER,
                        uid_entropy: str | None = None) -> Path:
    """Write masks ((z, y, x) bool on ``image``'s grid) as an RTSTRUCT referencing ``image``.

    Same StudyInstanceUID and FrameOfReferenceUID as the image; every image SOP instance is
    listed in RTReferencedSeriesSequence and each contour references its slice. Contour
    points are pixel-corner outlines in LPS mm; holes are inner contours (even-odd).
    4-connected islands smaller than ``min_island_area_mm2`` are dropped (holes are kept; None: the
    default, DEFAULT_MIN_ISLAND_AREA_MM2).
    ROIGenerationAlgorithm is ``generation_algorithm``; with AUTOMATIC/SEMIAUTOMATIC the
    algorithm name/version go to ROIGenerationDescription and the ROI Derivation Algorithm
    Identification Sequence."""
    info = dc.require_dicom(image, "RTSTRUCT")
    for spec in rois:
        m = np.asarray(spec.mask)
        if m.shape != image.shape:
            raise GeometryError(f"RTSTRUCT ROI '{spec.name}': mask shape {m.shape} differs from image {image.shape} (z, y, x)")
        if m.dtype.kind == "f":
            raise GeometryError(f"RTSTRUCT ROI '{spec.name}': got a float array; threshold probabilities to a mask first")
    uid = (lambda what: dc.new_uid(f"{uid_entropy}-{what}")) if uid_entropy else (lambda what: dc.new_uid())
    ds = dc.new_dataset(RTStructureSetStorage, uid("sop"))
    dc.copy_patient_study(ds, info)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = uid("series")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.OperatorsName = ""
    dc.series_date_time(ds)
    dc.set_equipment(ds, manufacturer, algorithm_name, algorithm_version)
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = info.frame_of_reference_uid  # Frame of Reference module (same as image)
    ds.PositionReferenceIndicator = _header_value(info, "PositionReferenceIndicator")
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    def image_ref(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = info.sop_class_uids[k]
        item.ReferencedSOPInstanceUID = info.sop_instance_uids[k]
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = info.series_instance_uid
    series_ref.ContourImageSequence = Sequence([image_ref(k) for k in range(image.shape[0])])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_CLASS
    study_ref.ReferencedSOPInstanceUID = info.study_instance_uid
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = info.frame_of_reference_uid
    for_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_ref])

    if min_island_area_mm2 is None:  # (P2SAM_MIN_ISLAND_MM2 unset)
        min_island_area_mm2 = DEFAULT_MIN_ISLAND_AREA_MM2
    min_px = float(min_island_area_mm2) / image.voxel_area_mm2()
    roi_items, contour_items, observations = [], [], []
    numbers = [spec.number if spec.number is not None else i for i, spec in enumerate(rois, start=1)]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"RTSTRUCT: ROI numbers must be unique, got {numbers}")
    for number, spec in zip(numbers, rois):
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = info.frame_of_reference_uid
        item.ROIName = spec.name[:64]
        item.ROIGenerationAlgorithm = generation_algorithm
        if generation_algorithm != "MANUAL":
            item.ROIGenerationDescription = f"{algorithm_name} {algorithm_version}".strip()[:64]
            item.ROIDerivationAlgorithmIdentificationSequence = Sequence([_algorithm(algorithm_name, algorithm_version)])
        roi_items.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [int(c) for c in spec.color]
        contours = []
        for k in range(image.shape[0]):
            kept = remove_small_islands(np.asarray(spec.mask[k]) != 0, min_px)
            for ring in mask_to_rings(kept):
                world = image.index_to_world(np.column_stack([np.full(len(ring.points), k), ring.points]))
                c = Dataset()
                c.ContourImageSequence = Sequence([image_ref(k)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(ring.points)
                c.ContourNumber = len(contours) + 1
                c.ContourData = dc.ds_list(world)
                contours.append(c)
        if contours:
            rc.ContourSequence = Sequence(contours)
        contour_items.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = spec.interpreted_type
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observations)
    return dc.save(ds, path)


def _header_value(info, keyword: str) -> str:
    headers = info.headers or []
    return str(headers[0].get(keyword, "") or "") if headers else ""


def _algorithm(name: str, version: str) -> Dataset:
    """Algorithm Identification Macro item (family: Artificial Intelligence, DCM 123110)."""
    family = Dataset()
    family.CodeValue = "123110"
    family.CodingSchemeDesignator = "DCM"
    family.CodeMeaning = "Artificial Intelligence"
    item = Dataset()
    item.AlgorithmFamilyCodeSequence = Sequence([family])
    item.AlgorithmName = name[:64]
    item.AlgorithmVersion = (version or "unknown")[:64]
    return item
