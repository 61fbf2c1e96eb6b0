"""Pieces shared by the RTSTRUCT and SEG readers: choosing an ROI, and placing a plane
(contour or frame) on a slice of the image.

Slice placement: a plane given with a ReferencedSOPInstanceUID goes to the slice with that
SOP instance (and its position is checked against that slice); without one it goes to the
slice whose position along the normal is within ``POSITION_TOL_SLICES`` of it. Which rule
was used is counted and reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GeometryError, PatientMismatchError, RoiNotFoundError
from .volume import Volume

POSITION_TOL_SLICES = 0.25  # of the slice spacing


@dataclass
class RoiMask:
    """A mask read from an RTSTRUCT ROI / SEG segment on the image grid, (z, y, x) bool,
    with an account of how planes were mapped to slices."""

    mask: np.ndarray
    name: str
    number: int
    by_reference: int = 0      # planes placed via ReferencedSOPInstanceUID
    by_position: int = 0       # planes placed by position along the slice normal
    skipped: int = 0           # planes not on the image (reported in notes)
    notes: list[str] = field(default_factory=list)


def select(candidates: list[tuple[int, str]], roi: "str | int | None", source: str, what: str) -> tuple[int, str]:
    """Pick ``(number, name)`` by number (int) or name (str; exact, then case-insensitive).
    ``roi=None`` is allowed only when there is exactly one candidate."""
    listing = ", ".join(f"{n}: '{name}'" for n, name in candidates) or "none"
    if roi is None:
        if len(candidates) == 1:
            return candidates[0]
        raise RoiNotFoundError(f"{source}: {len(candidates)} {what}s, choose one by name or number: {listing}")
    if isinstance(roi, (int, np.integer)) and not isinstance(roi, bool):
        for n, name in candidates:
            if n == int(roi):
                return n, name
        raise RoiNotFoundError(f"{source}: no {what} number {roi}; {what}s are {listing}")
    exact = [c for c in candidates if c[1] == str(roi)]
    loose = [c for c in candidates if c[1].strip().lower() == str(roi).strip().lower()]
    for found in (exact, loose):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise RoiNotFoundError(f"{source}: several {what}s named '{roi}'; choose by number: {listing}")
    raise RoiNotFoundError(f"{source}: no {what} named '{roi}'; {what}s are {listing}")


def plane_slice(image: Volume, points_lps: np.ndarray, ref_uid: str | None,
                sop_index: dict[str, int], source: str) -> tuple[int | None, str]:
    """Slice index of a plane of LPS points. Returns ``(k, how)`` with how in
    'reference', 'position', 'missing_reference' (UID not in the image; k is the slice by
    position or None) or 'outside' (plane beyond the first/last slice). Raises
    GeometryError when the plane is not parallel to the slices, lies between slices, or
    contradicts its referenced slice."""
    k_cont = image.world_to_index(points_lps)[:, 0]
    kc = float(np.mean(k_cont))
    tol = POSITION_TOL_SLICES
    if float(np.ptp(k_cont)) > 2 * tol:
        raise GeometryError(f"{source}: a plane is not parallel to the image slices (spans "
                            f"{np.ptp(k_cont) * image.spacing[2]:.1f} mm along the normal); it belongs to "
                            "another series orientation")
    nz = image.shape[0]
    k_pos = int(round(kc))
    on_grid = abs(kc - k_pos) <= tol and 0 <= k_pos < nz
    if ref_uid and ref_uid in sop_index:
        k = sop_index[ref_uid]
        if abs(kc - k) > tol:
            raise GeometryError(f"{source}: a plane references slice {k} but lies "
                                f"{(kc - k) * image.spacing[2]:+.2f} mm from it along the normal; the file's "
                                "references and coordinates disagree")
        return k, "reference"
    if ref_uid and sop_index:
        return (k_pos if on_grid else None), "missing_reference"
    if on_grid:
        return k_pos, "position"
    if kc < -0.5 or kc > nz - 0.5:
        return None, "outside"
    raise GeometryError(f"{source}: a plane lies between image slices ({kc:.2f} in slice units); it was "
                        "drawn on another series; give the series it was drawn on")


def check_same_patient(ds, image: Volume, name: str) -> None:
    """Refuse a mask object whose PatientID differs from the image's (when both have one).
    The identifiers are not echoed (messages end up in logs and HTTP error bodies)."""
    theirs = str(ds.get("PatientID", "") or "").strip()
    ours = str((image.dicom.patient_study.get("PatientID", "") if image.dicom else "") or "").strip()
    if theirs and ours and theirs != ours:
        raise PatientMismatchError(f"{name}: belongs to another patient than the image series (PatientID differs); "
                                   "give the structure set drawn on this patient's images")
