"""Settings: validated together when they load, one source for each default, docs/settings.md in sync."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import imaging
from imaging import sources
from p2sam.settings import Settings, apply_process_limits


def test_the_defaults_hold_together():
    s = Settings(_env_file=None)
    assert s.job_soft_time_limit_s < s.job_hard_time_limit_s < s.visibility_timeout_s


@pytest.mark.parametrize("values, named", [
    ({"job_soft_time_limit_s": 2100, "job_hard_time_limit_s": 2100}, "P2SAM_JOB_SOFT_TIME_LIMIT_S (2100) must be below P2SAM_JOB_HARD_TIME_LIMIT_S (2100)"),
    ({"job_hard_time_limit_s": 8000}, "P2SAM_JOB_HARD_TIME_LIMIT_S (8000) must be below P2SAM_VISIBILITY_TIMEOUT_S (7200)"),
    ({"visibility_timeout_s": 60}, "P2SAM_JOB_HARD_TIME_LIMIT_S (2100) must be below P2SAM_VISIBILITY_TIMEOUT_S (60)"),
    ({"dicom_retry_base_s": 700.0}, "P2SAM_DICOM_RETRY_BASE_S (700.0) must be at most P2SAM_DICOM_RETRY_MAX_S (600.0)"),
])
def test_settings_out_of_order_are_refused_with_the_variables_named(values, named):
    with pytest.raises(ValidationError) as err:
        Settings(**values)
    assert named in str(err.value)


def test_out_of_order_environment_fails_when_the_settings_load(monkeypatch):
    monkeypatch.setenv("P2SAM_JOB_SOFT_TIME_LIMIT_S", "3000")
    with pytest.raises(ValidationError, match="P2SAM_JOB_SOFT_TIME_LIMIT_S .3000. must be below P2SAM_JOB_HARD_TIME_LIMIT_S"):
        Settings()


def test_equal_retry_waits_are_fine():
    assert Settings(dicom_retry_base_s=10.0, dicom_retry_max_s=10.0).dicom_retry_max_s == 10.0


def test_transient_retries_and_zip_limit_are_settings(monkeypatch):
    monkeypatch.setenv("P2SAM_TRANSIENT_RETRIES", "0")
    monkeypatch.setenv("P2SAM_MAX_ZIP_MB", "3")
    s = Settings()
    assert s.transient_retries == 0 and s.max_zip_mb == 3
    before = sources.MAX_ZIP_BYTES
    try:
        apply_process_limits(s)
        assert sources.MAX_ZIP_BYTES == 3 << 20
    finally:
        sources.MAX_ZIP_BYTES = before


def test_zip_limit_applies_when_a_zip_is_read(tmp_path):
    import zipfile

    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bin", b"\0" * (2 << 20))
    before = sources.MAX_ZIP_BYTES
    try:
        sources.MAX_ZIP_BYTES = 1 << 20  # what P2SAM_MAX_ZIP_MB=1 sets
        with pytest.raises(imaging.UnsafeArchiveError, match="more than the 1 MB accepted"):
            with sources.extracted_zip(archive):
                pass
        sources.MAX_ZIP_BYTES = 4 << 20
        with sources.extracted_zip(archive) as root:
            assert len(list(root.iterdir())) == 1
    finally:
        sources.MAX_ZIP_BYTES = before


def test_min_island_area_has_one_default():
    """Unset, jobs use imaging's constant (the value every RTSTRUCT writer defaults to)."""
    import inspect

    assert Settings().min_island_mm2 is None
    default = inspect.signature(imaging.write_rtstruct_rois).parameters["min_island_area_mm2"].default
    assert default == imaging.DEFAULT_MIN_ISLAND_AREA_MM2 == 2.0
    assert f"DEFAULT_MIN_ISLAND_AREA_MM2 = {imaging.DEFAULT_MIN_ISLAND_AREA_MM2}" in Settings.model_fields["min_island_mm2"].description


def test_default_sampler_is_one_constant():
    from p2sam.spec import DEFAULT_SAMPLER, JobSpec
    from service.schemas import JobSettingsIn

    assert JobSpec.model_fields["sampler"].default == JobSettingsIn.model_fields["sampler"].default == DEFAULT_SAMPLER
