"""Bad inputs: each gives one ImagingError with a one-line message naming the input."""
import zipfile

import numpy as np
import pytest

from imaging import (EmptyRoiError, FrameOfReferenceError, ImagingError, RoiNotFoundError, UnsafeArchiveError,
                     UnsupportedFileError, list_rois, read_image, read_mask, write_nifti, write_rtstruct,
                     write_seg)

from .conftest import hard_mask


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(err.value)
    assert isinstance(err.value, ImagingError) and "\n" not in msg and "Traceback" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_non_dicom_file(tmp_path):
    bad = tmp_path / "report.dcm"
    bad.write_text("this is a text file, not an image\n" * 20)
    with pytest.raises(UnsupportedFileError) as err:
        read_image(bad)
    one_line(err, "report.dcm", "DICOM")
    with pytest.raises(UnsupportedFileError) as err:
        read_mask(bad, None)
    one_line(err, "report.dcm", "RTSTRUCT")
    with pytest.raises(ImagingError) as err:
        read_image(tmp_path / "missing_folder")
    one_line(err, "missing_folder")


def test_folder_without_images(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImagingError) as err:
        read_image(tmp_path)
    one_line(err, "no DICOM image series")


def test_unknown_roi_lists_existing_ones(dicom_image, tmp_path):
    image = dicom_image("axial")
    path = write_rtstruct(hard_mask(image.shape), image, tmp_path / "rs.dcm", "GTV")
    with pytest.raises(RoiNotFoundError) as err:
        read_mask(path, image, "PTV")
    one_line(err, "rs.dcm", "'PTV'", "'GTV'")
    with pytest.raises(RoiNotFoundError) as err:
        read_mask(path, image, 7)
    one_line(err, "number 7", "1: 'GTV'")
    seg = write_seg(hard_mask(image.shape), image, tmp_path / "seg.dcm", segment_label="GTV")
    with pytest.raises(RoiNotFoundError) as err:
        read_mask(seg, image, "CTV")
    one_line(err, "seg.dcm", "'GTV'")


def test_empty_roi(dicom_image, tmp_path):
    image = dicom_image("axial")
    path = write_rtstruct(np.zeros(image.shape, bool), image, tmp_path / "rs.dcm", "GTV")
    assert list_rois(path) == ["GTV"]
    with pytest.raises(EmptyRoiError) as err:
        read_mask(path, image, "GTV")
    one_line(err, "rs.dcm", "GTV", "no contours")
    tiny = np.zeros(image.shape, bool)
    tiny[1, 5, 5] = True                                       # dropped as an island: nothing left
    with pytest.raises(EmptyRoiError):
        read_mask(write_rtstruct(tiny, image, tmp_path / "tiny.dcm"), image)
    nii = write_nifti(np.zeros(image.shape, bool), image, tmp_path / "empty.nii.gz")
    with pytest.raises(EmptyRoiError) as err:
        read_mask(nii, image)
    one_line(err, "empty.nii.gz")


def test_mask_in_another_frame_of_reference(dicom_image, tmp_path):
    visit1 = dicom_image("axial", seed=1)
    visit2 = dicom_image("axial", seed=2)                   # same grid, new study and Frame of Reference
    assert visit1.dicom.frame_of_reference_uid != visit2.dicom.frame_of_reference_uid
    rs = write_rtstruct(hard_mask(visit1.shape), visit1, tmp_path / "rs.dcm")
    seg = write_seg(hard_mask(visit1.shape), visit1, tmp_path / "seg.dcm")
    for path in (rs, seg):
        with pytest.raises(FrameOfReferenceError) as err:
            read_mask(path, visit2)
        one_line(err, path.name, visit1.dicom.frame_of_reference_uid, visit2.dicom.frame_of_reference_uid)


def test_mask_shape_mismatch_on_write(dicom_image, tmp_path):
    image = dicom_image("axial")
    with pytest.raises(ImagingError) as err:
        write_rtstruct(np.zeros((2, 3, 4), bool), image, tmp_path / "rs.dcm")
    one_line(err, "shape")


@pytest.mark.parametrize("member", ["../../evil.dcm", "/etc/evil.dcm", "ok/../../evil.dcm", "C:/evil.dcm"])
def test_zip_with_path_traversal(tmp_path, member):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/one.dcm", b"x")
        zf.writestr(member, b"payload")
    with pytest.raises(UnsafeArchiveError) as err:
        read_image(archive)
    one_line(err, "upload.zip", "path traversal")
    assert not (tmp_path.parent / "evil.dcm").exists() and not (tmp_path / "evil.dcm").exists()


def test_zip_with_symlink_member(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError) as err:
        read_image(archive)
    one_line(err, "link.zip", "symbolic link")


def test_window_and_slice_errors():
    from imaging import Volume, to_model_input, window
    with pytest.raises(ImagingError) as err:
        window(np.zeros(3), "brain-ish")
    one_line(err, "brain-ish", "default")
    with pytest.raises(ImagingError):
        window(np.zeros(3), (100, 10))
    with pytest.raises(ImagingError) as err:
        to_model_input(Volume(np.zeros((2, 4, 4), np.float32), modality="CT"), 5)
    one_line(err, "slice index 5")
