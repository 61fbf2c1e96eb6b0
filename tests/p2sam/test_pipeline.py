"""The job function on the synthetic CT case and on 2-D pictures: outputs, references, re-runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

import imaging
from p2sam.modelpool import ModelPool
from p2sam.pipeline import dice, run_job
from p2sam.settings import Settings, settings_markdown
from p2sam.spec import JobSpec, TargetSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings(model_dir, tmp_path_factory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=model_dir, min_island_mm2=0.0)


@pytest.fixture(scope="module")
def pool(settings) -> ModelPool:
    return ModelPool(settings)


def _spec(case: dict, **kw) -> JobSpec:
    return JobSpec(prior_image=case["prior"], prior_mask=case["prior_rtstruct"], roi="GTV",
                   targets=[TargetSpec(path=case["followup1"]), TargetSpec(path=case["followup2"], name="visit2")],
                   model="testmodel", n_samples=2, **kw)


@pytest.fixture(scope="module")
def job(example_case, settings, pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    stages = []
    summary = run_job(_spec(example_case), out, pool=pool, settings=settings, progress=lambda s, f, m: stages.append((s, f)))
    return out, summary, stages


def test_every_artifact_is_written(job):
    out, summary, _ = job
    assert [t["target"] for t in summary["targets"]] == ["followup1", "visit2"]
    for name in ("followup1", "visit2"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"rtstruct.dcm", "seg.dcm", "probability_seg.dcm", "mask.nii.gz", "probability.nii.gz",
                "samples.nii.gz", "preview.png", "result.json"} <= files
    assert not list(out.glob(".*tmp*"))


def test_progress_is_monotonic_and_ends_done(job):
    _, _, stages = job
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and stages[-1] == ("done", 1.0)
    assert {"reading", "loading", "segmenting", "writing"} <= {s for s, _ in stages}


def test_rtstruct_references_the_followup_and_matches_the_mask(job, example_case):
    out, _, _ = job
    target = imaging.read_image(example_case["followup1"])
    ds = pydicom.dcmread(out / "followup1" / "rtstruct.dcm")
    assert ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == target.dicom.frame_of_reference_uid
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == target.dicom.frame_of_reference_uid
    uids = set(target.dicom.sop_instance_uids)
    for contour in ds.ROIContourSequence[0].ContourSequence:
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in uids
    nifti_mask = imaging.read_mask(out / "followup1" / "mask.nii.gz", target)
    rt_mask = imaging.read_mask(out / "followup1" / "rtstruct.dcm", target, "GTV")
    assert nifti_mask.any() and dice(nifti_mask, rt_mask) >= 0.99


def test_result_json_reports_prompts_distances_qc(job):
    out, summary, _ = job
    result = json.loads((out / "followup1" / "result.json").read_text())
    assert result["model"]["name"] == "testmodel" and len(result["model"]["sha256"]) == 64
    assert result["registration"]["method"] in ("rigid_registration", "position_matching")
    sl = result["slices"][0]
    assert {"z", "prior_z", "n_pos", "n_neg", "points", "labels", "candidates", "timings_s"} <= set(sl)
    assert {"volume_ml", "flagged_slices", "mean_entropy_bits", "expected_volume_ml"} <= set(result["qc"])
    samples = imaging.read_nifti_array(out / "followup1" / "samples.nii.gz")
    assert samples.shape[0] == 2


def test_rerun_skips_finished_targets(job, example_case, settings, pool):
    out, summary, _ = job
    before = {p: p.stat().st_mtime_ns for p in (out / "followup1").iterdir()}
    (out / "visit2" / "result.json").unlink()  # as if the crash happened before visit2 finished
    (out / ".visit2.tmp-12345").mkdir()  # a half-written attempt
    again = run_job(_spec(example_case), out, pool=pool, settings=settings)
    assert {p: p.stat().st_mtime_ns for p in (out / "followup1").iterdir()} == before
    assert (out / "visit2" / "result.json").is_file() and not list(out.glob(".visit2.tmp-*"))
    assert [t["target"] for t in again["targets"]] == ["followup1", "visit2"]


def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "p2sam.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_segments_pictures(picture_case, model_dir, tmp_path):
    out = tmp_path / "out"
    proc = _cli("segment", "--prior", picture_case["frame0"], "--prior-mask", picture_case["mask0"],
                "--target", picture_case["frame1"], "--out", str(out), "--model", "testmodel", "--samples", "2", "-q",
                env_extra={"P2SAM_MODELS_DIR": str(model_dir)})
    assert proc.returncode == 0, proc.stderr
    files = {p.name for p in (out / "frame1").iterdir()}
    assert {"mask.png", "mask.nii.gz", "probability.nii.gz", "preview.png", "result.json"} <= files
    assert "rtstruct.dcm" not in files
    result = json.loads((out / "frame1" / "result.json").read_text())
    assert any("not a DICOM series" in w for w in result["warnings"])
    assert "frame1" in proc.stdout


def test_cli_unknown_roi_is_one_clear_line(example_case, model_dir, tmp_path):
    proc = _cli("segment", "--prior", example_case["prior"], "--prior-mask", example_case["prior_rtstruct"], "--roi", "Heart",
                "--target", example_case["followup1"], "--out", str(tmp_path / "o"), "--model", "testmodel", "-q",
                env_extra={"P2SAM_MODELS_DIR": str(model_dir)})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Heart" in lines[0] and "GTV" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_model(example_case, tmp_path):
    proc = _cli("segment", "--prior", example_case["prior"], "--prior-mask", example_case["prior_rtstruct"],
                "--target", example_case["followup1"], "--out", str(tmp_path / "o"), "--model", "nosuchmodel", "-q")
    assert proc.returncode == 2 and "unknown model 'nosuchmodel'" in proc.stderr


def test_settings_doc_is_in_sync():
    assert (REPO / "docs" / "settings.md").read_text() == settings_markdown(), "regenerate: p2sam config --markdown > docs/settings.md"
