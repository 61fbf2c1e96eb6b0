"""Batches through the API with real processes: submitted by `p2sam batch submit`, the worker
killed with SIGKILL half way, a new worker finishes it; every visit written exactly once; the
report's Dice equals p2sam.batch.run_batch run in this process on the same files. Plus
cancelling, idempotency and bad requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .client import client, record
from .conftest import ensure_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
PROBLEM = "application/problem+json"
OVERRIDES = {"model": "testmodel", "n_samples": 4}


def write_sequences(root: Path, frames: int = 5) -> Path:
    """Two 'patients' (CVC layout: <n>.png + <n>_mask.png): a blob drifting across a textured frame."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    for s, start in ((1, 1), (3, 40)):
        seq = root / f"seq{s:02d}"
        seq.mkdir(parents=True)
        for i in range(frames):
            img = rng.integers(50, 110, (96, 128, 3)).astype(np.uint8)
            blob = (yy - 48) ** 2 / 20**2 + (xx - 50 - 3 * i) ** 2 / 28**2 < 1
            img[blob] = (210, 100, 80)
            Image.fromarray(img).save(seq / f"{start + i}.png")
            Image.fromarray((blob * 255).astype(np.uint8)).save(seq / f"{start + i}_mask.png")
    return root


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    return write_sequences(tmp_path_factory.mktemp("sequences"))


def _tasks(stack, batch_id: str) -> list[dict]:
    batch = json.loads((stack.data_dir / "batches" / f"{batch_id}.json").read_text())
    return [record(stack.data_dir, p["task"]) for p in batch["patients"]]


def _until(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out: {what}")


def _in_process_reports(sequences: Path, model_dir: Path, out: Path):
    """The same batch run by p2sam.batch.run_batch in this process (one torch thread, like the worker)."""
    import torch

    from p2sam.batch import run_batch, sequences_manifest
    from p2sam.modelpool import ModelPool
    from p2sam.pipeline import run_job
    from p2sam.settings import Settings

    threads = torch.get_num_threads()
    settings = Settings(data_dir=out / "data", models_dir=model_dir, threads=1, min_island_mm2=0)
    pool = ModelPool(settings)
    try:
        return run_batch(sequences_manifest(sequences), out / "batch", overrides=OVERRIDES,
                         run=lambda spec, folder: run_job(spec, folder, pool=pool, settings=settings))
    finally:
        torch.set_num_threads(threads)


def test_batch_survives_a_killed_worker_and_matches_run_batch(stack, sequences, model_dir, tmp_path):
    ensure_worker(stack)
    out, err = tmp_path / "cli.out", tmp_path / "cli.err"
    argv = [sys.executable, "-m", "p2sam.cli", "batch", "submit", "--sequences", str(sequences), "--api", stack.url,
            "--model", OVERRIDES["model"], "--samples", str(OVERRIDES["n_samples"]), "--out", str(tmp_path / "report")]
    cli = subprocess.Popen(argv, env={**stack.env, "P2SAM_API_KEY": stack.keys["planning"]},
                           stdout=open(out, "w"), stderr=open(err, "w"))
    try:
        batch_id = _until(lambda: (m := re.search(r"batch ([0-9a-f]{32}) submitted", err.read_text())) and m.group(1),
                          120, f"the CLI submits the batch:\n{err.read_text()}")

        def half_way():  # a patient task running with some, not all, of its visits written
            return any(t["state"] == "running" and 1 <= sum(t["writes"].values()) < len(t["targets"])
                       for t in _tasks(stack, batch_id))

        _until(half_way, 180, "a patient half done")
        (victim,) = stack.live_workers()
        victim.kill9()
        interrupted = [t for t in _tasks(stack, batch_id) if t["state"] in ("running", "queued") and t["attempts"] == 1]
        assert interrupted, "the kill came too late: nothing left to resume"
        stack.start_worker()
        assert cli.wait(300) == 0, err.read_text()[-3000:]
    finally:
        if cli.poll() is None:
            cli.kill()

    with client(stack.url, stack.keys["planning"]) as c:
        batch = c.get(f"/v1/batches/{batch_id}").json()
        assert batch["state"] == "succeeded" and batch["done"] == batch["total"] == 8 and batch["errors"] == 0
        assert [(p["id"], p["state"], p["visits_done"]) for p in batch["patients"]] == [
            ("seq01", "succeeded", 4), ("seq03", "succeeded", 4)]
        report = c.get(batch["links"]["report"]).json()
        assert c.get(batch["links"]["report_csv"]).content == (tmp_path / "report" / "report.csv").read_bytes()
        plot = c.get(batch["links"]["plot:seq03"])
        assert plot.headers["content-type"] == "image/png" and plot.content[:4] == b"\x89PNG"

    # every visit written exactly once; the killed patient was resumed, not restarted
    rec = json.loads((stack.data_dir / "batches" / f"{batch_id}.json").read_text())
    assert rec["terminal_transitions"] == 1 and rec["refused_transitions"] == 0
    tasks = _tasks(stack, batch_id)
    for t in tasks:
        assert t["writes"] == {v: 1 for v in t["targets"]}, t["writes"]
        assert t["terminal_transitions"] == 1 and t["queue"] == "batch"
    resumed = [t for t in tasks if t["attempts"] == 2]
    assert len(resumed) == 1 and any("expired" in x["reason"] for x in resumed[0]["transitions"])
    assert resumed[0]["summary"]["skipped"] >= 1  # its finished visits were skipped on the second attempt
    assert "mean_dice" in (tmp_path / "cli.out").read_text()

    # the report equals run_batch in this process on the same files
    local = _in_process_reports(sequences, model_dir, tmp_path / "local")
    service_rows = {(r["patient"], r["visit"]): r for r in report["visits"]}
    assert set(service_rows) == {(r.patient, r.visit) for r in local}
    for r in local:
        row = service_rows[(r.patient, r.visit)]
        assert (row["dice"] is None) == (r.dice is None)
        if r.dice is not None:
            assert abs(row["dice"] - r.dice) < 1e-6, (r.patient, r.visit, row["dice"], r.dice)
        assert row["area_px"] == r.area_px
    from p2sam.batch import summarise

    expected = summarise(local)["dice_per_patient"]
    assert set(report["summary"]["dice_per_patient"]) == set(expected) == {"seq01", "seq03"}
    for patient, d in expected.items():
        assert abs(report["summary"]["dice_per_patient"][patient] - d) < 1e-6


def _upload_png(c, path: Path) -> str:
    r = c.post("/v1/uploads", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture()
def small_batch(stack, sequences) -> dict:
    """A one-patient batch body (3 visits, two with a ground truth) on uploads of the planning system."""
    with client(stack.url, stack.keys["planning"]) as c:
        seq = sequences / "seq01"
        prior = {"upload_id": _upload_png(c, seq / "3.png"), "mask_upload_id": _upload_png(c, seq / "3_mask.png")}
        visits = [{"upload_id": _upload_png(c, seq / f"{n}.png"), "name": f"frame{n}",
                   **({"truth_upload_id": _upload_png(c, seq / f"{n}_mask.png")} if n > 3 else {})} for n in (2, 4, 5)]
    return {"patients": [{"id": "p1", "prior": prior, "visits": visits}], "defaults": {"model": "testmodel", "n_samples": 0}}


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["detail"]
    return r.json()


def test_a_queued_batch_is_cancelled_and_purged_and_keys_are_idempotent(stack, small_batch):
    for w in stack.live_workers():
        w.stop()
    with client(stack.url, stack.keys["planning"]) as c:
        first = c.post("/v1/batches", json=small_batch, headers={"Idempotency-Key": "cohort-7"})
        assert first.status_code == 202 and first.headers["Location"] == f"/v1/batches/{first.json()['id']}"
        batch = first.json()
        assert batch["state"] == "queued" and batch["total"] == 3 and batch["defaults"]["outputs"] == ["nifti", "preview"]
        again = c.post("/v1/batches", json=small_batch, headers={"Idempotency-Key": "cohort-7"})
        assert again.status_code == 200 and again.json()["id"] == batch["id"]
        changed = {**small_batch, "chain": True}
        assert _problem(c.post("/v1/batches", json=changed, headers={"Idempotency-Key": "cohort-7"}), 409)["batch_id"] == batch["id"]
        _problem(c.get(f"/v1/batches/{batch['id']}/report"), 409)
        assert batch["id"] in [b["id"] for b in c.get("/v1/batches").json()["batches"]]
        with client(stack.url, stack.keys["other"]) as other:
            _problem(other.get(f"/v1/batches/{batch['id']}"), 403)
            assert batch["id"] not in [b["id"] for b in other.get("/v1/batches").json()["batches"]]
        with client(stack.url, stack.keys["viewer"]) as viewer:
            assert viewer.get(f"/v1/batches/{batch['id']}").status_code == 200
            _problem(viewer.delete(f"/v1/batches/{batch['id']}"), 403)
        r = c.delete(f"/v1/batches/{batch['id']}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["purged"] is True
        assert {p["state"] for p in r.json()["patients"]} == {"cancelled"}
        task = _tasks(stack, batch["id"])[0]
        assert task["purged_at"] and not any((stack.data_dir / "uploads" / u).exists() for u in task["uploads"])
        _problem(c.get(f"/v1/batches/{batch['id']}/report"), 410)
        _problem(c.get(f"/v1/jobs/{task['id']}"), 404)  # a patient task is not a job of its own
    audit = [json.loads(line) for line in (stack.data_dir / "audit.log").read_text().splitlines()]
    actions = {(e["action"], e["key"], e["outcome"]) for e in audit if e.get("batch_id") == batch["id"]}
    assert {("batch.submit", "planning-system", "ok"), ("batch.submit", "planning-system", "replayed"),
            ("batch.delete", "planning-system", "ok"), ("batch.delete", "viewer", "denied")} <= actions
    stack.start_worker()


def test_bad_batch_requests_are_problems(stack, sequences):
    with client(stack.url, stack.keys["planning"]) as c:
        up = _upload_png(c, sequences / "seq03" / "42.png")
        mask = _upload_png(c, sequences / "seq03" / "42_mask.png")
        good = {"id": "p1", "prior": {"upload_id": up, "mask_upload_id": mask}, "visits": [{"upload_id": up}]}
        assert _problem(c.post("/v1/batches", json={"patients": [good, good]}), 422)["type"] == "/problems/validation"
        _problem(c.post("/v1/batches", json={"patients": []}), 422)
        _problem(c.post("/v1/batches", json={"patients": [good], "defaults": {"model": "nosuchmodel"}}), 422)
        missing = {**good, "visits": [{"upload_id": "0" * 32}]}
        assert "patients[0].visits[0]" in _problem(c.post("/v1/batches", json={"patients": [missing]}), 404)["detail"]
        _problem(c.get(f"/v1/batches/{'0' * 32}"), 404)
        _problem(c.delete(f"/v1/batches/{'0' * 32}"), 404)
    with client(stack.url, stack.keys["viewer"]) as viewer:
        _problem(viewer.post("/v1/batches", json={"patients": [good]}), 403)
    with client(stack.url, stack.keys["other"]) as other:  # someone else's uploads
        _problem(other.post("/v1/batches", json={"patients": [good]}), 404)


# --- embedded mode: no broker, the API runs the same patient tasks in-process
@pytest.fixture(scope="module")
def laptop(tmp_path_factory, model_dir):
    from bench.stack import Stack
    from service.auth import KeyStore

    s = Stack(tmp_path_factory.mktemp("embedded-batches"), model_dir, broker_url=None, min_island_mm2=0)
    s.start_api()
    s.key = KeyStore(s.data_dir).create("laptop", ["admin"])
    yield s
    s.stop()


def _batch_body(c, sequences: Path, **defaults) -> dict:
    patients = []
    for seq, prior in (("seq01", 3), ("seq03", 42)):
        folder = sequences / seq
        frames = sorted((int(p.stem) for p in folder.glob("*.png") if not p.stem.endswith("_mask")))
        patients.append({"id": seq, "prior": {"upload_id": _upload_png(c, folder / f"{prior}.png"),
                                              "mask_upload_id": _upload_png(c, folder / f"{prior}_mask.png")},
                         "visits": [{"upload_id": _upload_png(c, folder / f"{n}.png"), "name": str(n)}
                                    for n in frames if n != prior]})
    return {"patients": patients, "defaults": {"model": "testmodel", **defaults}}


def test_embedded_batch_chains_and_a_running_batch_is_cancelled(laptop, sequences):
    with client(laptop.url, laptop.key) as c:
        body = _batch_body(c, sequences, n_samples=0)
        batch = c.post("/v1/batches", json={**body, "chain": True}).json()
        done = _until(lambda: (b := c.get(f"/v1/batches/{batch['id']}").json())["state"] in ("succeeded", "failed") and b,
                      240, "the embedded batch finishes", interval=0.5)
        assert done["state"] == "succeeded" and done["done"] == 8 and done["summary"]["visits"] == 8
        folder = laptop.data_dir / "results" / batch["id"] / "seq01"
        digests = [json.loads((folder / v / "result.json").read_text())["prior"]["digest"] for v in ("1", "2", "4", "5")]
        assert len(set(digests)) == 4  # chain: every visit had the previous result as its prior

        running = c.post("/v1/batches", json={**body, "defaults": {**body["defaults"], "n_samples": 8}}).json()
        _until(lambda: any(t["state"] == "running" and sum(t["writes"].values()) >= 1 for t in _tasks(laptop, running["id"])),
               120, "the second batch runs")
        r = c.delete(f"/v1/batches/{running['id']}")
        assert r.status_code in (200, 202) and r.json()["cancel_requested"] is True
        gone = _until(lambda: (b := c.get(f"/v1/batches/{running['id']}").json())["purged"] and b, 120,
                      "the cancelled batch is purged", interval=0.3)
        # a patient that finished before the DELETE arrived keeps its (now purged) success; the one that
        # was running, and any still queued, are cancelled
        states = [p["state"] for p in gone["patients"]]
        assert gone["state"] == "cancelled" and "cancelled" in states and set(states) <= {"cancelled", "succeeded"}
        assert not (laptop.data_dir / "results" / running["id"]).exists()
        assert any(t["attempts"] == 1 and t["terminal_transitions"] == 1 for t in _tasks(laptop, running["id"]))
