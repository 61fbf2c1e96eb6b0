"""One classification of exceptions (p2sam.errors.classify), used by the CLI, the worker, the
embedded runner and the API: a test per class, and the shared use itself (a job asking for the
latent sampler of a model without a latent head is the user's error, 422, not a 500)."""
from __future__ import annotations

import errno
import shutil

import pytest

import imaging
from models import CheckpointError, EngineInputError
from p2sam.cli import user_error
from p2sam.datasets import DatasetError
from p2sam.errors import (INTERNAL, INVALID_INPUT, MODEL_UNAVAILABLE, OUT_OF_GPU_MEMORY, OUT_OF_MEMORY,
                          STORAGE_UNAVAILABLE, JobInputError, classify, public_detail)
from p2sam.modelpool import UnknownModelError


def _validation_error():
    from p2sam.spec import JobSpec

    try:
        JobSpec(prior_image="a", prior_mask="b", targets=[{"path": "c"}], n_samples=-1)
    except Exception as exc:  # pydantic.ValidationError
        return exc
    raise AssertionError("JobSpec accepted n_samples=-1")


def _torch_oom():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


CASES = {
    # name: (exception, meaning, CLI prints one line)
    "imaging": (imaging.RoiNotFoundError("rt.dcm: no ROI named 'CTV'; ROIs are 1: 'GTV'"), INVALID_INPUT, True),
    "imaging-too-large": (imaging.ImageTooLargeError("x.nii: too large"), INVALID_INPUT, True),
    "unsafe-archive": (imaging.UnsafeArchiveError("a.zip: member '../x' points outside"), INVALID_INPUT, True),
    "engine": (EngineInputError("the prior mask is empty"), INVALID_INPUT, True),
    "job-input": (JobInputError("sampler 'latent' needs a latent head"), INVALID_INPUT, True),
    "unknown-model": (UnknownModelError("unknown model 'x'; available: ct_phantom"), INVALID_INPUT, True),
    "dataset": (DatasetError("no cases in /data/x"), INVALID_INPUT, True),
    "validation": (_validation_error(), INVALID_INPUT, True),
    "checkpoint": (CheckpointError("/models/x.pt: sha256 mismatch"), MODEL_UNAVAILABLE, True),
    "memory": (MemoryError(), OUT_OF_MEMORY, False),
    "gpu-memory": (_torch_oom(), OUT_OF_GPU_MEMORY, False),
    "read-only": (OSError(errno.EROFS, "Read-only file system", "/data/jobs/x.json"), STORAGE_UNAVAILABLE, True),
    "disk-full": (OSError(errno.ENOSPC, "No space left on device"), STORAGE_UNAVAILABLE, True),
    "bug": (KeyError("spec"), INTERNAL, False),
    "bug-valueerror": (ValueError("invalid literal for int() with base 10: '²'"), INTERNAL, False),
    "other-oserror": (OSError(errno.EIO, "Input/output error"), INTERNAL, False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_class_has_one_meaning_for_cli_worker_and_api(name):
    exc, meaning, cli_line = CASES[name]
    assert classify(exc) is meaning
    line = user_error(exc)
    assert (line is not None) == cli_line
    if line is not None:
        assert "\n" not in line and line
    detail = public_detail(exc)
    if meaning.status == 422:
        assert detail == line  # the API shows the user the same line as the CLI
    else:  # never the exception's own text (server paths, internals)
        assert detail == meaning.detail and str(exc) not in detail or not str(exc)


def test_validation_error_names_the_field():
    assert user_error(CASES["validation"][0]).startswith("n_samples: ")


def test_statuses():
    assert {m.status for m in (INVALID_INPUT, MODEL_UNAVAILABLE, OUT_OF_MEMORY, STORAGE_UNAVAILABLE, INTERNAL)} == \
        {422, 500, 507, 503}


def test_worker_reports_a_missing_latent_head_as_422_not_500(tmp_path, model_dir, example_case):
    """The bug of issue 14: sampler=latent with a model that has no latent head (ct_phantom, or
    here the random test model) is the caller's to fix; the worker said 500 internal-error."""
    from p2sam.jobstore import FAILED, JobStore, new_id
    from p2sam.settings import Settings
    from p2sam.runner import execute_job

    data = tmp_path / "data"
    store = JobStore(data)
    inputs = data / "uploads" / "u1"
    shutil.copytree(example_case["prior"], inputs / "prior")
    shutil.copy(example_case["prior_rtstruct"], inputs / "rt.dcm")
    shutil.copytree(example_case["followup1"], inputs / "followup1")
    spec = {"prior_image": "uploads/u1/prior", "prior_mask": "uploads/u1/rt.dcm", "roi": "GTV",
            "targets": [{"path": "uploads/u1/followup1", "name": "visit1"}], "model": "testmodel",
            "sampler": "latent", "n_samples": 2, "outputs": ["nifti"]}
    job_id = new_id()
    store.create({"id": job_id, "spec": spec, "targets": ["visit1"], "model": {"requested": "testmodel"}})
    from p2sam.modelpool import ModelPool

    settings = Settings(data_dir=data, models_dir=model_dir, threads=1)
    assert execute_job(job_id, store, settings, pool=ModelPool(settings)) == FAILED
    error = store.get(job_id).error.model_dump()
    assert error["status"] == 422 and error["type"] == "/problems/invalid-input", error
    assert "latent head" in error["detail"]
