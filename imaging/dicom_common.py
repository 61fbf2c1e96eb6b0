"""Shared pieces for the DICOM writers: file meta, patient/study copying, DS text, UIDs."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .errors import ImagingError
from .volume import DicomInfo, Volume

MANUFACTURER = "P2SAM open-source service"
# Type 2 attributes of the Patient and General Study modules: present, possibly empty.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                       "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def new_uid(entropy: str | None = None) -> str:
    """A new UID; deterministic when ``entropy`` is given (reproducible examples/tests)."""
    return generate_uid(entropy_srcs=[entropy]) if entropy else generate_uid()


def new_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """Empty dataset with File Meta and SOP Common identification filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "P2SAM_IMAGING"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    return ds


def require_dicom(image: Volume, what: str) -> DicomInfo:
    """The image's DICOM identity, or an ImagingError saying why ``what`` needs it."""
    info = image.dicom
    if info is None or not info.sop_instance_uids or not info.frame_of_reference_uid:
        raise ImagingError(
            f"{what} must reference a DICOM image series with a Frame of Reference, but the image "
            f"{image.source or '(in memory)'} has none; read the image from DICOM (or write it with "
            "write_dicom_series) first")
    return info


def copy_patient_study(ds: Dataset, info: DicomInfo) -> None:
    """Copy Patient + General Study attributes of the source image into ``ds``."""
    for keyword, value in info.patient_study.items():
        if value is not None:
            setattr(ds, keyword, value)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = info.study_instance_uid


def set_equipment(ds: Dataset, manufacturer: str, model: str, version: str) -> None:
    """General Equipment module: who made this object (our software, not the scanner)."""
    ds.Manufacturer = manufacturer[:64]
    ds.ManufacturerModelName = model[:64]
    ds.SoftwareVersions = (version or "unknown")[:64]


def series_date_time(ds: Dataset) -> None:
    """SeriesDate/SeriesTime = now (local time)."""
    now = _dt.datetime.now()
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")


def ds_text(value: float, decimals: int = 4) -> str:
    """A number as DICOM DS text (<= 16 chars) with at most ``decimals`` decimals (default
    0.1 micrometre for mm positions; use 8-10 for direction cosines and pixel spacing)."""
    value = float(value)
    for d in range(decimals, -1, -1):
        s = f"{value:.{d}f}".rstrip("0").rstrip(".") if d else f"{value:.0f}"
        if len(s) <= 16:
            return "0" if s in ("-0", "", "-") else s
    raise ValueError(f"{value} does not fit a DICOM DS")


def ds_list(values: np.ndarray, decimals: int = 4) -> list[str]:
    """Flattened numbers as DS strings (see :func:`ds_text`)."""
    return [ds_text(v, decimals) for v in np.asarray(values, dtype=float).ravel()]


TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
UTF8 = "ISO_IR 192"


def check_lo(value: str, what: str = "value") -> str:
    """``value`` if it is a valid DICOM LO (Long String) value, else ValueError saying why: at most
    64 characters, no backslash (the value delimiter) and no control characters (NUL, ESC, CR, LF,
    TAB ...: ESC is only for ISO 2022 code extensions, which we never write). Non-ASCII text is
    fine: the writer then declares UTF-8 (SpecificCharacterSet ISO_IR 192)."""
    if len(value) > 64:
        raise ValueError(f"{what}: at most 64 characters (DICOM LO), got {len(value)}")
    if "\\" in value:
        raise ValueError(f"{what}: no backslash allowed (DICOM LO uses it between values)")
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0]
    if bad:
        raise ValueError(f"{what}: no control characters allowed (DICOM LO); found {', '.join(sorted({repr(c) for c in bad}))}")
    if value.strip() == "":
        raise ValueError(f"{what}: must not be empty or only spaces")
    return value


def declare_character_set(ds: Dataset) -> None:
    """Declare UTF-8 (ISO_IR 192) when any text value is not ASCII and the dataset does not already
    declare a character set that encodes every such value (values are Unicode in pydicom, so
    re-declaring re-encodes them correctly)."""
    texts = [str(e.value) for e in ds.iterall() if e.VR in TEXT_VRS and e.value is not None and not e.is_empty]
    non_ascii = [t for t in texts if not t.isascii()]
    if not non_ascii:
        return
    declared = ds.get("SpecificCharacterSet")
    if declared:
        from pydicom.charset import convert_encodings

        try:
            codecs = convert_encodings([declared] if isinstance(declared, str) else list(declared))
            if len(codecs) == 1 and all(t.encode(codecs[0]) for t in non_ascii):
                return
        except (LookupError, UnicodeEncodeError, ValueError):
            pass
    ds.SpecificCharacterSet = UTF8


def save(ds: Dataset, path: "str | Path") -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + meta), creating parent folders; non-ASCII
    text gets its character set declared (:func:`declare_character_set`)."""
    declare_character_set(ds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_dataset(path: "str | Path", expected: str) -> Dataset:
    """Read a DICOM file or raise an ImagingError naming it and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise ImagingError(f"{path}: file not found (expected {expected})")
    try:
        return pydicom.dcmread(path)
    except Exception:
        raise ImagingError(f"{path.name}: not a DICOM file (expected {expected})") from None
