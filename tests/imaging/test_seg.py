"""DICOM SEG (highdicom): BINARY mask and FRACTIONAL probability round trips; dciodvfy."""
import numpy as np
import pydicom
import pytest

from imaging import GeometryError, list_rois, read_mask, read_mask_detail, write_seg
from imaging.seg import read_seg_segment

from .conftest import GEOMETRIES, dice_per_slice, hard_mask


def probability(shape, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(shape).astype(np.float32)
    p[hard_mask(shape)] = 0.97
    return p


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_binary_round_trip(kind, dicom_image, tmp_path):
    image = dicom_image(kind)
    mask = hard_mask(image.shape)
    path = write_seg(mask, image, tmp_path / "seg.dcm", segment_label="GTV")
    detail = read_mask_detail(path, image, "GTV")
    assert min(dice_per_slice(mask, detail.mask)) >= 0.99
    assert np.array_equal(detail.mask, mask)
    assert detail.by_reference == image.shape[0]
    assert list_rois(path) == ["GTV"]


@pytest.mark.parametrize("kind", ["axial", "oblique", "single_slice"])
def test_fractional_round_trip(kind, dicom_image, tmp_path):
    image = dicom_image(kind)
    p = probability(image.shape)
    path = write_seg(p, image, tmp_path / "seg.dcm", fractional=True, segment_label="GTV probability")
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    back = read_seg_segment(path, image, 1, probability=True).mask
    assert np.abs(back - p).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(read_mask(path, image), p >= 0.5)


def test_seg_references_image_and_keeps_study(dicom_image, tmp_path):
    image = dicom_image("axial")
    ds = pydicom.dcmread(write_seg(hard_mask(image.shape), image, tmp_path / "seg.dcm", algorithm_version="2"))
    assert ds.StudyInstanceUID == image.dicom.study_instance_uid
    assert ds.FrameOfReferenceUID == image.dicom.frame_of_reference_uid
    index = image.dicom.slice_index_of()
    seen = set()
    for f in ds.PerFrameFunctionalGroupsSequence:       # each frame: its source slice and that slice's position
        k = index[f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = np.array(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.allclose(position, image.index_to_world([k, 0, 0]), atol=1e-3)
        seen.add(k)
    assert seen == set(range(image.shape[0]))
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("P2SAM", "2")


def test_bad_values_refused(dicom_image, tmp_path):
    image = dicom_image("axial")
    with pytest.raises(GeometryError, match="within"):
        write_seg(np.full(image.shape, 1.5, np.float32), image, tmp_path / "s.dcm", fractional=True)
    with pytest.raises(GeometryError, match="float"):
        write_seg(np.zeros(image.shape, np.float32), image, tmp_path / "s.dcm")
    with pytest.raises(GeometryError, match="shape"):
        write_seg(np.zeros((1, 2, 3), bool), image, tmp_path / "s.dcm")


@pytest.mark.parametrize("kind", ["axial", "oblique", "non_square", "single_slice"])
def test_seg_passes_dciodvfy(kind, dicom_image, tmp_path, dciodvfy):
    image = dicom_image(kind)
    dciodvfy(write_seg(hard_mask(image.shape), image, tmp_path / "b.dcm"))
    dciodvfy(write_seg(probability(image.shape), image, tmp_path / "f.dcm", fractional=True))
