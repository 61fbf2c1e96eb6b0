"""The Volume type: a voxel array with its place in the patient.

Conventions (used everywhere in ``imaging``):

* ``array`` index order is ``(z, y, x)`` = ``(slice, row, col)``. CT volumes hold float32
  Hounsfield units; 2-D pictures have ``z = 1``; RGB frames are ``(1, y, x, 3)`` uint8.
* World coordinates are DICOM patient coordinates, **LPS millimetres** (+x to the patient's
  left, +y posterior, +z superior). NIfTI files are RAS; ``imaging.nifti`` converts.
* ``origin`` is the world position of the **centre** of voxel ``[0, 0, 0]`` (DICOM
  ImagePositionPatient of the first slice).
* ``spacing`` is ``(x, y, z)`` = (between columns, between rows, between slices) in mm.
* ``direction`` is 3x3; its columns are unit vectors in LPS of +col (DICOM row direction,
  ImageOrientationPatient[0:3]), +row (column direction, IOP[3:6]) and +slice.

    world = origin + direction @ (spacing * [col, row, slice])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import GeometryError

# Attributes copied from the source image into every derived object we write
# (Patient and General Study modules). StudyInstanceUID is kept separately.
PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
)


@dataclass
class DicomInfo:
    """DICOM identity of a Volume, needed to write objects that reference it.

    Lists are per slice, in the Volume's slice order (index ``k`` of ``array[k]``).
    ``headers`` are the per-slice datasets without pixel data (highdicom uses them as
    source images); ``patient_study`` maps DICOM keywords to values to copy.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_instance_uids: list[str]
    sop_class_uids: list[str]
    patient_study: dict[str, Any] = field(default_factory=dict)
    series_description: str = ""
    series_number: int | None = None
    headers: list[Any] | None = None
    files: list[str] = field(default_factory=list)

    def slice_index_of(self) -> dict[str, int]:
        """Map SOPInstanceUID -> slice index k."""
        return {uid: k for k, uid in enumerate(self.sop_instance_uids)}


@dataclass(eq=False)
class Volume:
    """Voxel array + LPS geometry (+ optional DICOM identity). See module docstring."""

    array: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "OT"
    dicom: DicomInfo | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        a = self.array
        if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] == 3)):
            raise GeometryError(
                f"{self.source or 'volume'}: array must be (z, y, x) or (z, y, x, 3), got shape {a.shape}")
        if np.any(self.spacing <= 0) or not np.all(np.isfinite(self.spacing)):
            raise GeometryError(f"{self.source or 'volume'}: spacing must be positive, got {self.spacing}")
        if abs(abs(np.linalg.det(self.direction)) - 1) > 1e-3:
            raise GeometryError(
                f"{self.source or 'volume'}: direction matrix is not orthonormal (det {np.linalg.det(self.direction):.4f})")

    # --- shape -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(z, y, x)`` (without the RGB channel)."""
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    def is_2d(self) -> bool:
        """True for a single slice / picture (``z == 1``)."""
        return self.shape[0] == 1

    # --- geometry ----------------------------------------------------------------------
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(col, row, slice, 1)`` — i.e. ``(x, y, z)``
        index order, the *reverse* of array order — to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def index_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Continuous array indices ``(..., 3)`` in ``(z, y, x)`` order -> LPS mm ``(..., 3)``."""
        zyx = np.asarray(zyx, dtype=float)
        xyz = zyx[..., ::-1]
        return self.origin + (xyz * self.spacing) @ self.direction.T

    def world_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS mm ``(..., 3)`` -> continuous array indices ``(..., 3)`` in ``(z, y, x)`` order."""
        lps = np.asarray(lps, dtype=float)
        xyz = ((lps - self.origin) @ np.linalg.inv(self.direction).T) / self.spacing
        return xyz[..., ::-1]

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit LPS vector of increasing slice index."""
        return self.direction[:, 2]

    def slice_positions(self) -> np.ndarray:
        """Distance (mm) of each slice plane along ``slice_normal`` (from the LPS origin)."""
        corners = self.index_to_world(np.stack([np.arange(self.shape[0]), np.zeros(self.shape[0]),
                                                np.zeros(self.shape[0])], axis=1))
        return corners @ self.slice_normal

    def voxel_area_mm2(self) -> float:
        """In-plane pixel area (mm^2)."""
        return float(self.spacing[0] * self.spacing[1])

    def same_grid(self, other: "Volume", tol_mm: float = 1e-3) -> bool:
        """True when both volumes sample the same voxel centres (within ``tol_mm``)."""
        if self.shape != other.shape:
            return False
        return bool(np.allclose(self.affine(), other.affine(), atol=tol_mm))

    def with_array(self, array: np.ndarray, modality: str | None = None) -> "Volume":
        """Same geometry and DICOM identity, new voxel data."""
        return replace(self, array=np.asarray(array), modality=modality or self.modality,
                       notes=list(self.notes))

    def copy(self) -> "Volume":
        return copy.deepcopy(self)

    def describe(self) -> str:
        """One-line human description (no patient identifiers)."""
        z, y, x = self.shape
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        return f"{self.modality} {z}x{y}x{x} (z,y,x), spacing (x,y,z) = ({sp}) mm"


def direction_from_iop(iop: "list[float] | np.ndarray", source: str = "image") -> np.ndarray:
    """ImageOrientationPatient (6 numbers) -> 3x3 direction (columns: row dir, col dir,
    normal = row x col). Raises GeometryError when the two vectors are not orthonormal."""
    v = np.asarray(iop, dtype=float).reshape(2, 3)
    norms = np.linalg.norm(v, axis=1)
    if np.any(np.abs(norms - 1) > 1e-3) or abs(float(v[0] @ v[1])) > 1e-3:
        raise GeometryError(f"{source}: ImageOrientationPatient {list(np.round(v.ravel(), 6))} "
                            "is not two orthogonal unit vectors")
    r = v[0] / norms[0]
    c = v[1] - (v[1] @ r) * r
    c /= np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)], axis=1)


def to_sitk(volume: Volume, array: np.ndarray | None = None):
    """Volume (or ``array`` on its grid, (z, y, x)) -> SimpleITK image with LPS geometry.

    SimpleITK's physical space is LPS like DICOM, and its direction matrix has the same
    column meaning as ours, so no axis flips are involved.
    """
    import SimpleITK as sitk

    data = volume.array if array is None else array
    if data.dtype == bool:
        data = data.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=data.ndim == 4)
    img.SetOrigin(tuple(float(v) for v in volume.origin))
    img.SetSpacing(tuple(float(v) for v in volume.spacing))
    img.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return img
