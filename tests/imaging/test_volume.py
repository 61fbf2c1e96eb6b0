"""Volume geometry: index (z, y, x) <-> LPS world, affine, grid comparison."""
import numpy as np
import pytest

from imaging import GeometryError, Volume
from imaging.volume import direction_from_iop

from .conftest import GEOMETRIES, synthetic_volume


@pytest.mark.parametrize("kind", sorted(GEOMETRIES))
def test_index_world_round_trip_and_affine_agree(kind):
    v = synthetic_volume(kind)
    idx = np.array([[0, 0, 0], [1, 2, 3], [v.shape[0] - 1, v.shape[1] - 1, v.shape[2] - 1], [0.5, -0.5, 2.25]])
    world = v.index_to_world(idx)
    assert np.allclose(v.world_to_index(world), idx)
    homog = np.c_[idx[:, ::-1], np.ones(len(idx))]          # affine takes (x, y, z) = (col, row, slice)
    assert np.allclose((v.affine() @ homog.T).T[:, :3], world)
    assert np.allclose(world[0], v.origin)


def test_axes_follow_dicom_convention():
    """+col moves along IOP[0:3] by spacing x, +row along IOP[3:6] by spacing y."""
    v = Volume(np.zeros((2, 3, 4)), origin=(1, 2, 3), spacing=(0.5, 2.0, 3.0))
    assert np.allclose(v.index_to_world([0, 0, 1]), [1.5, 2, 3])     # one column -> +x (patient left)
    assert np.allclose(v.index_to_world([0, 1, 0]), [1, 4, 3])       # one row -> +y (posterior)
    assert np.allclose(v.index_to_world([1, 0, 0]), [1, 2, 6])       # one slice -> +z (superior)


def test_direction_from_iop_builds_right_handed_frame():
    d = direction_from_iop([1, 0, 0, 0, 0, -1])                      # coronal
    assert np.allclose(d[:, 2], [0, 1, 0])
    with pytest.raises(GeometryError, match="ImageOrientationPatient"):
        direction_from_iop([1, 0, 0, 1, 0, 0])


def test_same_grid_and_2d_flags():
    a = synthetic_volume("axial")
    b = a.with_array(np.zeros(a.shape))
    assert a.same_grid(b) and not a.is_2d()
    b.origin = b.origin + 0.01
    assert not a.same_grid(b)
    assert synthetic_volume("single_slice").is_2d()
    rgb = Volume(np.zeros((1, 4, 5, 3), np.uint8))
    assert rgb.is_rgb and rgb.shape == (1, 4, 5)


def test_bad_arrays_and_spacing_are_refused():
    with pytest.raises(GeometryError):
        Volume(np.zeros((4, 5)))
    with pytest.raises(GeometryError, match="spacing"):
        Volume(np.zeros((1, 4, 5)), spacing=(1, 0, 1))
