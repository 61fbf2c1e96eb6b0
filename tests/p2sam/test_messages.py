"""Messages a newcomer reads: registration warnings with sensible digits."""

from __future__ import annotations

import re

import numpy as np

from imaging import Volume
from p2sam.followup import _plan, _register


def test_poor_registration_warning_has_two_decimals():
    rng = np.random.default_rng(0)
    prior = Volume(array=rng.normal(0, 300, (8, 40, 40)).astype(np.float32), spacing=(2, 2, 3), modality="CT")
    target = Volume(array=rng.normal(0, 300, (8, 40, 40)).astype(np.float32), spacing=(2, 2, 3), modality="CT")
    mask = np.zeros(prior.shape, bool)
    mask[3:5, 15:25, 15:25] = True
    warnings: list[str] = []
    reg = _register(prior, target, warnings)  # once per follow-up (multi-ROI: shared by every structure)
    _, _, registration, mapped = _plan(reg, prior, mask, target, 1, warnings)
    assert registration["quality"] == "poor" and mapped.shape == target.shape
    poor = [w for w in warnings if "registration quality is poor" in w]
    assert len(poor) == 1 and re.search(r"NCC -?\d\.\d\d,", poor[0]), warnings
    assert not re.search(r"\d\.\d{4,}", " ".join(warnings)), warnings


def test_example_pictures_writes_a_2d_case_without_dataset_files(tmp_path):
    from PIL import Image

    from imaging.phantom import write_picture_example

    paths = write_picture_example(tmp_path)
    assert set(paths) == {"frame1", "frame1_mask", "frame2", "frame2_mask"}
    with Image.open(paths["frame1"]) as im:
        assert im.mode == "RGB" and im.size == (288, 240)
    masks = [np.asarray(Image.open(paths[k])) > 0 for k in ("frame1_mask", "frame2_mask")]
    assert all(m.sum() > 1000 for m in masks) and not np.array_equal(masks[0], masks[1])  # the polyp moved
