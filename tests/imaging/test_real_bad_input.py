"""Bad input made from a real CT series (../shared/data/dicom/ibsi1-lung-ct): a missing slice, two
Frames of Reference in one series, a structure set of another patient. Each must be one clear
error (ImagingError -> HTTP 422 in the service, one line and exit code 2 from the CLI), never a
silent wrong answer. Skipped with a message where the data is absent."""
from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from imaging import FrameOfReferenceError, GeometryError, PatientMismatchError, read_image, read_mask


@pytest.fixture(scope="module")
def lung(dicom_data):
    folder = dicom_data / "ibsi1-lung-ct"
    if not (folder / "RS_GTV.dcm").is_file():
        pytest.skip(f"real data not available: {folder} (see ../shared/data/README.md)")
    return folder


@pytest.fixture(scope="module")
def other_patient_rs(lung, tmp_path_factory) -> Path:
    """The vendor file relabelled as another patient (same Frame of Reference). Kept outside
    tmp_path: conftest's dciodvfy check is for what we write, not for the vendor's file."""
    ds = pydicom.dcmread(lung / "RS_GTV.dcm")
    ds.PatientID, ds.PatientName = "SOMEONE-ELSE", "Else^Someone"
    path = tmp_path_factory.mktemp("vendor_copies") / "other_patient.dcm"
    ds.save_as(path)
    return path


def _copy_series(src: Path, dest: Path, skip: set[str] = frozenset()) -> Path:
    dest.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm")):
        if f.name not in skip:
            shutil.copy(f, dest / f.name)
    return dest


def _cli(capsys, *args: str) -> tuple[int, str]:
    """`p2sam ARGS` in this process (the same main() as the console script; tests/p2sam runs it
    as a subprocess too): exit code and stderr."""
    from p2sam.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def _one_line_error(result: tuple[int, str]) -> str:
    code, err = result
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("p2sam segment: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_series_with_a_missing_slice_is_refused(lung, tmp_path):
    files = sorted((lung / "ct").glob("*.dcm"))
    gap = _copy_series(lung / "ct", tmp_path / "gap", skip={files[30].name})
    with pytest.raises(GeometryError) as err:
        read_image(gap)
    message = str(err.value)
    assert "uneven slice spacing" in message and "missing slices" in message and "3.000 to 6.000 mm" in message
    # the first or last slice missing is not detectable from the files: still a valid, shorter series
    assert read_image(_copy_series(lung / "ct", tmp_path / "short", skip={files[0].name})).shape == (59, 201, 204)


def test_series_with_two_frames_of_reference_is_refused(lung, tmp_path):
    mixed = _copy_series(lung / "ct", tmp_path / "mixed")
    for f in sorted(mixed.glob("*.dcm"))[40:]:
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1234567890"
        ds.save_as(f)
    with pytest.raises(FrameOfReferenceError) as err:
        read_image(mixed)
    message = str(err.value)
    assert "2 different Frames of Reference" in message and "20 slices in 1.2.826.0.1.3680043.8.498.1234567890" in message


def test_structure_set_of_another_patient_is_refused(lung, dicom_data, other_patient_rs):
    image = read_image(lung / "ct")
    # same Frame of Reference: only the patient check can catch it
    with pytest.raises(PatientMismatchError) as err:
        read_mask(other_patient_rs, image, "GTV-1")
    assert "another patient" in str(err.value) and "SOMEONE-ELSE" not in str(err.value)  # identifiers not echoed
    # a real structure set of another patient (Visible Human) on this CT
    with pytest.raises(PatientMismatchError):
        read_mask(dicom_data / "visible-human-ct4" / "RS_Body_SpinalCord.dcm", image, "BODY")
    # the unmodified file still reads
    assert read_mask(lung / "RS_GTV.dcm", image, "GTV-1").any()


def test_cli_gives_one_line_for_real_bad_input(lung, other_patient_rs, tmp_path, capsys):
    files = sorted((lung / "ct").glob("*.dcm"))
    gap = _copy_series(lung / "ct", tmp_path / "gap", skip={files[30].name})
    line = _one_line_error(_cli(capsys, "segment", "--prior", str(gap), "--prior-mask", str(lung / "RS_GTV.dcm"),
                                "--target", str(lung / "ct"), "--out", str(tmp_path / "o1"), "-q"))
    assert "uneven slice spacing" in line
    line = _one_line_error(_cli(capsys, "segment", "--prior", str(lung / "ct"), "--prior-mask", str(other_patient_rs),
                                "--target", str(lung / "ct"), "--out", str(tmp_path / "o2"), "-q"))
    assert "another patient" in line
