"""Polygon <-> mask: pixel-edge outlines and even-odd filling are exact inverses."""
import numpy as np

from imaging.raster import mask_to_rings, remove_small_islands, rings_to_mask


def test_random_masks_round_trip_exactly():
    rng = np.random.default_rng(1)
    for _ in range(200):
        shape = tuple(rng.integers(1, 25, size=2))
        m = rng.random(shape) < rng.random()
        rings = mask_to_rings(m)
        assert all(len(r.points) >= 4 for r in rings)
        assert np.array_equal(rings_to_mask([r.points for r in rings], m.shape), m)


def test_hole_is_an_inner_ring_and_island_in_hole_survives():
    m = np.zeros((20, 20), bool)
    m[2:18, 2:18] = True
    m[5:15, 5:15] = False
    m[8:12, 8:12] = True
    rings = mask_to_rings(m)
    assert sorted((r.is_hole, r.area_px) for r in rings) == [(False, 16.0), (False, 256.0), (True, 100.0)]
    assert np.array_equal(rings_to_mask([r.points for r in rings], m.shape), m)


def test_vertices_are_pixel_corners():
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    (ring,) = mask_to_rings(m)
    assert sorted(map(tuple, ring.points)) == [(0.5, 0.5), (0.5, 1.5), (1.5, 0.5), (1.5, 1.5)]


def test_keyhole_polygon_fills_like_a_ring():
    """One polygon whose hole is reached by a zero-width cut (a common vendor encoding)."""
    poly = np.array([(0.5, 0.5), (3.5, 0.5), (3.5, 3.5), (3.5, 6.5), (6.5, 6.5), (6.5, 3.5), (3.5, 3.5),
                     (3.5, 0.5), (9.5, 0.5), (9.5, 9.5), (0.5, 9.5)])
    mask = rings_to_mask([poly], (11, 11))
    expected = np.zeros((11, 11), bool)
    expected[1:10, 1:10] = True
    expected[4:7, 4:7] = False
    assert np.array_equal(mask, expected)


def test_small_islands_removed_with_four_connectivity():
    m = np.zeros((10, 10), bool)
    m[0, 0] = m[1, 1] = True            # diagonal: two 1-pixel islands
    m[5:8, 5:8] = True
    out = remove_small_islands(m, 2)
    assert not out[0, 0] and not out[1, 1] and out[5:8, 5:8].all()
