"""CT windowing and the model's input picture.

``window`` maps Hounsfield units linearly from ``[lo, hi]`` to ``[0, 255]`` (clipped).
``to_model_input`` returns the ``(H, W, 3)`` uint8 picture of slice ``k`` (array order
``(z, y, x)``: rows = y, columns = x, no flips).
"""
from __future__ import annotations

import numpy as np

from .errors import ImagingError
from .volume import Volume

PRESETS: dict[str, tuple[float, float]] = {
    "default": (-910.0, 590.0),       # the P2SAM paper's CT window
    "lung": (-1350.0, 150.0),         # W 1500 / L -600
    "soft_tissue": (-160.0, 240.0),   # W 400 / L 40
    "bone": (-450.0, 1050.0),         # W 1500 / L 300
}

_HU = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,2})?"
# What parse_window accepts, as a regular expression for a schema (the API's OpenAPI): a preset name
# or 'lo,hi' in HU. hi > lo is not expressible here: parse_window still checks it.
WINDOW_PATTERN = rf"^\s*(?:{'|'.join(PRESETS)})\s*$|^\s*{_HU}\s*,\s*{_HU}\s*$"


def window_bounds(preset: "str | tuple[float, float]") -> tuple[float, float]:
    """``(lo, hi)`` HU of a preset name or a custom pair."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ImagingError(f"unknown window preset '{preset}'; choose one of {', '.join(PRESETS)} or (lo, hi) HU")
        return PRESETS[preset]
    try:
        lo, hi = (float(v) for v in preset)
    except (TypeError, ValueError):
        raise ImagingError(f"window must be a preset name or (lo, hi) HU, got {preset!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ImagingError(f"window (lo, hi) must be finite with hi > lo, got ({lo}, {hi})")
    return lo, hi


def parse_window(text: str) -> "str | tuple[float, float]":
    """The one parser of a window as text (API field, ``--window``, P2SAM_WINDOW): a preset name
    (``default``, ``lung``, ...) or ``'lo,hi'`` in HU -> the preset name or ``(lo, hi)``, what
    :func:`window` takes. ImagingError, with a one-line reason, for anything else."""
    value = str(text).strip()
    if "," not in value:
        window_bounds(value)  # a known preset, else ImagingError naming them
        return value
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ImagingError(f"window: a preset ({', '.join(PRESETS)}) or 'lo,hi' in HU, got {value[:40]!r}") from None
    return window_bounds((lo, hi))  # finite, hi > lo


def window(hu: np.ndarray, preset: "str | tuple[float, float]" = "default") -> np.ndarray:
    """HU array (any shape) -> uint8 of the same shape: ``lo`` -> 0, ``hi`` -> 255."""
    lo, hi = window_bounds(preset)
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_model_input(volume: Volume, k: int = 0, preset: "str | tuple[float, float]" = "default") -> np.ndarray:
    """Slice ``k`` as ``(H, W, 3)`` uint8: RGB passes through; CT is windowed with
    ``preset`` and repeated to 3 channels; other grey uint8 pictures are repeated as is;
    other grey data (MR, 16-bit) is scaled from its 0.5-99.5 percentiles."""
    if not 0 <= k < volume.shape[0]:
        raise ImagingError(f"slice index {k} out of range 0..{volume.shape[0] - 1}")
    plane = volume.array[k]
    if volume.is_rgb:
        return np.ascontiguousarray(plane, dtype=np.uint8)
    if volume.modality == "CT":
        grey = window(plane, preset)
    elif plane.dtype == np.uint8:
        grey = plane
    else:
        lo, hi = np.percentile(plane, [0.5, 99.5])
        grey = window(plane, (lo, hi if hi > lo else lo + 1))
    return np.repeat(grey[:, :, None], 3, axis=2)
