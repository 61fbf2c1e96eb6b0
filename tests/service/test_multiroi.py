"""A multi-ROI job through the real API and Celery worker (issue 18): `prior.rois: "all"` on the
Visible Human series (BODY + SpinalCord) and on the breast slice with the vendor's 10 ROIs, each
onto a shifted copy of its series; the artifacts downloaded over HTTP are checked with dciodvfy,
plastimatch and highdicom; unknown names are one 422 listing what the structure set holds.

Its own API + worker (the session's stack takes 2 MB uploads; the Visible Human series is 2.1 MB),
on its own database of the session's Redis; bundled ct_phantom model, 2 samples."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from bench.stack import Stack
from service.auth import KeyStore
from tests.conftest import shared_data
from tests.p2sam.multiroi_data import breast_case, check_outputs, visible_human_case

from .client import client, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory, redis_server, model_dir):
    # Its own Redis database: on the session's database the session stack's worker may take this
    # stack's messages (for jobs it cannot see; they would stay queued here).
    broker = redis_server.url.rsplit("/", 1)[0] + "/1"
    s = Stack(tmp_path_factory.mktemp("stack_multiroi"), model_dir, broker, max_upload_mb=16, min_island_mm2=0)
    try:
        s.start_api()
        s.start_worker()
        s.key = KeyStore(s.data_dir).create("planning-system", ["submit", "read"])
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    data = shared_data()
    out = tmp_path_factory.mktemp("multiroi_cases")
    return {"vh": visible_human_case(data, out), "breast": breast_case(data, out)}


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    return buf.getvalue()


def _upload(c, folder: Path) -> dict:
    r = c.post("/v1/uploads", content=_zip(folder), headers={"Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("name", ["vh", "breast"])
def test_api_rois_all_one_structure_set_per_target(big_stack, cases, name, tmp_path):
    case = cases[name]
    with client(big_stack.url, big_stack.key) as c:
        prior = _upload(c, case["prior"])  # the series and its structure set in one zip
        followup = _upload(c, case["followup"])
        body = {"prior": {"upload_id": prior["id"], "rois": "all"},
                "targets": [{"upload_id": followup["id"], "name": "followup"}], "model": "ct_phantom", "n_samples": 2}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"], timeout=1200)
        assert job["state"] == "succeeded", job
        results = c.get(f"/v1/jobs/{job['id']}/results").json()
        (target,) = results["targets"]
        assert [s["name"] for s in target["structures"]] == case["rois"]
        folder = tmp_path / "followup"
        folder.mkdir()
        for a in target["artifacts"]:
            got = c.get(a["url"])
            assert got.status_code == 200, a
            (folder / a["name"]).write_bytes(got.content)
    names = {a["name"] for a in target["artifacts"]}
    assert {"rtstruct.dcm", "seg.dcm", "probability_seg.dcm", "labels.nii.gz", "result.json"} <= names
    slug = case["rois"][-1].replace(" ", "_")
    assert {f"{slug}_mask.nii.gz", f"{slug}_samples.nii.gz", f"{slug}_review_sheet.png"} <= names
    scores = check_outputs(folder, case["followup"], case["rs"], case["rois"], tmp_path / "plastimatch")
    print(f"API {name}: plastimatch Dice per structure {scores}")


def test_api_unknown_rois_one_422_listing_the_set(big_stack, cases):
    with client(big_stack.url, big_stack.key) as c:
        prior = _upload(c, cases["vh"]["prior"])
        body = {"prior": {"upload_id": prior["id"], "rois": ["BODY", "Heart", "Lungs"]},
                "targets": [{"upload_id": prior["id"]}], "model": "ct_phantom"}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "'Heart', 'Lungs'" in detail and "BODY, SpinalCord" in detail
        both = {**body, "prior": {"upload_id": prior["id"], "roi": "BODY", "rois": ["BODY"]}}
        r = c.post("/v1/jobs", json=both)
        assert r.status_code == 422 and "either roi" in r.text
