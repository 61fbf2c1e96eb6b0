"""NIfTI read/write with explicit RAS <-> LPS conversion.

NIfTI stores data as ``(i, j, k[, t])`` = ``(x, y, z[, samples])`` with an affine to **RAS**
mm. Our arrays are ``(z, y, x)`` (or ``(k, z, y, x)`` for samples) with **LPS** geometry, so

    data_nifti = array.transpose(2, 1, 0)          # (x, y, z)
    affine_RAS = diag(-1, -1, 1, 1) @ volume.affine()   # volume.affine() is LPS, (x, y, z) order

Written files carry that affine as both sform and qform (code 1, scanner coordinates).
Masks read onto an image grid are resampled (nearest neighbour, SimpleITK, LPS) when the
NIfTI grid differs from the image's; no overlap at all is refused.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .errors import EmptyRoiError, GeometryError, ImageTooLargeError, ImagingError, RoiNotFoundError, UnsupportedFileError
from .errors import check_voxels
from .mask_common import RoiMask
from .volume import Volume, to_sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def nifti_affine(image: Volume) -> np.ndarray:
    """RAS affine of ``image`` for NIfTI data in (x, y, z) index order."""
    return LPS_TO_RAS @ image.affine()


def _load(path):
    path = Path(path)
    if not path.is_file():
        raise ImagingError(f"{path}: file not found (expected a NIfTI file)")
    try:
        img = nib.load(str(path))  # the header only: data stay on disk until asked for
    except Exception as exc:
        raise UnsupportedFileError(f"{path.name}: not a readable NIfTI file ({type(exc).__name__})") from None
    _check_declared_size(path, img)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise UnsupportedFileError(f"{path.name}: not a readable NIfTI file ({type(exc).__name__})") from None
    return path, img, data


def _check_declared_size(path: Path, img) -> None:
    """Refuse, before allocating anything, a header that claims more voxels than we read or, for an
    uncompressed file, more data than the file holds (a .nii.gz cannot say: its decompression is
    bounded by the voxel limit, and a short stream fails in nibabel)."""
    header = img.header
    n = check_voxels(header.get_data_shape(), path.name, "NIfTI header")
    try:
        needed = int(header.get_data_offset()) + n * header.get_data_dtype().itemsize
    except Exception as exc:
        raise UnsupportedFileError(f"{path.name}: not a readable NIfTI file ({type(exc).__name__})") from None
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < needed:
            raise ImageTooLargeError(f"{path.name}: the NIfTI header declares {needed:,} bytes of image data but the "
                                     f"file holds {size:,}; the file is truncated or its header is wrong")


def _geometry(img, name: str) -> dict:
    lps = LPS_TO_RAS @ np.asarray(img.affine, dtype=float)
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(f"{name}: NIfTI affine has a zero-length axis")
    direction = m / spacing
    if np.max(np.abs(direction.T @ direction - np.eye(3))) > 1e-3:
        raise GeometryError(f"{name}: NIfTI affine is sheared (axes not orthogonal); resample it first")
    return dict(origin=lps[:3, 3], spacing=spacing, direction=direction)


def _to_zyx(data: np.ndarray, name: str) -> np.ndarray:
    """(x, y[, z[, k]]) -> (z, y, x) or (k, z, y, x)."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, k): vector intent
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        return data.transpose(2, 1, 0)
    if data.ndim == 4:
        return data.transpose(3, 2, 1, 0)
    raise UnsupportedFileError(f"{name}: {data.ndim}-D NIfTI data is not supported (3-D or 4-D expected)")


def read_nifti(path) -> Volume:
    """A 3-D NIfTI image -> Volume (float32, LPS geometry). A 4-D file must hold one volume.
    ``modality`` is "CT" when values go below -200 (taken as HU), else "OT"."""
    path, img, data = _load(path)
    arr = _to_zyx(data, path.name)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise UnsupportedFileError(f"{path.name}: holds {arr.shape[0]} volumes; give a single 3-D image")
        arr = arr[0]
    arr = arr.astype(np.float32)  # nibabel has applied scl_slope / scl_inter already
    # NIfTI has no modality; CT is the only common one with values far below zero (air = -1000 HU)
    ct = arr.size > 0 and float(arr.min()) < -200
    volume = Volume(array=arr, modality="CT" if ct else "OT", source=path.name, **_geometry(img, path.name))
    if ct:
        volume.notes.append("NIfTI has no modality: treated as CT in HU because values go below -200")
    return volume


def _resample(values: np.ndarray, src: Volume, image: Volume, nearest: bool, name: str) -> np.ndarray:
    """Resample (z, y, x) ``values`` on ``src``'s grid onto ``image``'s grid (LPS, identity)."""
    ref = sitk.Image([int(s) for s in image.shape[::-1]], sitk.sitkUInt8)
    ref.SetOrigin(tuple(image.origin)), ref.SetSpacing(tuple(image.spacing))
    ref.SetDirection(tuple(image.direction.ravel()))
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    cover = sitk.GetArrayFromImage(sitk.Resample(to_sitk(src, np.ones(src.shape, np.uint8)), ref,
                                                 sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    if not cover.any():
        def lo_hi(v):
            return np.round(np.sort(v.index_to_world(np.array([[0, 0, 0], np.array(v.shape) - 1])), axis=0), 1)

        raise GeometryError(f"{name} does not overlap the image: it spans {lo_hi(src).tolist()} mm (LPS corners), "
                            f"the image {lo_hi(image).tolist()}; wrong file or coordinate system")
    dtype = values.dtype if nearest else np.float32
    out = sitk.Resample(to_sitk(src, values.astype(np.float32 if not nearest else values.dtype)), ref,
                        sitk.Transform(), interp, 0)
    return sitk.GetArrayFromImage(out).astype(dtype)


def read_nifti_array(path, image: Volume | None = None, *, nearest: bool = True) -> np.ndarray:
    """NIfTI data in our order: (z, y, x) or (k, z, y, x). With ``image``, on its grid:
    passed through when the grids match, otherwise resampled (nearest neighbour, or
    linear with ``nearest=False``); GeometryError when the two do not overlap."""
    path, img, data = _load(path)
    arr = _to_zyx(np.asarray(data), path.name)
    if image is None:
        return arr
    src = Volume(array=np.zeros(arr.shape[-3:], np.uint8), source=path.name, **_geometry(img, path.name))
    if src.same_grid(image):
        return arr
    if arr.ndim == 3:
        return _resample(arr, src, image, nearest, path.name)
    return np.stack([_resample(a, src, image, nearest, path.name) for a in arr])


def read_nifti_mask(path, image: Volume, label: "int | str | None" = None) -> RoiMask:
    """A NIfTI mask on ``image``'s grid: ``label`` selects a label value; None means any
    non-zero voxel (float data with fractional values: >= 0.5)."""
    name = Path(path).name
    arr = read_nifti_array(path, image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UnsupportedFileError(f"{name}: a mask must be 3-D, got {arr.ndim}-D data")
    values = [v for v in np.unique(arr) if v != 0]
    if label is None:
        fractional = arr.dtype.kind == "f" and np.any(arr != np.round(arr))
        mask = arr >= 0.5 if fractional else arr != 0
    else:
        try:
            wanted = float(label)
        except (TypeError, ValueError):
            raise RoiNotFoundError(f"{name}: NIfTI masks have no ROI names, give a label value; labels present: "
                                   f"{', '.join(f'{v:g}' for v in values[:20]) or 'none'}") from None
        mask = arr == wanted
        if not mask.any() and wanted not in values:
            raise RoiNotFoundError(f"{name}: no label {label} on the image; labels present: "
                                   f"{', '.join(f'{v:g}' for v in values[:20]) or 'none'}")
    if not mask.any():
        raise EmptyRoiError(f"{name}: the mask is empty on the given image")
    return RoiMask(mask=mask, name=str(label if label is not None else "mask"), number=int(float(label or 1)))


def write_nifti(array: np.ndarray, image: Volume, path) -> Path:
    """Write (z, y, x) or (k, z, y, x) data on ``image``'s grid as NIfTI (RAS affine from
    the LPS geometry, see module docstring). bool -> uint8, float64 -> float32."""
    array = np.asarray(array)
    if array.shape[-3:] != image.shape or array.ndim not in (3, 4):
        raise GeometryError(f"write_nifti: array shape {array.shape} does not fit image {image.shape} (z, y, x)")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    affine = nifti_affine(image)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
