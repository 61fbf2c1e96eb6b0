"""Fixtures for the DICOM networking tests: a real Orthanc (tests/dicomnet/orthanc.py), the
bundled example case (`p2sam example`), and finished jobs whose RTSTRUCT + SEGs are written by
the same imaging writers the pipeline uses."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import imaging
from p2sam.jobstore import RUNNING, SUCCEEDED, JobStore, new_id
from p2sam.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))

from orthanc import Orthanc, need_orthanc


@pytest.fixture(scope="session")
def example(tmp_path_factory) -> dict:
    """`p2sam example --out DIR`: prior/ + prior_rtstruct.dcm (GTV), followup1/, followup2/."""
    from p2sam.cli import main

    out = tmp_path_factory.mktemp("example") / "demo"
    assert main(["example", "--out", str(out)]) == 0
    return {k: out / v for k, v in {"prior": "prior", "prior_rtstruct": "prior_rtstruct.dcm", "followup1": "followup1",
                                     "followup2": "followup2", "followup1_gtv": "followup1_gtv.nii.gz",
                                     "followup2_gtv": "followup2_gtv.nii.gz"}.items()} | {"root": out}


@pytest.fixture
def orthanc(tmp_path):
    need_orthanc()
    server = Orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


def settings_for(data_dir: Path, peers: dict, **kw) -> Settings:
    base = dict(data_dir=data_dir, dicom_peers=json.dumps(peers), dicom_retry_base_s=0.2, dicom_retry_max_s=1.0,
                dicom_timeout_s=5.0, dicom_send_interval_s=0.2, min_island_mm2=0)
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="session")
def artifacts(example, tmp_path_factory) -> Path:
    """followup1's RTSTRUCT, SEG and probability SEG of the truth mask, written once by the same
    imaging writers as the pipeline (highdicom is slow to start: once per session)."""
    out = tmp_path_factory.mktemp("artifacts")
    image = imaging.read_image(example["followup1"])
    mask = imaging.read_mask(example["followup1_gtv"], image)
    imaging.write_rtstruct(mask, image, out / "rtstruct.dcm", "GTV", (255, 0, 0), algorithm_name="P2SAM", min_island_area_mm2=0)
    imaging.write_seg(mask, image, out / "seg.dcm", segment_label="GTV")
    imaging.write_seg(mask.astype(np.float32) * 0.8, image, out / "probability_seg.dcm", fractional=True,
                      segment_label="GTV", series_description="P2SAM probability", series_number=903)
    return out


def finished_job(store: JobStore, artifacts: Path, target: str = "followup1", destinations: list[str] | None = None):
    """A succeeded job (as the worker leaves it) with a target's RTSTRUCT, SEG and probability SEG."""
    from p2sam.records import JobRecord, TargetResult
    from p2sam.runner import target_summaries

    job_id = new_id()
    out = store.results_dir(job_id) / target
    shutil.copytree(artifacts, out)
    files = {"rtstruct": "rtstruct.dcm", "seg": "seg.dcm", "probability_seg": "probability_seg.dcm"}
    result = TargetResult(target=target, found=True, files=files)
    (out / "result.json").write_text(json.dumps(result.to_json()))
    # None: the job named no destinations (P2SAM_DICOM_DESTINATIONS applies)
    dicom = None if destinations is None else {"destinations": destinations}
    store.create(JobRecord(id=job_id, targets=[target], dicom=dicom))
    store.transition(job_id, RUNNING, {"queued"}, reason="test")
    store.transition(job_id, SUCCEEDED, {RUNNING}, reason="test", results=target_summaries(store.results_dir(job_id), [result]))
    return store.get(job_id)
