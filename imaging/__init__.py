"""Imaging I/O for the P2SAM service: geometry and files, never the model, HTTP or Celery.

Conventions everywhere: arrays are ``(z, y, x)`` = (slice, row, col); world coordinates
are DICOM patient coordinates in LPS mm; NIfTI (RAS) is converted explicitly in
``imaging.nifti``. Every bad input raises :class:`ImagingError` with a one-line message.
"""
from .dicom_read import SeriesSummary
from .dicom_write import write_dicom_series
from .errors import (EmptyRoiError, FrameOfReferenceError, GeometryError, ImageTooLargeError, ImagingError, MissingReferenceError,
                     PatientMismatchError, RoiNotFoundError, SeriesSelectionError, UnsafeArchiveError, UnsupportedFileError)
from .mask_common import RoiMask
from .nifti import read_nifti_array, write_nifti
from .picture import write_picture_mask
from .raster import mask_to_rings, rings_to_mask
from .readers import list_rois, list_series, read_image, read_mask, read_mask_detail, roi_catalog
from .registration import PictureRegistration, Registration, register_pictures, register_rigid
from .rtstruct import DEFAULT_MIN_ISLAND_AREA_MM2, RoiSpec, write_rtstruct, write_rtstruct_rois
from .seg import SegmentSpec, write_seg, write_seg_segments
from .volume import DicomInfo, Volume
from .window import PRESETS, parse_window, to_model_input, window

__all__ = [
    "Volume", "DicomInfo", "SeriesSummary", "RoiMask", "RoiSpec", "Registration",
    "read_image", "list_series", "read_mask", "read_mask_detail", "list_rois", "roi_catalog",
    "register_rigid", "register_pictures", "PictureRegistration", "window", "parse_window", "to_model_input", "PRESETS",
    "write_rtstruct", "write_rtstruct_rois", "write_seg", "write_seg_segments", "SegmentSpec", "write_nifti", "read_nifti_array",
    "write_dicom_series", "write_picture_mask", "mask_to_rings", "rings_to_mask", "DEFAULT_MIN_ISLAND_AREA_MM2",
    "ImagingError", "UnsupportedFileError", "UnsafeArchiveError", "SeriesSelectionError", "GeometryError",
    "MissingReferenceError", "FrameOfReferenceError", "PatientMismatchError", "RoiNotFoundError", "EmptyRoiError",
    "ImageTooLargeError",
]
