"""Turning a batch request into a stored batch: upload ids -> paths, one task per patient,
Idempotency-Key (as for jobs, in its own namespace), publishing the tasks on the ``batch`` queue.

The stored patient entries are :class:`p2sam.batch.PatientEntry` objects whose paths are
relative to ``data_dir`` (p2sam/patient_task.py makes them absolute on its host).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from p2sam.batch import PatientEntry, visit_name
from p2sam.jobstore import new_id
from p2sam.records import PATIENT_TASK, BatchRecord, JobRecord
from p2sam.spec import JobSpec

from .auth import Principal
from .batch_schemas import BatchIn, PatientIn
from .problems import Problem
from .submit import body_hash


def _patient(uploads, p: PatientIn, i: int, owner: str | None) -> tuple[dict[str, Any], set[str]]:
    """The patient's entry (data_dir-relative paths) and the uploads it uses."""
    where = f"patients[{i}]"
    prior_image = _prefixed(f"{where}.prior", uploads.resolve_image, p.prior.upload_id, p.prior.series_uid, owner,
                            f"{where}.prior")
    mask_upload = p.prior.mask_upload_id or p.prior.upload_id
    prior_mask, roi = _prefixed(where, uploads.resolve_mask, mask_upload, p.prior.mask_item, p.prior.roi, owner,
                                same_as_image=mask_upload == p.prior.upload_id, rois=p.prior.rois)
    used = {p.prior.upload_id, mask_upload}
    visits = []
    for j, v in enumerate(p.visits):
        image = _prefixed(f"{where}.visits[{j}]", uploads.resolve_image, v.upload_id, v.series_uid, owner,
                          f"{where}.visits[{j}]")
        truth = None
        if v.truth_upload_id:
            truth, _ = _prefixed(f"{where}.visits[{j}].truth", uploads.resolve_mask, v.truth_upload_id, v.truth_item,
                                 None, owner, same_as_image=False)
            used.add(v.truth_upload_id)
        used.add(v.upload_id)
        visits.append({"image": image, "truth": truth, "name": v.name or visit_name(v, j)})
    entry = PatientEntry(id=p.id, prior={"image": prior_image, "mask": prior_mask, "roi": roi, "rois": p.prior.rois},
                         visits=visits)
    return entry.model_dump(mode="json"), used


def _prefixed(where: str, resolve, *args, **kwargs):
    """Upload problems that do not say which patient / visit they are about, prefixed with it."""
    try:
        return resolve(*args, **kwargs)
    except Problem as exc:
        if not exc.detail.startswith(where):
            exc.detail = f"{where}: {exc.detail}"
        raise


def build(services, who: Principal, body: BatchIn, digest: str | None = None) -> tuple[BatchRecord, list[JobRecord]]:
    """The batch record and its patient tasks (404/422 when an upload does not fit)."""
    defaults = body.defaults.model_dump(mode="json")
    defaults["outputs"] = sorted(set(defaults["outputs"]) | {"nifti"})
    if body.defaults.model != "auto" and body.defaults.model not in services.model_files():
        raise Problem(422, f"defaults.model: unknown model '{body.defaults.model}'; GET /v1/models lists those on offer",
                      slug="unknown-model")
    owner_filter = None if who.is_admin else who.key_id
    batch_id = new_id()
    owner = {"key_id": who.key_id, "name": who.name}
    settings = services.settings
    patients, tasks = [], []
    for i, p in enumerate(body.patients):
        entry, used = _patient(services.uploads, p, i, owner_filter)
        try:  # the first visit's job, as the worker will build it: catches settings JobSpec refuses
            JobSpec(prior_image=entry["prior"]["image"], prior_mask=entry["prior"]["mask"], roi=entry["prior"]["roi"],
                    rois=entry["prior"].get("rois"),
                    targets=[{"path": entry["visits"][0]["image"], "name": entry["visits"][0]["name"]}], **defaults)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise Problem(422, f"defaults.{'.'.join(map(str, first['loc']))}: {first['msg']}", slug="validation") from None
        task_id = new_id()
        names = [v["name"] for v in entry["visits"]]
        n = len(names)
        patients.append({"id": p.id, "task": task_id, "visits": n, "visit_names": names})
        tasks.append(JobRecord(id=task_id, kind=PATIENT_TASK, owner=owner, queue="batch",
                               batch={"id": batch_id, "patient": p.id, "index": i},
                               spec={"patient": entry, "chain": body.chain, "defaults": defaults},
                               uploads=sorted(used), targets=names, model={"requested": defaults["model"]},
                               soft_time_limit=settings.job_soft_time_limit_s * n,
                               time_limit=settings.job_hard_time_limit_s * n))
    batch = BatchRecord(id=batch_id, owner=owner, chain=body.chain, defaults=defaults, patients=patients,
                        request=body.model_dump(mode="json"), body_hash=digest)
    return batch, tasks


def submit_batch(services, who: Principal, body: BatchIn, idempotency_key: str | None) -> tuple[BatchRecord, bool]:
    """Store (or find, for a replayed Idempotency-Key) the batch; returns (record, replayed)."""
    digest = body_hash(body)
    batches = services.batches
    if idempotency_key is None:
        record = batches.create(*build(services, who, body, digest))
    else:
        def draft() -> tuple[str, tuple[BatchRecord, list[JobRecord]]]:
            batch, tasks = build(services, who, body, digest)
            return batch.id, (batch, tasks)

        def create(made: tuple[BatchRecord, list[JobRecord]], stem: str) -> BatchRecord:
            batch, tasks = made
            batch.idempotency = stem
            return batches.create(batch, tasks)

        record, replayed = services.idempotency.replay_or_create(who, idempotency_key, digest, "batch", batches.get,
                                                                 draft, create)
        if replayed:
            return record, True
    for p in record.patients:
        services.enqueue(p["task"])
    return record, False
