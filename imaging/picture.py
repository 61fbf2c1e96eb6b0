"""2-D pictures (PNG/JPEG endoscopy frames and their masks).

A picture becomes a Volume with ``z = 1``: RGB -> ``(1, H, W, 3)`` uint8, grey ->
``(1, H, W)`` (uint8 or uint16). There is no patient geometry: origin 0, 1 mm pixels,
identity direction, so ``(row, col)`` pixel indices equal world ``(y, x)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import EmptyRoiError, GeometryError, ImageTooLargeError, ImagingError, UnsupportedFileError
from .errors import MAX_PICTURE_PIXELS
from .mask_common import RoiMask
from .volume import Volume

Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS  # (PIL only warns up to twice that: _open refuses it first)


def _open(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImagingError(f"{path}: file not found (expected a PNG or JPEG picture)")
    try:
        img = Image.open(path)  # the header only
        if img.size[0] * img.size[1] > MAX_PICTURE_PIXELS:
            raise ImageTooLargeError(f"{path.name}: the picture declares {img.size[0]} x {img.size[1]} pixels, more "
                                     f"than the {MAX_PICTURE_PIXELS / 1e6:.0f} million accepted")
        img.load()
        return img
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise UnsupportedFileError(f"{path.name}: not a readable PNG/JPEG picture ({type(exc).__name__})") from None


def read_picture(path) -> Volume:
    """PNG/JPEG -> Volume: RGB (1, H, W, 3) uint8 (alpha dropped, palettes expanded) or
    grey (1, H, W)."""
    img = _open(path)
    if img.mode in ("L", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img)
        modality = "OT"
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        modality = "XC"  # external-camera photography (endoscopy frames)
    return Volume(array=arr[None], modality=modality, source=Path(path).name)


def read_picture_mask(path, image: Volume) -> RoiMask:
    """A PNG/JPEG mask for a 2-D image -> (1, H, W) bool. Values > 127 are foreground
    (0/1 masks: > 0), so JPEG compression noise does not leak in."""
    name = Path(path).name
    arr = np.asarray(_open(path).convert("L"))
    if (1,) + arr.shape != image.shape:
        raise GeometryError(f"{name}: mask is {arr.shape[1]}x{arr.shape[0]} pixels (WxH) but the image is "
                            f"{image.shape[2]}x{image.shape[1]}")
    mask = arr > (0 if arr.max() <= 1 else 127)
    if not mask.any():
        raise EmptyRoiError(f"{name}: the mask is empty")
    return RoiMask(mask=mask[None], name="mask", number=1)


def write_picture_mask(mask: np.ndarray, path) -> Path:
    """Write a (1, H, W) or (H, W) mask as an 8-bit PNG with values 0/255."""
    mask = np.asarray(mask)
    mask = mask[0] if mask.ndim == 3 else mask
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8)).save(path)
    return path
