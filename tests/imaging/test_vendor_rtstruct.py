"""A real vendor structure set on its real CT series (../shared/data/dicom/ibsi1-lung-ct), checked
against an independent reader: plastimatch (Debian package ``plastimatch``; CI installs it).

``RS_GTV.dcm`` (ROI ``GTV-1``, 26 contours) has no ContourImageSequence: our reader must place
every contour by its z position in the Frame of Reference. plastimatch rasterises the same file
onto the same series; the two masks must agree (Dice >= 0.99). Then we write our own RTSTRUCT
of that mask on the same series: dciodvfy must report no error (the autouse fixture in
conftest.py checks every RTSTRUCT/SEG under tmp_path too) and plastimatch must read it back to
the same mask. Skipped with a message where the data or plastimatch is absent.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imaging import read_image, read_mask_detail, write_rtstruct, write_seg
from imaging.rtstruct import rtstruct_rois


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def lung(dicom_data):
    folder = dicom_data / "ibsi1-lung-ct"
    if not (folder / "RS_GTV.dcm").is_file():
        pytest.skip(f"real data not available: {folder} (see ../shared/data/README.md)")
    return folder, read_image(folder / "ct")


@pytest.fixture(scope="session")
def plastimatch():
    """Return rasterise(rtstruct, ct_folder, out_dir) -> {roi name: (z, y, x) bool}."""
    exe = shutil.which("plastimatch")
    if exe is None:
        pytest.skip("plastimatch not installed (Debian package plastimatch; CI installs it)")

    def rasterise(rtstruct: Path, ct_folder: Path, out_dir: Path) -> dict[str, np.ndarray]:
        out_dir.mkdir(parents=True, exist_ok=True)
        run = subprocess.run([exe, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_folder),
                              "--output-prefix", str(out_dir / "roi"), "--prefix-format", "nii.gz"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"plastimatch failed: {run.stdout[-2000:]} {run.stderr[-2000:]}"
        masks = {}
        for f in sorted((out_dir / "roi").glob("*.nii.gz")):
            img = sitk.ReadImage(str(f))  # plastimatch writes LPS geometry; SimpleITK keeps it
            masks[f.name[: -len(".nii.gz")]] = (sitk.GetArrayFromImage(img) > 0, img)
        return masks
    return rasterise


def _same_geometry(img: sitk.Image, image) -> None:
    assert img.GetSize() == tuple(image.shape[::-1])
    assert np.allclose(img.GetOrigin(), image.origin, atol=1e-3)
    assert np.allclose(img.GetSpacing(), image.spacing, atol=1e-4)
    assert np.allclose(np.reshape(img.GetDirection(), (3, 3)), image.direction, atol=1e-6)


def test_vendor_rtstruct_placed_by_position_matches_plastimatch(lung, plastimatch, tmp_path):
    folder, image = lung
    assert image.shape == (60, 201, 204) and np.allclose(image.spacing, [0.977, 0.977, 3.0], atol=1e-3)
    assert [(r.name, r.n_contours) for r in rtstruct_rois(folder / "RS_GTV.dcm")] == [("GTV-1", 26)]
    ours = read_mask_detail(folder / "RS_GTV.dcm", image, "GTV-1")
    # no ContourImageSequence in the file: every contour placed by z, none by reference, none lost
    assert ours.by_reference == 0 and ours.by_position == 26 and ours.skipped == 0
    assert any("placed by position" in n for n in ours.notes)
    theirs = plastimatch(folder / "RS_GTV.dcm", folder / "ct", tmp_path / "pm")
    assert list(theirs) == ["GTV-1"]
    mask, img = theirs["GTV-1"]
    _same_geometry(img, image)
    assert dice(ours.mask, mask) >= 0.99
    zs = np.flatnonzero(ours.mask.any(axis=(1, 2)))
    assert list(zs) == list(np.flatnonzero(mask.any(axis=(1, 2)))) and len(zs) == 26
    per_slice = [dice(a, b) for a, b in zip(ours.mask[zs], mask[zs])]
    assert min(per_slice) >= 0.95, per_slice


def test_our_rtstruct_of_the_vendor_mask_is_valid_and_read_back_by_plastimatch(lung, plastimatch, tmp_path, dciodvfy):
    folder, image = lung
    truth = read_mask_detail(folder / "RS_GTV.dcm", image, "GTV-1").mask
    rs = write_rtstruct(truth, image, tmp_path / "ours.dcm", roi_name="GTV-1", min_island_area_mm2=0)
    dciodvfy(rs)
    seg = write_seg(truth, image, tmp_path / "ours_seg.dcm", segment_label="GTV-1")
    dciodvfy(seg)
    back = read_mask_detail(rs, image, "GTV-1")  # ours references every slice: placed by reference
    assert back.by_reference > 0 and back.by_position == 0 and np.array_equal(back.mask, truth)
    theirs = plastimatch(rs, folder / "ct", tmp_path / "pm")
    mask, img = theirs["GTV-1"]
    _same_geometry(img, image)
    assert dice(truth, mask) >= 0.99
