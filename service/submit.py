"""Turning a job request into a stored job: upload ids -> paths, Idempotency-Key, enqueueing.

The stored spec is a :class:`p2sam.spec.JobSpec` whose paths are relative to ``data_dir`` (a
worker mounting the shared volume elsewhere resolves them against its own ``data_dir``).

Idempotency (:meth:`Idempotency.replay_or_create`, used by jobs and batches alike): a key is
scoped to the API key that sends it. The first request with a key stores
``data_dir/idempotency/<sha256(api key id, key)>.json`` = {job id, body hash}; a later request
with the same key and the same body (compared after validation, so defaults and key order do
not matter) gets the same job back, with a different body a 409. Batches use the same files in
their own namespace (``batch\0<key>``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from p2sam.jobstore import file_lock, new_id, write_json_atomic
from p2sam.records import JobRecord
from p2sam.spec import JobSpec

from .auth import Principal
from .problems import Problem
from .schemas import JobIn


async def audited_submit(services, who: Principal, action: str, submit_fn: Callable, body: BaseModel,
                         idempotency_key: str | None) -> tuple[Any, bool]:
    """``submit_fn(services, who, body, key)`` in the thread pool; a refusal of any kind (a bug's 500
    too) is audited as ``action`` rejected, with its status, then raised."""
    from fastapi.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(submit_fn, services, who, body, idempotency_key)
    except Exception as exc:
        services.audit.write(who, action, outcome="rejected", status=_status(exc))
        raise


def _status(exc: Exception) -> int:
    from p2sam.errors import classify

    return exc.status if isinstance(exc, Problem) else classify(exc).status


def accepted(response, out: BaseModel, location: str, replayed: bool):
    """What POST /v1/jobs and /v1/batches answer: 202 + Location for a new record; 200 with
    ``Idempotent-Replayed: true`` for a replayed Idempotency-Key."""
    from fastapi.responses import JSONResponse

    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
        return JSONResponse(out.model_dump(mode="json"), status_code=200, headers=headers)
    response.headers.update(headers)
    return out


def body_hash(body: BaseModel) -> str:
    """sha256 of a validated request body (defaults filled in, keys sorted)."""
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class Idempotency:
    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / "idempotency"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, who: Principal, key: str) -> Path:
        return self.folder / (hashlib.sha256(f"{who.key_id}\0{key}".encode()).hexdigest() + ".json")

    def locked(self):
        return file_lock(self.folder / ".lock")

    def replay_or_create(self, who: Principal, key: str, digest: str, kind: str, find: Callable[[str], Any],
                         build: Callable[[], tuple[str, Any]], create: Callable[[Any, str], Any]) -> tuple[Any, bool]:
        """The record an Idempotency-Key already made (replayed: True), or a new one.

        ``kind``: ``job`` or ``batch`` (namespace, entry field ``<kind>_id``, wording of the 409);
        ``find(id)``: the stored record or None; ``build()``: (new id, draft), raising 4xx problems
        for a request that does not fit; ``create(draft, entry stem)``: stores the draft. The key's
        entry is written BEFORE the record: a crash in between leaves an entry whose record does not
        exist (the next request with the key creates it), never a record without its entry."""
        check_key(key)
        entry_path = self.path(who, key if kind == "job" else f"{kind}\0{key}")
        field = f"{kind}_id"
        replayed = self._replay(entry_path, digest, kind, find)  # a replay is a read: it needs no lock (entries
        if replayed is not None:                                # are replaced atomically), so it works on a
            return replayed, True                               # read-only volume too
        with self.locked():
            replayed = self._replay(entry_path, digest, kind, find)
            if replayed is not None:
                return replayed, True
            new_id_, draft = build()
            write_json_atomic(entry_path, {field: new_id_, "body_hash": digest, "key_id": who.key_id,
                                           "created_at": time.time()})  # the retention sweep reads it
            return create(draft, entry_path.stem), False

    @staticmethod
    def _replay(entry_path: Path, digest: str, kind: str, find: Callable[[str], Any]) -> Any:
        """The record the key's entry names (None when there is no entry, or its record does not
        exist yet); a 409 when the entry was made with a different body."""
        try:
            entry = json.loads(entry_path.read_text())
        except FileNotFoundError:
            return None
        field = f"{kind}_id"
        if entry["body_hash"] != digest:
            what = "request body" if kind == "job" else kind
            raise Problem(409, f"this Idempotency-Key was already used with a different {what} ({kind} "
                          f"{entry[field]}); use a new key for a new {kind}", slug="idempotency-conflict",
                          **{field: entry[field]})
        return find(entry[field])


# 1-255 visible ASCII characters, spaces inside (the OpenAPI says the same: routes use it as the
# header's pattern, so a key outside it is a documented 422, never a surprise)
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"


def idempotency_header(what: str):
    """The ``Idempotency-Key`` header parameter of POST /v1/jobs and /v1/batches (``what``: job, batch)."""
    from fastapi import Header

    return Header(None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN,
                  description=f"1-255 visible ASCII characters; same key + same body -> the same {what}; different body -> 409")


def check_key(key: str) -> None:
    import re

    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise Problem(400, "Idempotency-Key: 1-255 visible ASCII characters (e.g. a UUID)", slug="bad-idempotency-key")


def build_record(services, who: Principal, body: JobIn, digest: str | None = None) -> JobRecord:
    """The job record for a request (resolving uploads: 404/422 when they do not fit; inputs on a
    PACS are planned here and pulled by the worker: dicomnet.pull)."""
    uploads = services.uploads
    owner = None if who.is_admin else who.key_id
    p = body.prior
    pulls = []
    if p.pulled:
        pulls.append(_pacs(services, "prior", p))
        prior_image = prior_mask = _placeholder(pulls[-1])
        roi, mask_upload = p.roi, None
    else:
        prior_image = uploads.resolve_image(p.upload_id, p.series_uid, owner, "prior")
        mask_upload = p.mask_upload_id or p.upload_id
        prior_mask, roi = uploads.resolve_mask(mask_upload, p.mask_item, p.roi, owner, same_as_image=mask_upload == p.upload_id,
                                               rois=p.rois)
    targets = []
    for i, t in enumerate(body.targets):
        if t.pulled:
            pulls.append(_pacs(services, f"targets[{i}]", t))
            path = _placeholder(pulls[-1])
        else:
            path = uploads.resolve_image(t.upload_id, t.series_uid, owner, f"targets[{i}]")
        targets.append({"path": path, "name": t.name or f"target{i + 1}"})
    names = [t["name"] for t in targets]
    if len(set(names)) != len(names):
        raise Problem(422, "targets: names must be unique (a default name target<N> collides with a given one)", slug="validation")
    if body.model != "auto" and body.model not in services.model_files():
        raise Problem(422, f"model: unknown model '{body.model}'; GET /v1/models lists those on offer", slug="unknown-model")
    spec = JobSpec(prior_image=prior_image, prior_mask=prior_mask, roi=roi, rois=p.rois, targets=targets, outputs=body.outputs,
                   model=body.model, method=body.method, n_samples=body.n_samples, sampler=body.sampler,
                   window=body.window, slice_margin=body.slice_margin, roi_name_out=body.roi_name_out)
    upload_ids = sorted({p.upload_id, mask_upload, *(t.upload_id for t in body.targets), *(e["upload_id"] for e in pulls)} - {None})
    return JobRecord(id=new_id(), owner={"key_id": who.key_id, "name": who.name}, queue=body.queue,
                     request=body.model_dump(mode="json"), spec=spec.model_dump(mode="json"), uploads=upload_ids,
                     targets=names, model={"requested": body.model}, pull=pulls or None, body_hash=digest,
                     dicom=None if body.destinations is None else {"destinations": _destinations(services, body.destinations)})


def _pacs(services, role: str, ref) -> dict[str, Any]:
    """The pull entry of an input on a PACS (422 for an unknown peer)."""
    from dicomnet.peers import PeerError
    from dicomnet.pull import plan

    try:
        return plan(role, ref.model_dump(), services.settings)
    except PeerError as exc:
        raise Problem(422, str(exc), slug="unknown-peer") from None


def _placeholder(entry: dict[str, Any]) -> str:
    from dicomnet.pull import placeholder

    return placeholder(entry)


def _destinations(services, names: list[str]) -> list[str]:
    from dicomnet.peers import PeerError, check_destinations, peers_of

    try:
        check_destinations(names, peers_of(services.settings))
    except PeerError as exc:
        raise Problem(422, str(exc), slug="unknown-peer") from None
    return names


def submit(services, who: Principal, body: JobIn, idempotency_key: str | None) -> tuple[JobRecord, bool]:
    """Store (or find, for a replayed Idempotency-Key) the job; returns (record, replayed)."""
    digest = body_hash(body)
    if idempotency_key is None:
        record = services.store.create(build_record(services, who, body, digest))
        services.enqueue(record.id)
        return record, False

    def build() -> tuple[str, JobRecord]:
        draft = build_record(services, who, body, digest)
        return draft.id, draft

    def create(draft: JobRecord, stem: str) -> JobRecord:
        draft.idempotency = stem
        return services.store.create(draft)

    record, replayed = services.idempotency.replay_or_create(who, idempotency_key, digest, "job", services.store.get,
                                                             build, create)
    if not replayed:
        services.enqueue(record.id)
    return record, replayed
