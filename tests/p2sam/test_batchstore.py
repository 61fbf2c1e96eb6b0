"""Batch records without servers: the batch follows its patient tasks, the report is written once,
a failed patient's visits carry its error, cancelling purges."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from p2sam.batchstore import BatchStore, write_visits
from p2sam.records import PATIENT_TASK
from p2sam.jobstore import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, new_id, process_owner


def _batch(store: BatchStore, n_patients: int = 2, visits=("v1", "v2")) -> dict:
    batch_id, patients, tasks = new_id(), [], []
    for i in range(n_patients):
        task_id, upload = new_id(), new_id()
        store.jobs.upload_dir(upload).mkdir(parents=True)
        patients.append({"id": f"p{i}", "task": task_id, "visits": len(visits), "visit_names": list(visits)})
        tasks.append({"id": task_id, "kind": PATIENT_TASK, "queue": "batch", "uploads": [upload], "targets": list(visits),
                      "batch": {"id": batch_id, "patient": f"p{i}", "index": i}})
    return store.create({"id": batch_id, "chain": False, "defaults": {}, "patients": patients}, tasks)


def _finish_task(store: BatchStore, batch: dict, i: int, dice: float | None = 0.5) -> None:
    task_id, pid = batch.patients[i]["task"], batch.patients[i]["id"]
    owner = process_owner()
    store.jobs.claim(task_id, owner, 60)
    rows = [{"patient": pid, "visit": v, "dice": dice, "flagged_slices": []} for v in batch.patients[i]["visit_names"]]
    write_visits(store.folder(batch.id) / pid, rows)
    store.jobs.transition(task_id, SUCCEEDED, {RUNNING}, owner=owner)


def test_the_batch_follows_its_tasks_and_reports_once(tmp_path, make):
    store = BatchStore(make())
    batch = _batch(store)
    assert store.settle(batch.id).state == QUEUED
    assert store.progress(batch) | {"patients": None} == {"patients": None, "done": 0, "total": 4, "errors": 0, "progress": 0.0}
    _finish_task(store, batch, 0, dice=0.25)
    assert store.settle(batch.id).state == RUNNING
    assert store.progress(store.get(batch.id))["done"] == 2
    _finish_task(store, batch, 1, dice=0.75)
    with ThreadPoolExecutor(4) as pool:  # several settlers at once: one transition, one report
        states = list(pool.map(lambda _: store.settle(batch.id).state, range(8)))
    assert set(states) == {SUCCEEDED}
    record = store.get(batch.id)
    assert record.terminal_transitions == 1 and record.summary["dice_per_patient"] == {"p0": 0.25, "p1": 0.75}
    report = json.loads((store.folder(batch.id) / "report.json").read_text())
    assert [(r["patient"], r["visit"]) for r in report["visits"]] == [("p0", "v1"), ("p0", "v2"), ("p1", "v1"), ("p1", "v2")]


def test_a_failed_patient_fails_the_batch_with_its_reason(tmp_path, make):
    store = BatchStore(make())
    batch = _batch(store)
    _finish_task(store, batch, 0)
    failed = batch.patients[1]["task"]
    store.jobs.claim(failed, process_owner(), 60)
    store.jobs.transition(failed, FAILED, {RUNNING}, error={"title": "Model unavailable", "detail": "no weights"})
    assert store.settle(batch.id).state == FAILED
    rows = json.loads((store.folder(batch.id) / "report.json").read_text())["visits"]
    assert [r["error"] for r in rows if r["patient"] == "p1"] == ["patient not finished: no weights"] * 2


def test_cancelling_stops_queued_patients_and_purges(tmp_path, make):
    store = BatchStore(make())
    batch = _batch(store)
    _finish_task(store, batch, 0)
    running = batch.patients[1]["task"]
    store.jobs.claim(running, process_owner(), 60)
    record = store.cancel(batch.id, "admin")
    assert record.state == RUNNING and record.cancel_requested and not record.purged_at
    assert store.jobs.get(running).cancel_requested  # the worker stops at its next check
    store.jobs.transition(running, CANCELLED, {RUNNING})
    record = store.settle(batch.id)
    assert record.state == CANCELLED and record.purged_at and not store.folder(batch.id).exists()
    for p in batch.patients:
        task = store.jobs.get(p["task"])
        assert task.purged_at and not any(store.jobs.upload_dir(u).exists() for u in task.uploads)
