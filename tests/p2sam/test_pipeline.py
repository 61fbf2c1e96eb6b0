"""The job function on the synthetic CT case and on 2-D pictures: outputs, references, re-runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

import imaging
from p2sam.pipeline import dice, run_job
from p2sam.settings import settings_markdown
from p2sam.spec import JobSpec, TargetSpec

REPO = Path(__file__).resolve().parents[2]


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
    assert [t.target for t in summary.targets] == ["followup1", "visit2"]
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
    assert [t.target for t in again.targets] == ["followup1", "visit2"]


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
    # which outputs a picture gets is said once, as a note, not as warnings per missing file
    assert not any("not written" in w or "DICOM" in w for w in result["warnings"]), result["warnings"]
    assert len(result["notes"]) == 1 and "RTSTRUCT and SEG are written for DICOM series" in result["notes"][0]
    assert proc.stdout.count("note: ") == 1 and "warning: " not in proc.stdout, proc.stdout
    # 2-D: an area in mm², not a volume in mL
    assert result["qc"]["area_mm2"] > 0 and re.search(r"frame1\s+True\s+\d+ mm²", proc.stdout), proc.stdout
    assert " mL" not in proc.stdout
    # the closing line names every file written
    closing = proc.stdout.strip().splitlines()[-1]
    assert closing.startswith("results: ") and all(name in closing for name in files), (closing, files)


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


def test_cli_checks_every_target_before_any_model_work(example_case, tmp_path):
    """A wrong path in the second --target fails at once: nothing segmented, no model loaded."""
    proc = _cli("segment", "--prior", example_case["prior"], "--prior-mask", example_case["prior_rtstruct"], "--roi", "GTV",
                "--target", example_case["followup1"], "--target", str(tmp_path / "no-such-visit"),
                "--out", str(tmp_path / "o"), "--model", "nosuchmodel", "-q")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "target 2/2" in proc.stderr and "no-such-visit" in proc.stderr and "no such file or folder" in proc.stderr
    assert "unknown model" not in proc.stderr  # the targets are checked before the model is even looked up
    assert not (tmp_path / "o" / "followup1").exists()


def test_cli_target_of_another_kind_fails_before_model_work(picture_case, example_case, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    Image.new("L", (160, 120)).save(grey)
    proc = _cli("segment", "--prior", picture_case["frame0"], "--prior-mask", picture_case["mask0"],
                "--target", picture_case["frame1"], "--target", str(grey), "--out", str(tmp_path / "o"),
                "--model", "nosuchmodel", "-q")
    assert proc.returncode == 2 and "target 2/2" in proc.stderr and "grey-level" in proc.stderr, proc.stderr


def test_case_insensitive_roi_match_is_a_warning(example_case, settings, pool, tmp_path):
    spec = JobSpec(prior_image=example_case["prior"], prior_mask=example_case["prior_rtstruct"], roi="gtv",
                   targets=[TargetSpec(path=example_case["followup1"])], model="testmodel", n_samples=0,
                   outputs=["rtstruct"])
    summary = run_job(spec, tmp_path, pool=pool, settings=settings)
    warnings = summary.targets[0].warnings
    assert any("ROI 'gtv' matched the prior's ROI 'GTV'" in w for w in warnings), warnings
    ds = pydicom.dcmread(tmp_path / "followup1" / "rtstruct.dcm")
    assert ds.StructureSetROISequence[0].ROIName == "GTV"  # the prior's own name, not the user's spelling


def test_exact_roi_name_gives_no_warning(job):
    _, summary, _ = job
    assert not any("ROI" in w for t in summary.targets for w in t.warnings)


def test_rtstruct_colour_is_the_preview_contour_colour(job):
    from p2sam.preview import CONTOUR

    out, _, _ = job
    ds = pydicom.dcmread(out / "followup1" / "rtstruct.dcm")
    assert [int(v) for v in ds.ROIContourSequence[0].ROIDisplayColor] == list(CONTOUR)


def test_review_sheet_is_written_with_the_prior_volume(job):
    from PIL import Image

    out, _, _ = job
    result = json.loads((out / "followup1" / "result.json").read_text())
    assert result["files"]["review_sheet"] == "review_sheet.png" and result["files"]["review_sheet_pdf"] == "review_sheet.pdf"
    with Image.open(out / "followup1" / "review_sheet.png") as im:
        assert im.size == (1753, 1240)  # A4 landscape at 150 dpi
    assert (out / "followup1" / "review_sheet.pdf").read_bytes()[:5] == b"%PDF-"
    assert result["prior"]["volume_ml"] > 0


def test_cli_models_says_what_it_does_first_and_lists_no_latent_heads():
    proc = _cli("models")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("reading the model files")
    names = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(" ")]
    assert {"kvasir", "ct_phantom"} <= set(names) and not any(n.endswith("_latent") for n in names), proc.stdout


def test_data_dir_defaults_to_one_per_user_folder_whatever_the_current_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("P2SAM_DATA_DIR", "XDG_DATA_HOME")}
    env.update({"HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = {"capture_output": True, "text": True, "env": env, "timeout": 120}
    made = subprocess.run([sys.executable, "-m", "p2sam.cli", "apikey", "create", "--name", "newcomer", "--scope", "read"],
                          cwd=tmp_path / "a", **run)
    assert made.returncode == 0, made.stderr
    listed = subprocess.run([sys.executable, "-m", "p2sam.cli", "apikey", "list"], cwd=tmp_path / "b", **run)
    assert "newcomer" in listed.stdout, listed.stdout + listed.stderr
    assert (tmp_path / "home" / ".local" / "share" / "p2sam" / "apikeys.json").is_file()
    assert not (tmp_path / "a" / ".p2sam-data").exists()

