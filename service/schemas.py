"""Request and response bodies of the HTTP API (separate from the stored records)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imaging.window import PRESETS, WINDOW_PATTERN
from p2sam.records import JobRecord, Review, TargetSummary
from p2sam.spec import ALL_OUTPUTS, DEFAULT_SAMPLER, Method, OutputName, Sampler, WindowText, check_rois, MAX_ROIS

from .problems import ProblemModel

Id = Field(pattern=r"^[0-9a-f]{32}$", description="an id this service issued (32 hex digits)")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_UID = r"^[0-9]+(\.[0-9]+)*$"
_LO_CHAR = r"[^\\\x00-\x1f\x7f-\x9f]"  # imaging.dicom_common.check_lo as a schema pattern: no backslash or control
_LO = rf"^{_LO_CHAR}*[^\s\\\x00-\x1f\x7f-\x9f]{_LO_CHAR}*$"  # character, not only spaces


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


# --- uploads
class SeriesOut(BaseModel):
    item: str
    series_instance_uid: str
    modality: str
    n_slices: int
    rows: int
    columns: int
    description: str = ""
    frame_of_reference_uid: str = ""
    study_instance_uid: str = ""


class MaskOut(BaseModel):
    item: str
    kind: Literal["rtstruct", "seg"]
    rois: list[str]


class ImageOut(BaseModel):
    item: str
    kind: str = Field(description="nifti, png or jpeg")
    shape: list[int] = Field(description="(z, y, x)")
    rgb: bool


class UploadOut(BaseModel):
    """What an upload holds. Refer to it from a job by ``id`` (+ series UID / mask item / ROI)."""

    id: str
    created_at: datetime
    size_bytes: int
    series: list[SeriesOut]
    masks: list[MaskOut]
    images: list[ImageOut]
    notes: list[str]

    @classmethod
    def of(cls, m: dict[str, Any]) -> "UploadOut":
        return cls(id=m["id"], created_at=ts(m["created_at"]), size_bytes=m["size_bytes"], notes=m["notes"],
                   series=[SeriesOut.model_validate(s) for s in _strip(m["series"])],
                   masks=[MaskOut.model_validate(x) for x in _strip(m["masks"])],
                   images=[ImageOut.model_validate(x) for x in _strip(m["images"])])


def _strip(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in x.items() if k != "path"} for x in items]


# --- jobs
def _given(*keys: str) -> list[dict]:
    """JSON-schema fragments 'this field is present and not null' (the models' validators check
    ``is not None``), for the schema to say which fields go together."""
    return [{"required": [k], "properties": {k: {"type": ["string", "array"]}}} for k in keys]


_UPLOAD_OR_PACS = {  # PriorIn's _one_source and _one_roi_form, as the OpenAPI schema says them
    "anyOf": [
        {"allOf": _given("upload_id"), "not": {"anyOf": _given("peer", "study_uid", "mask_series_uid")}},
        {"anyOf": _given("study_uid", "series_uid"), "not": {"anyOf": _given("upload_id", "mask_upload_id", "mask_item")},
         "properties": {"series_uid": {"pattern": _UID}}},
    ],
    "not": {"allOf": _given("roi", "rois")},
}


class PriorIn(BaseModel):
    """The prior: an image and its contour, either uploaded (``upload_id``: e.g. a zip of the series
    and its RTSTRUCT, or a separate upload of an RTSTRUCT / SEG / NIfTI / PNG mask) or on a PACS
    (``peer`` + ``study_uid`` and/or ``series_uid``: the series and the study's RTSTRUCT / SEG are
    pulled before the job runs; deploy/README-dicom.md)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_UPLOAD_OR_PACS)
    upload_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="an upload holding the prior's image (or give peer + UIDs)")
    series_uid: str | None = Field(None, max_length=64, description="which DICOM series, when the upload (or the PACS study) holds several")
    mask_upload_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="upload holding the contour (default: upload_id)")
    mask_item: str | None = Field(None, max_length=16, description="which contour object of that upload (m1, f1, ...), when several")
    roi: str | None = Field(None, min_length=1, max_length=64, description="RTSTRUCT ROI name/number, SEG segment, NIfTI label; default: the only one")
    peer: str | None = Field(None, pattern=_NAME, description="PACS to pull from (a name in P2SAM_DICOM_PEERS; default P2SAM_DICOM_PULL_SOURCE)")
    study_uid: str | None = Field(None, max_length=64, pattern=_UID, description="PACS: the prior's study (its RTSTRUCT / SEG is pulled with the series)")
    mask_series_uid: str | None = Field(None, max_length=64, pattern=_UID, description="PACS: the RTSTRUCT / SEG series, when the study holds several")

    @model_validator(mode="after")
    def _one_source(self) -> "PriorIn":
        return _one_source(self, "prior", ("mask_upload_id", "mask_item"), ("mask_series_uid",))

    @property
    def pulled(self) -> bool:
        return self.upload_id is None
    rois: list[str] | Literal["all"] | None = Field(
        None, json_schema_extra={"anyOf": [  # check_rois, as the schema says it (names are also distinct ignoring case)
            {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64}, "minItems": 1,  # + ignoring case
             "maxItems": MAX_ROIS, "uniqueItems": True}, {"const": "all"}, {"type": "null"}]},
        description="several structures in one job instead of roi: ROI names/numbers, or 'all' (every ROI with "
                          "contours on the prior); each target gets ONE RTSTRUCT and ONE multi-segment SEG with all of them")

    @field_validator("rois")
    @classmethod
    def _rois(cls, v):
        return check_rois(v)

    @model_validator(mode="after")
    def _one_roi_form(self) -> "PriorIn":
        if self.rois is not None and self.roi is not None:
            raise ValueError("give either roi (one structure) or rois (several), not both")
        return self


class TargetIn(BaseModel):
    """A follow-up image to segment the prior's structure on: uploaded (``upload_id``) or on a PACS
    (``peer`` + ``series_uid``, ``study_uid`` optional)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [  # _one_source, as the schema says it
        {"allOf": _given("upload_id"), "not": {"anyOf": _given("peer", "study_uid")}},
        {"allOf": _given("series_uid"), "not": {"anyOf": _given("upload_id")},
         "properties": {"series_uid": {"pattern": _UID}}}]})
    upload_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="an upload holding the image (or give peer + series_uid)")
    series_uid: str | None = Field(None, max_length=64)
    name: str | None = Field(None, pattern=_NAME, description="result folder name (default target1, target2, ...)")
    peer: str | None = Field(None, pattern=_NAME, description="PACS to pull from (default P2SAM_DICOM_PULL_SOURCE)")
    study_uid: str | None = Field(None, max_length=64, pattern=_UID, description="PACS: the series' study (found by QIDO / C-FIND when absent)")

    @model_validator(mode="after")
    def _one_source(self) -> "TargetIn":
        if self.upload_id is None and not self.series_uid:
            raise ValueError("a target pulled from a PACS needs series_uid")
        return _one_source(self, "target", (), ())

    @property
    def pulled(self) -> bool:
        return self.upload_id is None


_PEER_NAMES = {"items": {"type": "string", "pattern": _NAME}}  # _peer_names, as the schema says it


def _peer_names(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    bad = [d for d in v if not re.fullmatch(_NAME, d)]
    if bad:
        raise ValueError(f"destinations: peer names are letters, digits, '.', '_', '-' ({bad[0]!r})")
    return list(dict.fromkeys(v))


def _one_source(ref, what: str, upload_only: tuple[str, ...], pacs_only: tuple[str, ...]):
    """An input is an upload (upload_id) or a PACS reference (peer / UIDs), never both."""
    if ref.upload_id is not None:
        mixed = [k for k in ("peer", "study_uid", *pacs_only) if getattr(ref, k) is not None]
        if mixed:
            raise ValueError(f"{what}: upload_id, or peer + study_uid / series_uid (a PACS), not both ({', '.join(mixed)})")
        return ref
    mixed = [k for k in upload_only if getattr(ref, k) is not None]
    if mixed:
        raise ValueError(f"{what}: {', '.join(mixed)} refer to uploads; a prior from a PACS names mask_series_uid")
    if not (ref.study_uid or ref.series_uid):
        raise ValueError(f"{what}: give upload_id, or study_uid / series_uid of a PACS")
    if ref.series_uid is not None and not re.fullmatch(_UID, ref.series_uid):
        raise ValueError(f"{what}.series_uid: a DICOM UID (digits and dots)")
    return ref


class JobSettingsIn(BaseModel):
    """How to segment: shared by a job and a batch's ``defaults``."""

    model_config = ConfigDict(extra="forbid")
    outputs: list[OutputName] = Field(default_factory=lambda: list(ALL_OUTPUTS), min_length=1)
    n_samples: int | None = Field(None, ge=0, le=64, description="uncertainty samples per target (default P2SAM_N_SAMPLES)")
    model: str = Field("auto", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="see GET /v1/models; auto: by image type")
    method: Method = "p2sam"
    sampler: Sampler = DEFAULT_SAMPLER
    window: WindowText = Field(None, max_length=32, description=f"CT window preset ({', '.join(PRESETS)}) or 'lo,hi' HU",
                               json_schema_extra={"pattern": WINDOW_PATTERN})  # validated by imaging.parse_window
    slice_margin: int | None = Field(None, ge=0, le=10)
    roi_name_out: str | None = Field(None, min_length=1, max_length=64, json_schema_extra={"pattern": _LO},
                                     description="ROI name in the output RTSTRUCT/SEG: a DICOM LO value (at most 64 "
                                                 "characters, no backslash, no control characters); non-ASCII is "
                                                 "written as UTF-8 (SpecificCharacterSet ISO_IR 192)")

    @field_validator("roi_name_out")
    @classmethod
    def _roi_name_out(cls, v: str | None) -> str | None:
        from imaging.dicom_common import check_lo

        return None if v is None else check_lo(v, "roi_name_out")


class JobIn(JobSettingsIn):
    prior: PriorIn
    targets: list[TargetIn] = Field(min_length=1, max_length=64, description="the follow-ups; names unique "
                                   "(a default name target<N> counts)")
    queue: Literal["interactive", "batch"] = "interactive"
    destinations: list[str] | None = Field(None, max_length=16, json_schema_extra=_PEER_NAMES, description="DICOM peers (names in P2SAM_DICOM_PEERS) the "
                                           "RTSTRUCT and SEGs are sent to once the job succeeds; absent: P2SAM_DICOM_DESTINATIONS; "
                                           "[]: none")

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, v: list[str] | None) -> list[str] | None:
        return _peer_names(v)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, v: list[TargetIn]) -> list[TargetIn]:
        names = [t.name for t in v if t.name]
        if len(names) != len(set(names)):
            raise ValueError("target names must be unique")
        return v


class ModelRef(BaseModel):
    requested: str
    name: str | None = None
    sha256: str | None = None
    backbone: str | None = None


class ReviewIn(BaseModel):
    """A clinician's decision on one target's result."""

    model_config = ConfigDict(extra="forbid")
    target: str = Field(pattern=_NAME, description="the target (as in the job's targets)")
    decision: Literal["accepted", "rejected"]
    comment: str | None = Field(None, max_length=2000, description="why (required to reject)")


class ReviewOut(BaseModel):
    target: str
    decision: Literal["accepted", "rejected"]
    comment: str | None
    by: str = Field(description="the name of the API key that reviewed")
    at: datetime

    @classmethod
    def of(cls, target: str, r: Review) -> "ReviewOut":
        return cls(target=target, decision=r.decision, comment=r.comment, by=r.by, at=ts(r.at))


class DeliveryOut(BaseModel):
    """One result file (artifact) sent to one DICOM destination (dicomnet.outbox)."""

    id: str
    target: str
    artifact: str = Field(description="rtstruct.dcm, seg.dcm or probability_seg.dcm")
    destination: str = Field(description="the peer's name (P2SAM_DICOM_PEERS)")
    protocol: str = Field(description="c-store or stow-rs")
    state: Literal["pending", "sending", "delivered", "refused", "failed"]
    attempts: int
    last_error: str | None
    message: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> "DeliveryOut":
        return cls(**{k: d.get(k) for k in ("id", "target", "artifact", "destination", "protocol", "state", "attempts",
                                              "last_error", "message")},
                   next_attempt_at=ts(d.get("next_attempt_at")), delivered_at=ts(d.get("delivered_at")))


class DeliveriesIn(BaseModel):
    """Send a succeeded job's RTSTRUCT + SEGs (again): to new destinations, or re-send refused /
    failed deliveries (``again``: delivered ones too)."""

    model_config = ConfigDict(extra="forbid")
    destinations: list[str] | None = Field(None, min_length=1, max_length=16, json_schema_extra=_PEER_NAMES, description="peer names (P2SAM_DICOM_PEERS); "
                                           "absent: every destination the job has")
    again: bool = Field(False, description="also re-send what was delivered already (same SOP Instance UIDs: a PACS keeps one copy)")

    @field_validator("destinations")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        return _peer_names(v)


class DeliveriesOut(BaseModel):
    job_id: str
    requeued: list[str] = Field(description="ids of the deliveries (re)queued by this request")
    deliveries: list[DeliveryOut]


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str
    progress: float = Field(ge=0, le=1)
    message: str
    queue: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model: ModelRef
    targets: list[str]
    warnings: list[str]
    error: ProblemModel | None = Field(description="why it failed (RFC 7807)")
    attempts: int
    cancel_requested: bool
    purged: bool
    reviews: dict[str, ReviewOut] = Field(default_factory=dict, description="per target: the latest review")
    destinations: list[str] = Field(default_factory=list, description="DICOM peers its results are sent to")
    deliveries: list[DeliveryOut] = Field(default_factory=list, description="per artifact x destination: state, attempts, "
                                          "last error (updated by the DICOM sender)")
    links: dict[str, str]

    @classmethod
    def of(cls, r: JobRecord) -> "JobOut":
        links = {"self": f"/v1/jobs/{r.id}"}
        if r.state == "succeeded" and not r.purged_at:
            links["results"] = f"/v1/jobs/{r.id}/results"
        return cls(id=r.id, state=r.state, stage=r.stage, progress=r.progress, message=r.message,
                   queue=r.queue, created_at=ts(r.created_at), started_at=ts(r.started_at),
                   finished_at=ts(r.finished_at), model=ModelRef.model_validate(r.model.model_dump()),
                   targets=r.targets, warnings=r.warnings, error=r.error.model_dump(exclude_none=True) if r.error else None,
                   attempts=r.attempts, cancel_requested=r.cancel_requested,
                   purged=r.purged_at is not None, links=links,
                   reviews={t: ReviewOut.of(t, v) for t, v in r.reviews.items()},
                   destinations=r.dicom.destinations if r.dicom else [],
                   deliveries=[DeliveryOut.of(d) for d in r.deliveries])


class JobListOut(BaseModel):
    jobs: list[JobOut] = Field(description="newest first")
    total: int = Field(description="jobs matching the filter (before limit/offset)")
    limit: int
    offset: int


class ArtifactOut(BaseModel):
    name: str
    kind: str
    size: int
    sha256: str
    media_type: str
    url: str


class StructureResultOut(BaseModel):
    """One structure of a multi-ROI job on one target (its files are in the target's artifacts,
    named <structure>_mask.nii.gz, ...; result.json has its slices and QC in full)."""

    name: str
    found: bool | None
    volume_ml: float | None
    area_mm2: float | None = None
    review: bool | None
    flagged_slices: list[int]


class TargetResultOut(BaseModel):
    target: str
    found: bool | None
    volume_ml: float | None
    area_mm2: float | None = Field(None, description="2-D pictures and single slices: the contour's area (mm^2)")
    review: bool | None = Field(description="QC asks for a human review")
    flagged_slices: list[int]
    warnings: list[str]
    notes: list[str] = Field(default_factory=list, description="information, not problems (e.g. which files a picture gets)")
    structures: list[StructureResultOut] | None = Field(None, description="multi-ROI jobs (prior.rois): per structure")
    artifacts: list[ArtifactOut]

    @classmethod
    def of(cls, t: TargetSummary, base_url: str) -> "TargetResultOut":
        """The stored summary with each artifact's download URL (``base_url/<name>``)."""
        return cls(**t.model_dump(exclude={"artifacts", "files"}),
                   artifacts=[ArtifactOut(**a.model_dump(), url=f"{base_url}/{a.name}") for a in t.artifacts])


class ResultsOut(BaseModel):
    job_id: str
    model: ModelRef
    method: str | None
    targets: list[TargetResultOut]


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    file: str
    backbone: str | None
    sha256: str
    size_bytes: int
    card: dict[str, Any]


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = {}
