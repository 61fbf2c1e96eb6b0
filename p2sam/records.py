"""The shapes of a job's data, in one place: job and batch records, a target's result, its files.

- :class:`JobRecord` / :class:`BatchRecord`: what the job store keeps (p2sam.jobstore: a JSON file
  per record, or a row in PostgreSQL: p2sam.pgstore). Read with :func:`load_record`, written with
  :meth:`Record.to_json`; every change is an attribute assignment inside the store's
  read-modify-write (``store.update(job_id, change)``), validated as it is made.
- :class:`TargetResult`: a target's ``result.json``, made once where the target is written
  (p2sam.outputs) and read back by the pipeline (finished targets skipped) and the batch report.
- :class:`TargetSummary` (with its :class:`Artifact` list): what a succeeded job's record keeps per
  target, made from the TargetResult by :meth:`TargetResult.summary`; the API's ``/results`` and
  the CLI's table show it.

Each stored shape carries ``version``. A record or result.json without one was written before these
types (the same keys) and loads; one with a newer version than this code knows fails with a
:class:`RecordError` that says so, instead of a half-understood record.
Records hold upload ids, target names, patient ids of a manifest and visit names only: never
patient names, IDs or file names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RECORD_VERSION = 1
RESULT_VERSION = 1
PATIENT_TASK = "batch-patient"  # JobRecord.kind of one patient of a batch (p2sam.batchstore)

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class RecordError(ValueError):
    """A stored record or result.json this code cannot read (newer version, or not that shape)."""


class _Shape(BaseModel):
    """Strict: an unknown field is an error (a typo in a change is caught where it is made)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class Lease(_Shape):
    """Which process runs the job, and when it last said so."""

    owner: str
    heartbeat_at: float
    since: float


class Transition(_Shape):
    """One state change (``from`` is ``None`` for the submission)."""

    from_: str | None = Field(alias="from")
    to: str
    at: float
    by: str
    reason: str = ""


class Published(_Shape):
    """The broker messages sent for the job: how many, and which broker incarnation (epoch) holds the last."""

    count: int = 0
    epoch: str | None = None
    at: float | None = None


class Owner(_Shape):
    """The API key that submitted it (its id and name, never the secret)."""

    key_id: str | None = None
    name: str | None = None


class Problem(BaseModel):
    """An RFC 7807 problem (a failed job's ``error``); extension members are kept."""

    model_config = ConfigDict(extra="allow")
    type: str | None = None
    title: str
    status: int | None = None
    detail: str = ""


class ModelInfo(_Shape):
    """The model asked for and, once loaded, the one used."""

    requested: str = "auto"
    name: str | None = None
    backbone: str | None = None
    sha256: str | None = None


class Review(_Shape):
    """A clinician's latest decision on one target."""

    decision: Literal["accepted", "rejected"]
    comment: str | None = None
    by: str = Field(description="the name of the API key that reviewed")
    by_key_id: str | None = None
    at: float


class BatchRef(_Shape):
    """A patient task's batch, its place in the manifest and its patient id."""

    id: str
    index: int
    patient: str


class DicomInfo(_Shape):
    """DICOM destinations of the job's results (dicomnet.gateway enqueues them once)."""

    destinations: list[str] = Field(default_factory=list)
    enqueued: float | None = None


class Artifact(_Shape):
    """One result file of a target, as served by GET .../artifacts/<target>/<name>."""

    name: str
    kind: str
    size: int
    sha256: str
    media_type: str


class _Measured(_Shape):
    """What the QC says of one contour: found, its size, whether to review it, and where."""

    found: bool | None
    volume_ml: float | None = None
    area_mm2: float | None = None
    review: bool | None = None
    flagged_slices: list[int] = Field(default_factory=list)


def _measured(qc: dict[str, Any]) -> dict[str, Any]:
    """The _Measured fields (but ``found``) from a p2sam.qc dictionary."""
    return {"volume_ml": qc.get("volume_ml"), "area_mm2": qc.get("area_mm2"), "review": qc.get("review"),
            "flagged_slices": [f["z"] for f in qc.get("flagged_slices", [])]}


class StructureSummary(_Measured):
    """One structure of a multi-ROI target."""

    name: str


class TargetSummary(_Measured):
    """What a succeeded job keeps per target (result.json has the full detail)."""

    target: str
    files: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    structures: list[StructureSummary] | None = None
    artifacts: list[Artifact] = Field(default_factory=list)


class TargetResult(BaseModel):
    """A target's result.json: QC, registration, per-slice detail, files and provenance.

    ``qc``, ``registration``, ``slices``, ``structures`` and the provenance blocks are the
    documented dictionaries of p2sam.qc, imaging.registration and p2sam.pipeline (their keys grow
    with the QC; they are not re-typed here)."""

    model_config = ConfigDict(extra="forbid")
    FILE: ClassVar[str] = "result.json"
    version: int = RESULT_VERSION
    target: str
    found: bool
    qc: dict[str, Any] = Field(default_factory=dict)
    registration: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = Field(default_factory=list)
    structures: list[dict[str, Any]] | None = None
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    # provenance (the same for every target of a job)
    software_version: str = ""
    model: dict[str, Any] = Field(default_factory=dict)
    method: str | None = None
    engine: dict[str, Any] = Field(default_factory=dict)
    sampler: dict[str, Any] = Field(default_factory=dict)
    prior: dict[str, Any] = Field(default_factory=dict)

    @property
    def volume_ml(self) -> float | None:
        return self.qc.get("volume_ml")

    @property
    def area_mm2(self) -> float | None:
        return self.qc.get("area_mm2")

    @property
    def review(self) -> bool | None:
        return self.qc.get("review")

    @property
    def flagged_slices(self) -> list[int]:
        return _measured(self.qc)["flagged_slices"]

    def summary(self, artifacts: list[Artifact] | None = None) -> TargetSummary:
        """What the job record keeps of this target (the one place the result is reshaped)."""
        structures = None
        if self.structures is not None:
            structures = [StructureSummary(name=s["name"], found=s["found"], **_measured(s["qc"])) for s in self.structures]
        return TargetSummary(target=self.target, found=self.found, **_measured(self.qc), files=dict(self.files),
                             warnings=list(self.warnings), notes=list(self.notes), structures=structures,
                             artifacts=list(artifacts or []))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, folder: Path) -> "TargetResult | None":
        """``folder/result.json``, or None when there is none (or it is half-written: redone)."""
        path = Path(folder) / cls.FILE
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return _load(cls, raw, RESULT_VERSION, f"{path}")


class JobSummary(BaseModel):
    """What ``p2sam.pipeline.run_job`` returns: provenance, every target's result, seconds."""

    model_config = ConfigDict(extra="forbid")
    software_version: str
    model: dict[str, Any]
    method: str
    engine: dict[str, Any]
    sampler: dict[str, Any]
    prior: dict[str, Any]
    targets: list[TargetResult]
    seconds: float

    def provenance(self) -> dict[str, Any]:
        """The job record's ``summary``: everything but the targets (those are its ``results``)."""
        return self.model_dump(mode="json", exclude={"targets"})


class Record(_Shape):
    """What job and batch records share: state, progress, lease, transitions, purge bookkeeping."""

    version: int = RECORD_VERSION
    id: str
    state: State = "queued"
    stage: str = "queued"
    progress: float = 0.0
    message: str = "waiting for a worker"
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    warnings: list[str] = Field(default_factory=list)
    error: Problem | None = None
    summary: dict[str, Any] | None = Field(None, description="job: JobSummary.provenance(); patient task and "
                                           "batch: their counts and Dice (p2sam.patient_task, p2sam.batch.summarise)")
    attempts: int = 0
    retries: int = 0
    lease: Lease | None = None
    writes: dict[str, int] = Field(default_factory=dict, description="per target: how often its outputs were written")
    transitions: list[Transition] = Field(default_factory=list)
    terminal_transitions: int = 0
    refused_transitions: int = 0
    cancel_requested: bool = False
    purge_requested: bool = False
    purged_at: float | None = None
    purge_reason: str | None = None
    published: Published = Field(default_factory=Published)
    owner: Owner = Field(default_factory=Owner)
    request: dict[str, Any] = Field(default_factory=dict, description="the request body as accepted (JSON)")
    body_hash: str | None = None
    idempotency: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored form (JSON types; ``from`` for a transition's origin)."""
        return self.model_dump(mode="json", by_alias=True)


class JobRecord(Record):
    """A job, or one patient of a batch (``kind = "batch-patient"``)."""

    kind: Literal["batch-patient"] | None = None
    queue: str = "interactive"
    spec: dict[str, Any] = Field(default_factory=dict, description="p2sam.spec.JobSpec with data_dir-relative "
                                 "paths; a patient task: {patient, chain, defaults}")
    targets: list[str] = Field(default_factory=list)
    uploads: list[str] = Field(default_factory=list)
    uploads_kept: list[str] = Field(default_factory=list)
    model: ModelInfo = Field(default_factory=ModelInfo)
    results: list[TargetSummary] | None = None
    reviews: dict[str, Review] = Field(default_factory=dict)
    pull: list[dict[str, Any]] | None = Field(None, description="inputs on a PACS (dicomnet.pull entries)")
    dicom: DicomInfo | None = None
    deliveries: list[dict[str, Any]] = Field(default_factory=list, description="dicomnet.outbox.public of each delivery")
    batch: BatchRef | None = None
    visits_done: int = 0
    visit_errors: int = 0
    soft_time_limit: int | None = None
    time_limit: int | None = None

    @property
    def is_patient_task(self) -> bool:
        """One patient of a batch (run by p2sam.patient_task), not a job of its own."""
        return self.kind == PATIENT_TASK


class BatchRecord(Record):
    """A batch: its manifest's patients (each with its task id) and the shared defaults."""

    message: str = "waiting for a batch worker"
    chain: bool = False
    defaults: dict[str, Any] = Field(default_factory=dict)
    patients: list[dict[str, Any]] = Field(default_factory=list, description="id, task, visits, visit_names, ...")
    results: None = None


R = TypeVar("R", bound=BaseModel)


def _load(cls: type[R], raw: Any, newest: int, where: str) -> R:
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: not a {cls.__name__} (a JSON object was expected)")
    version = raw.get("version", 0)
    if not isinstance(version, int) or version > newest:
        raise RecordError(f"{where}: written by a newer p2sam (version {version}; this one reads versions up to "
                          f"{newest}): upgrade this host to the version the other hosts run")
    try:
        return cls.model_validate({**raw, "version": newest})  # version 0: written before the types, same keys
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RecordError(f"{where}: not a {cls.__name__} ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None


RECORD_TYPES: dict[str, type[Record]] = {"jobs": JobRecord, "batches": BatchRecord}


def load_record(kind: str, raw: Any) -> Record:
    """A stored record of ``kind`` (``jobs`` / ``batches``) as its type; RecordError when it cannot be."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    return _load(RECORD_TYPES[kind], raw, RECORD_VERSION, f"{kind[:-1]} record {rid}")


__all__ = ["RECORD_VERSION", "RESULT_VERSION", "RecordError", "Record", "JobRecord", "BatchRecord", "Lease",
           "Transition", "Published", "Owner", "Problem", "ModelInfo", "Review", "BatchRef", "DicomInfo", "Artifact",
           "StructureSummary", "TargetSummary", "TargetResult", "JobSummary", "load_record", "RECORD_TYPES"]
