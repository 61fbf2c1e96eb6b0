"""What a segmentation job is: the one request shape shared by the CLI, the API and the workers.

Paths are local files or folders (the service turns upload ids into paths under its data
directory before a job runs). Only small JSON travels through the broker; images stay on disk.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

OutputName = Literal["rtstruct", "seg", "nifti", "samples", "preview"]
ALL_OUTPUTS: tuple[OutputName, ...] = ("rtstruct", "seg", "nifti", "samples", "preview")
Method = Literal["p2sam", "fixed", "persam", "direct", "box"]
Sampler = Literal["prompt_noise", "retrieval", "latent", "none"]
DEFAULT_SAMPLER: Sampler = "prompt_noise"  # the one default: JobSpec, the API schema, `p2sam segment --sampler`

def check_window(value: str | None) -> str | None:
    """A window text as a field validator checks it: imaging.parse_window's complaint as a ValueError."""
    if value is None:
        return None
    from imaging.errors import ImagingError

    try:
        window_arg(value)
    except ImagingError as exc:
        raise ValueError(str(exc).removeprefix("window: ")) from None
    return value


# A CT window as text ('default', 'lung', ... or 'lo,hi' HU), checked by the one parser (JobSpec, the API)
WindowText = Annotated[str | None, AfterValidator(check_window)]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TargetSpec(BaseModel):
    """One follow-up image (DICOM series folder/zip/files, NIfTI, PNG/JPEG)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = Field(None, description="Output folder name (default: from the path)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("target name: 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.' or '-'")
        return v


class JobSpec(BaseModel):
    """A prior (image + contour) and follow-ups to segment the same structure on."""

    model_config = ConfigDict(extra="forbid")
    prior_image: str
    prior_mask: str = Field(description="RTSTRUCT, DICOM SEG, NIfTI or PNG mask of the prior")
    roi: str | None = Field(None, description="RTSTRUCT ROI name/number, SEG segment, or NIfTI label; default: the only one")
    rois: list[str] | Literal["all"] | None = Field(
        None, description="several structures in one job (names/numbers, or 'all': every ROI with contours on the prior); "
                          "instead of roi")
    targets: list[TargetSpec] = Field(min_length=1, max_length=64)
    outputs: list[OutputName] = Field(default_factory=lambda: list(ALL_OUTPUTS))
    model: str = Field("auto", description="Model name (see `p2sam models`), or auto (by image type)")
    method: Method = "p2sam"
    n_samples: int | None = Field(None, ge=0, le=64, description="Uncertainty samples per target (default: P2SAM_N_SAMPLES)")
    sampler: Sampler = DEFAULT_SAMPLER
    window: WindowText = Field(None, description="CT window preset or 'lo,hi' HU (default: P2SAM_WINDOW)")
    slice_margin: int | None = Field(None, ge=0, le=10)
    roi_name_out: str | None = Field(None, max_length=64, description="ROI name in the output RTSTRUCT (default: the prior's)")

    @field_validator("roi_name_out")
    @classmethod
    def _roi_name_out(cls, v: str | None) -> str | None:
        from imaging.dicom_common import check_lo

        return None if v is None else check_lo(v, "roi_name_out")

    @field_validator("rois")
    @classmethod
    def _rois(cls, v: list[str] | str | None) -> list[str] | str | None:
        return check_rois(v)

    @model_validator(mode="after")
    def _one_roi_form(self) -> JobSpec:
        if self.rois is not None and self.roi is not None:
            raise ValueError("give either roi (one structure) or rois (several), not both")
        if self.rois is not None and self.roi_name_out is not None:
            raise ValueError("roi_name_out renames the one ROI of a roi job; a rois job keeps the prior's names")
        return self


MAX_ROIS = 64


def check_rois(v: list[str] | str | None) -> list[str] | str | None:
    """``rois``: 'all', or 1-64 distinct names/numbers of 1-64 characters."""
    if v is None or v == "all":
        return v
    if not 1 <= len(v) <= MAX_ROIS:
        raise ValueError(f"rois: 1 to {MAX_ROIS} ROI names/numbers, or 'all'")
    for name in v:
        if not 1 <= len(name) <= 64:
            raise ValueError("rois: each ROI name/number has 1 to 64 characters")
    if len({n.strip().lower() for n in v}) != len(v):
        raise ValueError("rois: an ROI is named twice")
    return v


def window_arg(value: str) -> str | tuple[float, float]:
    """'default' / 'lung' / ... or 'lo,hi' -> what imaging.window takes (imaging.parse_window)."""
    from imaging.window import parse_window

    return parse_window(value)

