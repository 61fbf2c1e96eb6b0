"""NIfTI: RAS affine from LPS geometry, mask/probability/4-D round trips, resampling onto
the image grid (offset, flipped, finer grids), refusal without overlap."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from imaging import GeometryError, Volume, read_mask, read_nifti_array, write_nifti
from imaging.nifti import nifti_affine, read_nifti

from .conftest import GEOMETRIES, dice_per_slice, hard_mask, synthetic_volume


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_mask_round_trip_and_affine_matches_dicom_geometry(kind, tmp_path):
    image = synthetic_volume(kind)
    mask = hard_mask(image.shape)
    path = write_nifti(mask, image, tmp_path / "m.nii.gz")
    back = read_mask(path, image)
    assert min(dice_per_slice(mask, back)) >= 0.99 and np.array_equal(back, mask)
    # independent reader: SimpleITK reports LPS geometry identical to the DICOM one
    itk = sitk.ReadImage(str(path))
    assert np.allclose(itk.GetOrigin(), image.origin, atol=1e-3)
    assert np.allclose(itk.GetSpacing(), image.spacing, atol=1e-5)
    assert np.allclose(np.reshape(itk.GetDirection(), (3, 3)), image.direction, atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(itk).astype(bool), mask)       # ITK arrays are (z, y, x) too


def test_axial_lps_image_is_stored_las_like_dcm2niix():
    image = synthetic_volume("axial")
    assert nib.aff2axcodes(nifti_affine(image)) == ("L", "P", "S")


def test_probability_and_samples_round_trip(tmp_path):
    image = synthetic_volume("oblique")
    rng = np.random.default_rng(0)
    prob = rng.random(image.shape).astype(np.float32)
    samples = rng.random((4,) + image.shape) > 0.5
    assert np.array_equal(read_nifti_array(write_nifti(prob, image, tmp_path / "p.nii.gz"), image), prob)
    back = read_nifti_array(write_nifti(samples, image, tmp_path / "s.nii.gz"), image)
    assert back.shape == samples.shape and np.array_equal(back.astype(bool), samples)
    assert nib.load(str(tmp_path / "s.nii.gz")).shape == image.shape[::-1] + (4,)


def test_image_round_trip(tmp_path):
    image = synthetic_volume("sagittal")
    back = read_nifti(write_nifti(image.array, image, tmp_path / "ct.nii.gz"))
    assert back.same_grid(image) and np.array_equal(back.array, image.array)


def _as_volume(image, array, origin_shift_index=(0, 0, 0)):
    shifted = image.index_to_world(np.array(origin_shift_index, dtype=float))
    return Volume(array=array, origin=shifted, spacing=image.spacing, direction=image.direction)


def test_mask_on_other_grid_is_resampled_exactly(tmp_path):
    image = synthetic_volume("oblique")
    mask = hard_mask(image.shape)
    # 1) a crop starting 1 slice / 3 rows / 5 cols in
    crop = mask[1:, 3:, 5:]
    write_nifti(crop, _as_volume(image, crop, (1, 3, 5)), tmp_path / "crop.nii.gz")
    expected = np.zeros_like(mask)
    expected[1:, 3:, 5:] = crop
    assert np.array_equal(read_mask(tmp_path / "crop.nii.gz", image), expected)
    # 2) the same data stored with the columns reversed (affine says so): no flip on reading
    flipped = Volume(array=mask[:, :, ::-1], origin=image.index_to_world([0, 0, image.shape[2] - 1]),
                     spacing=image.spacing, direction=image.direction * [-1, 1, 1])
    write_nifti(flipped.array, flipped, tmp_path / "flip.nii.gz")
    assert np.array_equal(read_mask(tmp_path / "flip.nii.gz", image), mask)
    # 3) twice finer in-plane
    fine = np.repeat(np.repeat(mask, 2, axis=1), 2, axis=2)
    fine_vol = Volume(array=fine, origin=image.index_to_world([0, -0.25, -0.25]),
                      spacing=image.spacing * [0.5, 0.5, 1], direction=image.direction)
    write_nifti(fine, fine_vol, tmp_path / "fine.nii.gz")
    assert min(dice_per_slice(mask, read_mask(tmp_path / "fine.nii.gz", image))) >= 0.99


def test_mask_without_overlap_is_refused(tmp_path):
    image = synthetic_volume("axial")
    far = Volume(array=hard_mask(image.shape), origin=image.origin + [0, 0, 500], spacing=image.spacing)
    write_nifti(far.array, far, tmp_path / "far.nii.gz")
    with pytest.raises(GeometryError, match="does not overlap"):
        read_mask(tmp_path / "far.nii.gz", image)


def test_labels(tmp_path):
    image = synthetic_volume("axial")
    labels = np.zeros(image.shape, np.uint8)
    labels[1, 5:10, 5:10] = 1
    labels[2, 20:30, 20:30] = 2
    path = write_nifti(labels, image, tmp_path / "l.nii.gz")
    assert np.array_equal(read_mask(path, image, 2), labels == 2)
    assert np.array_equal(read_mask(path, image), labels > 0)


def test_scaled_nifti_ct_reads_as_hu_once(tmp_path):
    """scl_slope/scl_inter are applied exactly once; values below -200 make it CT."""
    image = synthetic_volume("axial")
    raw = np.round(image.array + 1024).astype(np.int16)
    img = nib.Nifti1Image(raw.transpose(2, 1, 0), nifti_affine(image))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    ct = read_nifti(tmp_path / "ct.nii.gz")
    assert np.allclose(ct.array, raw - 1024.0) and ct.modality == "CT"
