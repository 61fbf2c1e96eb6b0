"""Write a CT image series (one CT Image Storage file per slice).

Slice ``k`` of the ``(z, y, x)`` float HU array goes to file ``CT_{k+1:04d}.dcm`` with
ImagePositionPatient = LPS centre of voxel ``[k, 0, 0]``, ImageOrientationPatient = the
first two direction columns, PixelSpacing = (y, x) spacing. Pixels are stored as uint16
``HU + 1024`` (RescaleIntercept -1024, RescaleSlope 1), rounded, clipped to
[-1024, 64511] HU. A left-handed volume (slice direction opposite to row x col, as NIfTI
files can be) is written with its slices reversed so that DICOM geometry stays exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from . import dicom_common as dc
from .errors import GeometryError
from .volume import PATIENT_STUDY_KEYWORDS, DicomInfo, Volume

DEFAULT_PATIENT = {"PatientName": "Anonymous^Synthetic", "PatientID": "SYNTHETIC", "PatientBirthDate": "",
                   "PatientSex": "O"}


def _right_handed(volume: Volume) -> Volume:
    d = volume.direction
    if np.abs(np.cross(d[:, 0], d[:, 1]) @ d[:, 2] - 1) < 1e-4:
        return volume
    if np.abs(np.cross(d[:, 0], d[:, 1]) @ d[:, 2] + 1) < 1e-4:
        flipped = volume.copy()
        flipped.array = volume.array[::-1].copy()
        flipped.origin = volume.index_to_world(np.array([volume.shape[0] - 1, 0, 0]))
        flipped.direction = d * np.array([1, 1, -1])
        return flipped
    raise GeometryError(f"{volume.source}: slices are not perpendicular to their rows/columns; cannot write DICOM")


def write_dicom_series(volume: Volume, out_dir, patient: dict[str, Any] | None = None,
                       study: dict[str, Any] | None = None, *, series_description: str = "Synthetic CT",
                       series_number: int = 1, frame_of_reference_uid: str | None = None,
                       patient_position: str = "HFS", manufacturer: str = dc.MANUFACTURER,
                       uid_entropy: str | None = None) -> Volume:
    """Write ``volume`` (float HU, (z, y, x)) as a CT series in ``out_dir``; return the
    Volume as written, with ``dicom`` filled in (ready for write_rtstruct/write_seg).

    ``patient``/``study``: DICOM keywords (PatientName, PatientID, PatientBirthDate,
    PatientSex / StudyInstanceUID, StudyDate, StudyTime, StudyID, AccessionNumber,
    StudyDescription, ReferringPhysicianName). Missing ones come from ``volume.dicom``
    when present, else defaults / new UIDs (deterministic with ``uid_entropy``)."""
    if volume.is_rgb:
        raise GeometryError("write_dicom_series writes CT (grey HU) volumes, not RGB pictures")
    vol = _right_handed(volume)
    uid = (lambda what: dc.new_uid(f"{uid_entropy}-{what}")) if uid_entropy else (lambda what: dc.new_uid())
    ps: dict[str, Any] = dict(DEFAULT_PATIENT)
    if vol.dicom:
        ps.update(vol.dicom.patient_study)
        ps.setdefault("StudyInstanceUID", vol.dicom.study_instance_uid)
    ps.update(patient or {})
    ps.update(study or {})
    study_uid = str(ps.pop("StudyInstanceUID", None) or uid("study"))
    for_uid = frame_of_reference_uid or (vol.dicom.frame_of_reference_uid if vol.dicom else None) or uid("for")
    series_uid = uid("series")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.rint(vol.array.astype(np.float64) + 1024), 0, 65535).astype(np.uint16)
    info = DicomInfo(study_instance_uid=study_uid, series_instance_uid=series_uid, frame_of_reference_uid=for_uid,
                     sop_instance_uids=[], sop_class_uids=[],
                     patient_study={k: v for k, v in ps.items() if k in PATIENT_STUDY_KEYWORDS},
                     series_description=series_description, series_number=series_number, headers=[], files=[])
    iop = dc.ds_list(vol.direction[:, :2].T.ravel(), decimals=10)
    for k in range(vol.shape[0]):
        ds = dc.new_dataset(CTImageStorage, uid(f"sop{k}"))
        dc.copy_patient_study(ds, info)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description[:64]
        ds.Laterality = ""
        ds.PatientPosition = patient_position
        dc.series_date_time(ds)
        ds.StudyDate = ds.StudyDate or ds.SeriesDate
        ds.StudyTime = ds.StudyTime or ds.SeriesTime
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        dc.set_equipment(ds, manufacturer, "imaging.write_dicom_series", "1")
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ContentDate, ds.ContentTime = ds.SeriesDate, ds.SeriesTime
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = dc.ds_list(vol.index_to_world(np.array([k, 0, 0])))
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = dc.ds_list([vol.spacing[1], vol.spacing[0]], decimals=10)
        ds.SliceThickness = dc.ds_text(vol.spacing[2], decimals=10)
        ds.SpacingBetweenSlices = dc.ds_text(vol.spacing[2], decimals=10)
        ds.KVP = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = stored[k].tobytes()
        path = dc.save(ds, out / f"CT_{k + 1:04d}.dcm")
        header = Dataset(ds)
        del header.PixelData
        header.file_meta = ds.file_meta
        info.sop_instance_uids.append(str(ds.SOPInstanceUID))
        info.sop_class_uids.append(CTImageStorage)
        info.headers.append(header)  # type: ignore[union-attr]
        info.files.append(str(path))
    written = vol.with_array((stored.astype(np.float32) - 1024), modality="CT")
    written.dicom, written.source = info, str(out)
    return written
