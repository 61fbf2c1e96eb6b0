"""Reading DICOM series: grouping, sorting along the normal, ignoring non-image objects,
choosing among series, zip input, and refusing tilt / uneven spacing / duplicates."""
import shutil
import zipfile

import numpy as np
import pydicom
import pytest

from imaging import (GeometryError, SeriesSelectionError, Volume, list_series, read_image, write_dicom_series,
                     write_rtstruct, write_seg)

from .conftest import GEOMETRIES, hard_mask, synthetic_volume


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_written_series_reads_back_with_same_geometry_and_hu(kind, tmp_path):
    original = synthetic_volume(kind)
    written = write_dicom_series(original, tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    assert image.same_grid(original) and image.modality == "CT"
    assert np.array_equal(image.array, written.array)
    assert np.abs(image.array - original.array).max() <= 0.5 + 1e-3        # stored as integer HU
    assert image.dicom.sop_instance_uids == written.dicom.sop_instance_uids


def test_slices_sorted_by_position_not_file_name_or_instance_number(tmp_path):
    write_dicom_series(synthetic_volume("oblique"), tmp_path / "ct")
    files = sorted((tmp_path / "ct").iterdir())
    for f, new_name, number in zip(files, ["e", "a", "d", "b", "c"], [3, 9, 1, 7, 5]):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = number
        ds.save_as(tmp_path / "ct" / f"{new_name}.dcm")
        f.unlink()
    image = read_image(tmp_path / "ct")
    assert np.allclose(image.array, read_image(sorted((tmp_path / "ct").glob("*.dcm"))).array)
    assert np.all(np.diff(image.slice_positions()) > 0)
    assert np.allclose(image.origin, synthetic_volume("oblique").origin, atol=1e-3)


def test_non_image_objects_and_other_files_are_ignored(tmp_path, dicom_image):
    image = dicom_image("axial", folder="ct")
    folder = tmp_path / "ct"
    write_rtstruct(hard_mask(image.shape), image, folder / "rs.dcm")
    write_seg(hard_mask(image.shape), image, folder / "seg.dcm")
    (folder / "notes.txt").write_text("not dicom")
    (folder / "sub").mkdir()
    shutil.copy(folder / "rs.dcm", folder / "sub" / "rs_copy.dcm")
    again = read_image(folder)
    assert again.shape == image.shape
    assert any("RTSTRUCT" in n and "SEG" in n for n in again.notes)
    (summary,) = list_series(folder)
    assert (summary.modality, summary.n_slices) == ("CT", image.shape[0])


def test_several_series_need_a_choice(tmp_path):
    a = write_dicom_series(synthetic_volume("axial"), tmp_path / "mix" / "a", series_description="first")
    b = write_dicom_series(synthetic_volume("non_square"), tmp_path / "mix" / "b", series_description="second")
    with pytest.raises(SeriesSelectionError) as err:
        read_image(tmp_path / "mix")
    assert a.dicom.series_instance_uid in str(err.value) and "'second'" in str(err.value)
    chosen = read_image(tmp_path / "mix", series_uid=b.dicom.series_instance_uid)
    assert chosen.shape == b.shape
    assert {s.series_instance_uid for s in list_series(tmp_path / "mix")} == {a.dicom.series_instance_uid,
                                                                              b.dicom.series_instance_uid}
    with pytest.raises(SeriesSelectionError, match="not found"):
        read_image(tmp_path / "mix", series_uid="1.2.3")


def test_zip_single_file_and_file_list_inputs(tmp_path):
    written = write_dicom_series(synthetic_volume("axial"), tmp_path / "ct")
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as zf:
        for f in sorted((tmp_path / "ct").iterdir()):
            zf.write(f, f"nested/dir/{f.name}")
    assert np.array_equal(read_image(tmp_path / "ct.zip").array, written.array)
    one = read_image(sorted((tmp_path / "ct").iterdir())[2])
    assert one.is_2d() and np.array_equal(one.array[0], written.array[2])
    assert np.allclose(one.origin, written.index_to_world([2, 0, 0]), atol=1e-3)


def _edit_positions(folder, shift_per_slice):
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient, float) + k * shift_per_slice]
        ds.save_as(f)


def test_gantry_tilt_is_refused(tmp_path):
    write_dicom_series(synthetic_volume("axial"), tmp_path / "ct")
    _edit_positions(tmp_path / "ct", np.array([0.0, 0.35, 0.0]))          # sheared along y: ~10 degrees
    with pytest.raises(GeometryError, match="gantry tilt"):
        read_image(tmp_path / "ct")


def test_uneven_spacing_and_duplicates_are_refused(tmp_path):
    write_dicom_series(synthetic_volume("axial"), tmp_path / "ct")
    (tmp_path / "ct" / "CT_0003.dcm").unlink()                             # a missing slice
    with pytest.raises(GeometryError, match="uneven slice spacing, from 2.000 to 4.000 mm"):
        read_image(tmp_path / "ct")
    ds = pydicom.dcmread(tmp_path / "ct" / "CT_0002.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "ct" / "dup.dcm")
    with pytest.raises(GeometryError, match="same position"):
        read_image(tmp_path / "ct")


def test_mixed_orientation_is_refused(tmp_path):
    write_dicom_series(synthetic_volume("axial"), tmp_path / "ct")
    ds = pydicom.dcmread(tmp_path / "ct" / "CT_0002.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(tmp_path / "ct" / "CT_0002.dcm")
    with pytest.raises(GeometryError, match="orientations"):
        read_image(tmp_path / "ct")


def test_left_handed_volume_is_written_with_slices_reversed(tmp_path):
    """NIfTI-style volumes can have slice direction = -(row x col); DICOM cannot."""
    base = synthetic_volume("axial")
    left = Volume(array=base.array, origin=base.origin, spacing=base.spacing,
                  direction=base.direction * [1, 1, -1], modality="CT")
    back = read_image(write_dicom_series(left, tmp_path / "ct").source)
    n = left.shape[0]
    assert np.array_equal(back.array, np.round(left.array[::-1]))
    for k in range(n):
        assert np.allclose(back.index_to_world([k, 3, 4]), left.index_to_world([n - 1 - k, 3, 4]), atol=1e-3)
