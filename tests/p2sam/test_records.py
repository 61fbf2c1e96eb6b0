"""The typed records (p2sam.records): records written before the types load, newer ones are
refused with a clear message, a change that names no field fails where it is made, and a job
run end to end leaves a record every reader sees as the same types."""

from __future__ import annotations

import json

import pytest

from p2sam.errors import RECORD_UNREADABLE, classify
from p2sam.jobstore import RUNNING, SUCCEEDED, JobStore, new_id, process_owner
from p2sam.records import RECORD_VERSION, JobRecord, RecordError, TargetResult, load_record

# A job record as the store wrote it before the types existed (no "version"; the keys of that code).
BEFORE_TYPES = {
    "id": "0123456789abcdef0123456789abcdef", "state": "succeeded", "stage": "done", "progress": 1.0,
    "message": "finished", "created_at": 1.0, "updated_at": 3.0, "started_at": 2.0, "finished_at": 3.0,
    "warnings": [], "error": None, "summary": {"model": {"name": "kvasir"}, "method": "p2sam"},
    "results": [{"target": "visit1", "found": True, "volume_ml": None, "area_mm2": 512.0, "review": False,
                 "flagged_slices": [], "files": {"mask": "mask.nii.gz"}, "warnings": [], "notes": [],
                 "artifacts": [{"name": "mask.nii.gz", "kind": "mask", "size": 10, "sha256": "ab" * 32,
                                "media_type": "application/gzip"}]}],
    "attempts": 1, "retries": 0, "lease": None, "writes": {"visit1": 1},
    "transitions": [{"from": None, "to": "queued", "at": 1.0, "by": "h:1:x", "reason": "submitted"},
                    {"from": "queued", "to": "running", "at": 2.0, "by": "h:1:x", "reason": "claimed"},
                    {"from": "running", "to": "succeeded", "at": 3.0, "by": "h:1:x", "reason": "finished"}],
    "terminal_transitions": 1, "refused_transitions": 0, "cancel_requested": False, "purge_requested": False,
    "purged_at": None, "published": {"count": 1, "epoch": "abc", "at": 1.5},
    "owner": {"key_id": "k1", "name": "planning"}, "queue": "interactive", "request": {"model": "auto"},
    "spec": {"prior_image": "uploads/a/p.png"}, "uploads": ["a" * 32], "targets": ["visit1"],
    "model": {"requested": "auto", "name": "kvasir", "backbone": "small", "sha256": "cd" * 32},
    "body_hash": "ef" * 32,
}


def test_a_record_written_before_the_types_loads_and_keeps_its_keys(tmp_path):
    store = JobStore(tmp_path)
    (store.jobs_dir / f"{BEFORE_TYPES['id']}.json").write_text(json.dumps(BEFORE_TYPES))
    record = store.get(BEFORE_TYPES["id"])
    assert isinstance(record, JobRecord) and record.version == RECORD_VERSION
    assert record.transitions[0].from_ is None and record.transitions[-1].to == "succeeded"
    assert record.results[0].artifacts[0].sha256 == "ab" * 32 and record.model.name == "kvasir"
    stored = record.to_json()
    assert set(BEFORE_TYPES) <= set(stored) and stored["transitions"] == BEFORE_TYPES["transitions"]
    old_result, new_result = BEFORE_TYPES["results"][0], stored["results"][0]
    assert {k: new_result[k] for k in old_result} == old_result and new_result["structures"] is None  # one key added
    assert {k: stored[k] for k in BEFORE_TYPES if k != "results"} == {k: v for k, v in BEFORE_TYPES.items() if k != "results"}


def test_a_record_of_a_newer_version_is_refused_with_a_clear_message(tmp_path):
    store = JobStore(tmp_path)
    newer = {**BEFORE_TYPES, "version": RECORD_VERSION + 1}
    (store.jobs_dir / f"{newer['id']}.json").write_text(json.dumps(newer))
    with pytest.raises(RecordError, match=r"written by a newer p2sam \(version 2; this one reads versions up to 1\)") as err:
        store.get(newer["id"])
    assert classify(err.value) is RECORD_UNREADABLE and err.value.args[0].startswith(f"job record {newer['id']}")
    with pytest.raises(RecordError, match="state"):
        load_record("jobs", {**BEFORE_TYPES, "state": "half-done"})
    readable = store.create({"id": new_id()})
    assert [r.id for r in store.all()] == [readable.id]  # listings and sweeps go on without it


def test_a_change_to_a_field_that_does_not_exist_fails_where_it_is_made(tmp_path):
    store = JobStore(tmp_path)
    job = store.create(JobRecord(id=new_id()))
    with pytest.raises(ValueError):
        store.update(job.id, lambda r: setattr(r, "atempts", 3))  # a typo is not silently stored
    with pytest.raises(ValueError):
        store.update(job.id, lambda r: setattr(r, "state", "done"))  # not a state
    assert store.get(job.id).to_json() == job.to_json()  # nothing was written


def test_a_transition_validates_the_fields_it_sets(tmp_path):
    store = JobStore(tmp_path)
    job = store.create({"id": new_id()})
    store.claim(job.id, process_owner(), 60)
    result = TargetResult(target="t", found=True, qc={"area_mm2": 5.0, "review": True,
                                                      "flagged_slices": [{"z": 0}]}, files={})
    done = store.transition(job.id, SUCCEEDED, {RUNNING}, results=[result.summary().model_dump()],
                            error={"title": "none", "detail": ""})
    assert done.results[0].area_mm2 == 5.0 and done.results[0].review and done.results[0].flagged_slices == [0]
    raw = json.loads(store.record_path(job.id).read_text())
    assert raw["version"] == RECORD_VERSION and raw["results"][0]["flagged_slices"] == [0]


def test_a_result_json_without_a_version_reads_and_a_half_written_one_is_redone(tmp_path):
    folder = tmp_path / "visit1"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({"target": "visit1", "found": False, "qc": {"volume_ml": None}}))
    assert TargetResult.read(folder).found is False and TargetResult.read(folder).volume_ml is None
    (folder / "result.json").write_text('{"target": "visit1", "fou')
    assert TargetResult.read(folder) is None
