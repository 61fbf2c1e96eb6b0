"""How large an image we agree to read, checked from headers before a byte of pixel data is
allocated (a 1 KB NIfTI header may claim 100 GB: it must cost nothing to refuse).

An image becomes a float32 array (4 bytes a voxel) and usually a few same-sized masks, so
``MAX_VOXELS`` (~192 M voxels, e.g. 512 x 512 x 768 slices: 0.8 GB as float32) bounds what one
reader may hold; ``MAX_PICTURE_PIXELS`` does so for PNG/JPEG frames.
"""
from __future__ import annotations

from .errors import ImageTooLargeError

MAX_VOXELS = 192 * 1024 * 1024
MAX_PICTURE_PIXELS = 100_000_000


def check_voxels(shape, source: str, what: str = "image") -> int:
    """The number of values in ``shape``; ImageTooLargeError beyond MAX_VOXELS."""
    n = 1
    for s in shape:
        n *= max(int(s), 0)
    if n > MAX_VOXELS:
        dims = " x ".join(str(int(s)) for s in shape)
        raise ImageTooLargeError(f"{source}: the {what} declares {dims} = {n / 1e6:,.0f} million values, more than the "
                                 f"{MAX_VOXELS / 1e6:,.0f} million accepted; crop or resample it")
    return n
