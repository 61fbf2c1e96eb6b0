"""One exception family for every bad input the imaging layer sees.

Every message is one line a person can act on: it names the file (or input) and says
what was expected. The service maps :class:`ImagingError` to HTTP 422; nothing else
from this package should reach a user.
"""
from __future__ import annotations


class ImagingError(ValueError):
    """Base class: an input file or argument the imaging layer cannot use."""

    def __init__(self, message: str):
        # Keep it one line: multi-line messages break logs and HTTP error bodies.
        super().__init__(" ".join(str(message).split()))


class UnsupportedFileError(ImagingError):
    """The file is not DICOM / NIfTI / PNG / JPEG, or a kind of those we do not read."""


class UnsafeArchiveError(ImagingError):
    """A zip archive with path-traversal names, links, or an unreasonable size."""


class SeriesSelectionError(ImagingError):
    """No image series, or several and none chosen (the message lists them)."""


class GeometryError(ImagingError):
    """Inconsistent geometry: gantry tilt, uneven spacing, mixed orientation, no overlap."""


class MissingReferenceError(ImagingError):
    """An RTSTRUCT/SEG points at image instances that are not in the given series."""


class FrameOfReferenceError(ImagingError):
    """A mask lives in another DICOM Frame of Reference than the image."""


class RoiNotFoundError(ImagingError):
    """The requested ROI / segment / label does not exist (the message lists those that do)."""


class EmptyRoiError(ImagingError):
    """The requested ROI exists but has nothing on the given image."""


class ImageTooLargeError(ImagingError):
    """The header declares more voxels than we read, or more data than the file holds."""


class PatientMismatchError(ImagingError):
    """A mask (RTSTRUCT/SEG) belongs to another patient than the image (PatientID differs)."""


# --- size limits (ImageTooLargeError): how large an image we agree to read, checked from headers before a
# byte of pixel data is allocated (a 1 KB NIfTI header may claim 100 GB: it must cost nothing to refuse).
#
# An image becomes a float32 array (4 bytes a voxel) and usually a few same-sized masks, so
# ``MAX_VOXELS`` (~192 M voxels, e.g. 512 x 512 x 768 slices: 0.8 GB as float32) bounds what one
# reader may hold; ``MAX_PICTURE_PIXELS`` does so for PNG/JPEG frames.
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
