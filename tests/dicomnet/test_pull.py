"""Pulling a job's inputs from a real Orthanc by study / series UIDs (dicomnet.pull): DICOMweb
(QIDO-RS + WADO-RS) and DIMSE (C-FIND + C-GET); unknown series; the PACS down, then back."""

from __future__ import annotations

import json
import threading
import time

import pydicom
import pytest

import imaging
from dicomnet.pacs import NotOnPacs, PacsUnavailable
from dicomnet.pull import PullInputError, placeholder, plan, pull_inputs
from p2sam.errors import INVALID_INPUT, NOT_ON_PACS, PACS_UNAVAILABLE, classify
from p2sam.jobstore import JobStore, new_id

from .conftest import settings_for

pytestmark = pytest.mark.timeout(240)


def uids(folder) -> tuple[str, str]:
    ds = pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def peers_of(orthanc) -> dict:
    peers = {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}}
    if orthanc.has_dicomweb:
        peers["web"] = {"url": orthanc.dicomweb_url}
    return peers


def pulled_job(store: JobStore, s, prior: dict, targets: list[dict]) -> dict:
    """A queued job record as POST /v1/jobs stores it for inputs given by UIDs."""
    pulls = [plan("prior", prior, s)] + [plan(f"targets[{i}]", t, s) for i, t in enumerate(targets)]
    spec = {"prior_image": placeholder(pulls[0]), "prior_mask": placeholder(pulls[0]), "roi": prior.get("roi"),
            "targets": [{"path": placeholder(e), "name": f"visit{i + 1}"} for i, e in enumerate(pulls[1:])]}
    return store.create({"id": new_id(), "owner": {"key_id": "k", "name": "test"}, "spec": spec, "pull": pulls,
                         "uploads": [e["upload_id"] for e in pulls], "targets": [t["name"] for t in spec["targets"]],
                         "model": {"requested": "auto"}})


@pytest.mark.parametrize("peer", ["web", "pacs"])
def test_prior_and_target_pulled_by_uids(tmp_path, orthanc, example, peer):
    if peer == "web" and not orthanc.has_dicomweb:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    assert orthanc.upload(example["prior"], example["prior_rtstruct"], example["followup1"]) == 33
    s = settings_for(tmp_path / "data", peers_of(orthanc))
    store = JobStore(s.data_dir)
    prior_study, prior_series = uids(example["prior"])
    _, target_series = uids(example["followup1"])
    # the prior by its study alone (one image series + its RTSTRUCT), the target by its series alone
    job = pulled_job(store, s, {"peer": peer, "study_uid": prior_study, "roi": "GTV"}, [{"peer": peer, "series_uid": target_series}])
    stages = []
    record = pull_inputs(store.get(job.id), store, s, progress=lambda stage, f, msg, **k: stages.append(msg))
    assert all(e["done"] for e in record.pull) and [e["instances"] for e in record.pull] == [17, 16]
    assert len(stages) == 2 and f"from {peer}" in stages[0]
    spec = record.spec
    image = imaging.read_image(s.data_dir / spec["prior_image"])
    assert image.shape[0] == 16 and image.dicom.headers[0].SeriesInstanceUID == prior_series
    assert imaging.list_rois(s.data_dir / spec["prior_mask"]) == ["GTV"]
    mask = imaging.read_mask(s.data_dir / spec["prior_mask"], image, roi="GTV")
    assert mask.any()
    target = imaging.read_image(s.data_dir / spec["targets"][0]["path"])
    assert target.dicom.headers[0].SeriesInstanceUID == target_series
    manifest = json.loads((s.data_dir / "uploads" / record.pull[1]["upload_id"] / "manifest.json").read_text())
    assert manifest["owner"] == "k" and manifest["series"][0]["n_slices"] == 16
    again = pull_inputs(record, store, s)  # done entries are not pulled twice
    assert again.spec == spec


def test_unknown_series_is_a_404_class_problem(tmp_path, orthanc, example):
    orthanc.upload(example["followup1"])
    s = settings_for(tmp_path / "data", peers_of(orthanc))
    store = JobStore(s.data_dir)
    peer = "web" if orthanc.has_dicomweb else "pacs"
    job = pulled_job(store, s, {"peer": peer, "series_uid": "1.2.3.4.5"}, [{"peer": peer, "series_uid": "1.2.3.4.6"}])
    with pytest.raises(NotOnPacs, match="holds no series 1.2.3.4.5") as err:
        pull_inputs(store.get(job.id), store, s)
    assert classify(err.value) is NOT_ON_PACS and NOT_ON_PACS.status == 404
    # a study with several image series and no series_uid: the caller must choose (422)
    orthanc.upload(example["followup2"])
    study = uids(example["followup1"])[0]
    job = pulled_job(store, s, {"peer": peer, "study_uid": study}, [{"peer": peer, "series_uid": uids(example["followup2"])[1]}])
    with pytest.raises((PullInputError, NotOnPacs)) as err:
        pull_inputs(store.get(job.id), store, s)
    assert classify(err.value).status in (404, 422)


def test_pacs_down_is_retried_then_pulled(tmp_path, orthanc, example):
    orthanc.upload(example["prior"], example["prior_rtstruct"], example["followup1"])
    s = settings_for(tmp_path / "data", peers_of(orthanc), dicom_pull_attempts=30, dicom_retry_base_s=0.5,
                     dicom_retry_max_s=1.0, dicom_timeout_s=2.0)
    store = JobStore(s.data_dir)
    peer = "web" if orthanc.has_dicomweb else "pacs"
    job = pulled_job(store, s, {"peer": peer, "study_uid": uids(example["prior"])[0]},
                     [{"peer": peer, "series_uid": uids(example["followup1"])[1]}])
    orthanc.stop()
    messages = []
    starter = threading.Timer(3.0, orthanc.start)
    starter.start()
    t0 = time.monotonic()
    record = pull_inputs(store.get(job.id), store, s, progress=lambda st, f, msg, **k: messages.append(msg))
    starter.join()
    assert time.monotonic() - t0 >= 2.5 and all(e["done"] for e in record.pull)
    assert any("retry 2 of 30" in m for m in messages), messages


def test_pacs_down_for_good_fails_503_after_the_attempts(tmp_path, orthanc, example):
    s = settings_for(tmp_path / "data", peers_of(orthanc), dicom_pull_attempts=3, dicom_retry_base_s=0.1,
                     dicom_retry_max_s=0.2, dicom_timeout_s=2.0)
    store = JobStore(s.data_dir)
    orthanc.stop()
    for peer in sorted(peers_of(orthanc)):
        job = pulled_job(store, s, {"peer": peer, "study_uid": "1.2.3"}, [{"peer": peer, "series_uid": "1.2.4"}])
        with pytest.raises(PacsUnavailable, match="gave up after 3 attempts") as err:
            pull_inputs(store.get(job.id), store, s)
        assert classify(err.value) is PACS_UNAVAILABLE and not store.get(job.id).pull[0]["done"]
    assert classify(PullInputError("x")) is INVALID_INPUT
