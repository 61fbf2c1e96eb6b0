"""Listing jobs, reviewing targets (accept / reject with a comment) and the review page, driven in
a headless Chromium started by the test."""

from __future__ import annotations

import json

import httpx
import pytest

from .browser import Chromium
from .client import client, job_body, submit, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def finished_job(stack, uploaded):
    """A job of the planning system with a preview, finished."""
    from .conftest import ensure_worker

    ensure_worker(stack)
    with client(stack.url, stack.keys["planning"]) as c:
        job = wait(c, submit(c, job_body(uploaded["prior"], [uploaded["followup"]], outputs=["nifti", "preview"]))["id"])
    assert job["state"] == "succeeded", job
    return job


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["detail"]
    return r.json()


def test_jobs_are_listed_newest_first_for_the_keys_that_may_read_them(stack, finished_job):
    with client(stack.url, stack.keys["planning"]) as c:
        listed = c.get("/v1/jobs", params={"limit": 500}).json()
        ids = [j["id"] for j in listed["jobs"]]
        assert finished_job["id"] in ids and listed["total"] >= len(ids)
        created = [j["created_at"] for j in listed["jobs"]]
        assert created == sorted(created, reverse=True)
        assert all(j["state"] == "succeeded" for j in c.get("/v1/jobs", params={"state": "succeeded"}).json()["jobs"])
        page = c.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()
        assert page["limit"] == 1 and page["offset"] == 1 and len(page["jobs"]) <= 1
        _problem(c.get("/v1/jobs", params={"state": "done"}), 422)
    with client(stack.url, stack.keys["viewer"]) as viewer:  # read: every job
        assert finished_job["id"] in [j["id"] for j in viewer.get("/v1/jobs", params={"limit": 500}).json()["jobs"]]
    with client(stack.url, stack.keys["other"]) as other:  # submit only: its own jobs, not the planning system's
        assert finished_job["id"] not in [j["id"] for j in other.get("/v1/jobs", params={"limit": 500}).json()["jobs"]]


def test_reviews_are_stored_in_the_job_and_audited(stack, finished_job):
    job_id, url = finished_job["id"], f"/v1/jobs/{finished_job['id']}/reviews"
    with client(stack.url, stack.keys["planning"]) as c:
        r = c.post(url, json={"target": "visit1", "decision": "accepted"})
        assert r.status_code == 201, r.text
        assert r.json()["decision"] == "accepted" and r.json()["by"] == "planning-system"
        assert c.get(f"/v1/jobs/{job_id}").json()["reviews"]["visit1"]["decision"] == "accepted"
        body = _problem(c.post(url, json={"target": "visit1", "decision": "rejected"}), 422)
        assert "comment" in body["detail"]
        _problem(c.post(url, json={"target": "visit1", "decision": "rejected", "comment": "   "}), 422)
        assert "visit1" in _problem(c.post(url, json={"target": "visit9", "decision": "accepted"}), 422)["detail"]
        _problem(c.post(url, json={"target": "visit1", "decision": "maybe"}), 422)
        r = c.post(url, json={"target": "visit1", "decision": "rejected", "comment": "misses the caudal extent"})
        assert r.status_code == 201
        review = c.get(f"/v1/jobs/{job_id}").json()["reviews"]["visit1"]
        assert review["decision"] == "rejected" and review["comment"] == "misses the caudal extent"
    with client(stack.url, stack.keys["viewer"]) as viewer:  # read-only: sees the review, may not write one
        assert viewer.get(f"/v1/jobs/{job_id}").json()["reviews"]["visit1"]["by"] == "planning-system"
        assert "review" in _problem(viewer.post(url, json={"target": "visit1", "decision": "accepted"}), 403)["detail"]
    with client(stack.url, stack.keys["other"]) as other:  # submit, but not its job
        _problem(other.post(url, json={"target": "visit1", "decision": "accepted"}), 403)
    with client(stack.url, None) as anon:
        _problem(anon.post(url, json={"target": "visit1", "decision": "accepted"}), 401)
    with client(stack.url, stack.keys["admin"]) as admin:
        assert admin.post(url, json={"target": "visit1", "decision": "accepted", "comment": "fine"}).status_code == 201
        _problem(admin.post(f"/v1/jobs/{'0' * 32}/reviews", json={"target": "visit1", "decision": "accepted"}), 404)
    audit = [json.loads(line) for line in (stack.data_dir / "audit.log").read_text().splitlines()]
    decisions = [(e["key"], e["decision"]) for e in audit
                 if e["action"] == "review.create" and e.get("job_id") == job_id and e["outcome"] == "ok"]
    assert decisions == [("planning-system", "accepted"), ("planning-system", "rejected"), ("admin", "accepted")]


def test_the_review_page_is_served_without_a_key(stack):
    r = httpx.get(f"{stack.url}/review")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "P²SAM review" in r.text and "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_a_clinician_rejects_a_target_in_the_browser(stack, finished_job, tmp_path):
    """Chromium: log in with a key, open the finished job, see its preview and its review sheet
    (loaded, naturalWidth > 0), reject the target with a comment; the API then reports it rejected with that comment."""
    job_id = finished_job["id"]
    comment = "contour leaks into the oesophagus on the lower slices"
    with Chromium.start(tmp_path) as browser:
        browser.goto(f"{stack.url}/review")
        browser.eval(f"document.getElementById('key').value = {json.dumps(stack.keys['planning'])}")
        browser.eval("document.getElementById('login-button').click()")
        browser.wait_for(f"document.querySelector('tr.job[data-job=\"{job_id}\"]') !== null")
        browser.eval(f"document.querySelector('tr.job[data-job=\"{job_id}\"]').click()")
        card = "document.querySelector('.target[data-target=\"visit1\"]')"
        width = browser.wait_for(f"(() => {{ const img = {card}?.querySelector('img'); "
                                 "return img && img.complete && img.naturalWidth; })()")
        assert width > 0
        sheet = browser.wait_for(f"(() => {{ const img = {card}?.querySelector('img.sheet'); "
                                 "return img && img.complete && img.naturalWidth; })()")
        assert sheet == 1754  # the one-page review sheet, shown under the card
        browser.eval(f"{card}.querySelector('textarea').value = {json.dumps(comment)}")
        browser.eval(f"{card}.querySelector('button.reject').click()")
        shown = browser.wait_for(f"(() => {{ const d = {card}.querySelector('.decision.rejected'); "
                                 "return d && d.textContent; })()")
        assert "rejected" in shown and comment in shown
    with client(stack.url, stack.keys["viewer"]) as viewer:
        review = viewer.get(f"/v1/jobs/{job_id}").json()["reviews"]["visit1"]
    assert review["decision"] == "rejected" and review["comment"] == comment and review["by"] == "planning-system"
