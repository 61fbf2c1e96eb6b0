"""2-D registration of pictures (issue 11): a moved picture is followed; a hopeless one falls back to identity."""

from __future__ import annotations

import numpy as np
import pytest

from imaging import register_pictures


def picture(shift=(0, 0), size=(120, 160)):
    """Smooth blobs (an endoscopy-like picture) and a disc mask, both moved by shift = (dy, dx) pixels."""
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float32)
    dy, dx = shift
    img = np.zeros(size, np.float32)
    for cy, cx, s, a in ((40, 50, 14, 120), (80, 110, 20, 90), (30, 120, 9, 60), (90, 40, 11, 70)):
        img += a * np.exp(-(((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) / (2 * s * s)))
    mask = (yy - 40 - dy) ** 2 + (xx - 50 - dx) ** 2 <= 12**2
    return np.repeat(np.clip(img + 40, 0, 255).astype(np.uint8)[..., None], 3, axis=2), mask


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_a_moved_picture_is_followed(kind):
    prior, prior_mask = picture()
    target, target_mask = picture(shift=(6, -9))
    reg = register_pictures(prior, target, kind)
    assert reg.method == kind and reg.ncc_after > reg.ncc_before
    assert dice(prior_mask, target_mask) < 0.5  # where the prior mask lies is wrong ...
    assert dice(reg.map_mask(prior_mask), target_mask) > 0.85  # ... the mapped one is right
    summary = reg.summary()
    assert summary["quality_measure"] == "NCC" and summary["method"] == kind and len(summary["transform"]["parameters"]) >= 3


def test_a_picture_with_nothing_to_align_falls_back_to_identity():
    prior, prior_mask = picture()
    blank = np.full_like(prior, 128)
    reg = register_pictures(prior, blank, "affine")
    assert reg.method == "identity" and reg.reason
    assert np.array_equal(reg.map_mask(prior_mask), prior_mask)


def test_pictures_of_different_sizes_are_matched_by_relative_position():
    prior, prior_mask = picture()
    reg = register_pictures(prior, picture(size=(60, 80))[0])
    assert reg.method == "identity" and "relative position" in reg.reason
    assert reg.map_mask(prior_mask).shape == (60, 80)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="rigid or affine"):
        register_pictures(*[picture()[0]] * 2, kind="bspline")
