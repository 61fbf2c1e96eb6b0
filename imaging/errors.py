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
