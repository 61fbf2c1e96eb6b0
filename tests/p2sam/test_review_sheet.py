"""The review sheet, on a hand-made follow-up result (no model): what it shows and where."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from imaging import Volume
from models.engine import Segmentation
from p2sam.followup import FollowupResult, SliceResult
from p2sam.qc import target_qc
from p2sam.review_sheet import axis_letters, change_text, sheet_slices, write_review_sheet


def _segmentation(found: bool) -> Segmentation:
    return Segmentation(method="p2sam", mask=None, logits=None, found=found, chosen=None, candidates=[],
                        candidate_logits=None, timings={})


def make_result(nz: int = 12, size: int = 96, flagged_empty: int = 9):
    """A CT-like volume, a blob on slices 3..8 (new), the prior one slice lower and shifted, samples
    that disagree at the rim, and slice ``flagged_empty`` expected (prior there) but found empty."""
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, (nz, size, size)).astype(np.float32) - 800
    zz, yy, xx = np.mgrid[0:nz, 0:size, 0:size]
    new = ((yy - 44) ** 2 + (xx - 50) ** 2 < (10 - 1.4 * np.abs(zz - 5.5)) ** 2 * 1.2) & (zz >= 3) & (zz <= 8)
    prior = ((yy - 47) ** 2 + (xx - 46) ** 2 < (11 - 1.4 * np.abs(zz - 6.5)) ** 2 * 1.2) & (zz >= 4) & (zz <= flagged_empty)
    hu[new] = 40
    volume = Volume(array=hu, spacing=(1.5, 1.5, 3.0), origin=(-72, -72, -20), modality="CT")
    samples = np.stack([ndimage.binary_dilation(new) if k % 3 == 1 else ndimage.binary_erosion(new) if k % 3 == 2 else new
                        for k in range(6)])
    slices = [SliceResult(z=z, prior_z=z, expected=bool(prior[z].any()), segmentation=_segmentation(bool(new[z].any())),
                          sample_dice=0.7 if z == 3 else 0.95) for z in range(2, nz - 1)]
    result = FollowupResult(mask=new, probability=new.astype(np.float32), samples=samples, slices=slices,
                            registration={"method": "rigid_registration", "quality": "good", "ncc_after": 0.953,
                                          "translation_mm": (1.234, -2.5, 0.0), "rotation_deg": 1.1},
                            prior_on_target=prior)
    return volume, result


def test_axis_letters_follow_the_direction_cosines():
    assert axis_letters(np.array([1.0, 0, 0])) == ("R", "L")  # +column = patient's left: the left edge is R
    assert axis_letters(np.array([0, 1.0, 0])) == ("A", "P")
    assert axis_letters(np.array([-1.0, 0, 0])) == ("L", "R")
    assert axis_letters(np.array([0, 0.1, -0.99])) == ("S", "I")


def test_change_against_the_prior_in_ml_and_percent():
    assert change_text(9.0, 12.0) == "-3.00 mL (-25.0 %)"
    assert change_text(1.0, None) == ""


def test_the_montage_holds_every_slice_with_a_contour_or_a_flag(tmp_path):
    volume, result = make_result()
    qc = target_qc(result, volume)
    flagged = {f["z"] for f in qc["flagged_slices"]}
    assert flagged == {3, 9}  # 3: samples disagree; 9: the prior maps there, nothing found
    shown = sheet_slices(result, qc)
    assert shown == list(range(3, 10)) and flagged <= set(shown)
    files = write_review_sheet(tmp_path, "visit2", volume, result, qc, {"volume_ml": 2.5}, "default", "GTV", model="m")
    assert files == {"review_sheet": "review_sheet.png", "review_sheet_pdf": "review_sheet.pdf"}
    with Image.open(tmp_path / "review_sheet.png") as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert pixels.shape == (1240, 1754, 3)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 60)
    assert red.sum() > 2000  # flagged panels are framed in red


@pytest.mark.parametrize("nz", [1])
def test_a_picture_gets_an_area_and_no_orientation(tmp_path, nz):
    rgb = np.zeros((1, 60, 80, 3), np.uint8)
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 20:40, 30:50] = True
    volume = Volume(array=rgb, modality="XC")
    result = FollowupResult(mask=mask, probability=mask.astype(np.float32), samples=None,
                            slices=[SliceResult(z=0, prior_z=0, expected=True, segmentation=_segmentation(True))],
                            registration={"method": "single_slice"}, prior_on_target=mask)
    qc = target_qc(result, volume)
    assert qc["area_mm2"] == 400.0
    write_review_sheet(tmp_path, "frame2", volume, result, qc, {"area_mm2": 500.0}, "default", "GTV", pdf=False)
    assert (tmp_path / "review_sheet.png").is_file() and not (tmp_path / "review_sheet.pdf").exists()
