"""Request and response bodies of /v1/batches (the manifest of p2sam.batch, by upload id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from p2sam.records import BatchRecord
from p2sam.spec import OutputName

from .problems import ProblemModel
from .schemas import _NAME, Id, JobSettingsIn, PriorIn, _given, ts


class VisitIn(BaseModel):
    """One visit (follow-up) of a patient, in visit order; optionally its ground-truth mask."""

    model_config = ConfigDict(extra="forbid")
    upload_id: str = Id
    series_uid: str | None = Field(None, max_length=64, description="which DICOM series, when the upload holds several")
    name: str | None = Field(None, pattern=_NAME, description="result folder name (default visit001, visit002, ...)")
    truth_upload_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                                        description="upload holding a ground-truth mask (RTSTRUCT, SEG, NIfTI or PNG): "
                                                    "the report gives Dice against it")
    truth_item: str | None = Field(None, max_length=16, description="which contour object of that upload, when several")


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_NAME, description="a pseudonymous patient id of the manifest (folder name in the results)")
    prior: PriorIn = Field(json_schema_extra={"allOf": _given("upload_id")})  # _uploaded, as the schema says it
    visits: list[VisitIn] = Field(min_length=1, max_length=500, description="in visit order; names unique")

    @field_validator("prior")
    @classmethod
    def _uploaded(cls, v: PriorIn) -> PriorIn:
        if v.pulled:
            raise ValueError("a batch's prior is an upload (upload_id); study / series UIDs on a PACS are for single jobs")
        return v

    @field_validator("visits")
    @classmethod
    def _unique_names(cls, v: list[VisitIn]) -> list[VisitIn]:
        names = [x.name for x in v if x.name]
        if len(names) != len(set(names)):
            raise ValueError("visit names must be unique within a patient")
        return v


class BatchDefaultsIn(JobSettingsIn):
    """Settings for every visit's job. ``nifti`` is always written (the report and chain mode read it)."""

    outputs: list[OutputName] = Field(default_factory=lambda: ["nifti", "preview"], min_length=1)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patients: list[PatientIn] = Field(min_length=1, max_length=1000, description="patient ids unique")
    chain: bool = Field(False, description="each visit's result becomes the prior of the next visit (else the "
                                           "patient's prior is used for every visit)")
    defaults: BatchDefaultsIn = Field(default_factory=BatchDefaultsIn)

    @field_validator("patients")
    @classmethod
    def _unique_ids(cls, v: list[PatientIn]) -> list[PatientIn]:
        ids = [p.id for p in v]
        if len(ids) != len(set(ids)):
            raise ValueError("patient ids must be unique")
        return v


class PatientProgressOut(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    visits_done: int
    visits_total: int
    errors: int = Field(description="visits that could not be segmented (see the report)")
    attempts: int
    error: ProblemModel | None = Field(None, description="why the patient's task failed (RFC 7807)")


class BatchOut(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    chain: bool
    defaults: dict[str, Any]
    done: int = Field(description="visits done, over every patient")
    total: int = Field(description="visits in the batch")
    errors: int
    progress: float = Field(ge=0, le=1)
    patients: list[PatientProgressOut]
    summary: dict[str, Any] | None = Field(None, description="once finished: Dice per patient, mean Dice, counts")
    cancel_requested: bool
    purged: bool
    links: dict[str, str]

    @classmethod
    def of(cls, r: BatchRecord, progress: dict[str, Any]) -> "BatchOut":
        base = f"/v1/batches/{r.id}"
        links = {"self": base}
        if r.state in ("succeeded", "failed") and not r.purged_at:
            links.update(report=f"{base}/report", report_csv=f"{base}/report.csv")
            links.update({f"plot:{p['id']}": f"{base}/plots/{p['id']}" for p in r.patients})
        started = next((t.at for t in r.transitions if t.to == "running"), None)
        return cls(id=r.id, state=r.state, message=r.message, created_at=ts(r.created_at),
                   started_at=ts(started), finished_at=ts(r.finished_at), chain=r.chain, defaults=r.defaults,
                   done=progress["done"], total=progress["total"], errors=progress["errors"],
                   progress=progress["progress"], patients=progress["patients"], summary=r.summary,
                   cancel_requested=r.cancel_requested, purged=r.purged_at is not None, links=links)


class BatchListOut(BaseModel):
    batches: list[BatchOut] = Field(description="newest first")
    total: int
    limit: int
    offset: int
