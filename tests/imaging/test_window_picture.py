"""CT windowing presets, model input pictures, PNG/JPEG frames and masks."""
import numpy as np
import pytest
from PIL import Image

from imaging import ImagingError, PRESETS, Volume, read_image, read_mask, to_model_input, window, write_picture_mask
from tests.conftest import shared_data


def test_default_window_is_the_papers():
    assert PRESETS["default"] == (-910.0, 590.0)
    out = window(np.array([-2000, -910, -160, 590, 3000], np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("preset", ["lung", "soft_tissue", "bone", (-100, 100)])
def test_presets_and_custom_windows_are_monotonic(preset):
    hu = np.linspace(-1500, 1500, 301)
    out = window(hu, preset)
    assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out.astype(int)) >= 0)


def test_ct_model_input_is_grey_in_three_channels():
    hu = np.random.default_rng(0).normal(0, 400, (3, 8, 9)).astype(np.float32)
    pic = to_model_input(Volume(hu, modality="CT"), 1, "lung")
    assert pic.shape == (8, 9, 3) and pic.dtype == np.uint8
    assert np.array_equal(pic[..., 0], window(hu[1], "lung")) and (pic[..., 0] == pic[..., 2]).all()


def test_png_and_jpeg_frames_pass_through_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "frame.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb).save(tmp_path / "frame.jpg", quality=95)
    v = read_image(tmp_path / "frame.png")
    assert v.shape == (1, 30, 40) and v.is_rgb and v.is_2d()
    assert np.array_equal(to_model_input(v), rgb)
    assert np.array_equal(read_image(tmp_path / "alpha.png").array[0], rgb)
    assert read_image(tmp_path / "frame.jpg").array.shape == (1, 30, 40, 3)


def test_png_mask_round_trip_and_size_check(tmp_path):
    v = Volume(np.zeros((1, 30, 40, 3), np.uint8))
    mask = np.zeros((1, 30, 40), bool)
    mask[0, 3:20, 5:9] = True
    path = write_picture_mask(mask, tmp_path / "m.png")
    assert np.array_equal(read_mask(path, v), mask)
    with pytest.raises(ImagingError, match="m.png"):
        read_mask(path, Volume(np.zeros((1, 31, 40, 3), np.uint8)))


def test_real_endoscopy_frame_and_mask():
    folder = shared_data("cvc-clinicdb", "seq01")
    frame = read_image(folder / "0003.png")
    assert frame.shape == (1, 288, 384) and frame.is_rgb
    mask = read_mask(folder / "0003_mask.png", frame)
    assert mask.shape == (1, 288, 384) and 0 < mask.mean() < 0.5
    assert to_model_input(frame).shape == (288, 384, 3)


def test_rgb_dicom_frame_without_patient_geometry(tmp_path):
    """A VL Endoscopic image (RGB, no ImagePositionPatient) reads as a 2-D RGB picture."""
    from imaging.dicom_common import new_dataset, save

    rgb = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    ds = new_dataset("1.2.840.10008.5.1.4.1.1.77.1.1", "1.2.826.0.1.3680043.8.498.1")
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "ES", "1.2.826.0.1.3680043.8.498.2", "1.2.3"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 20, 30, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    v = read_image(save(ds, tmp_path / "frame.dcm"))
    assert v.is_rgb and v.shape == (1, 20, 30) and v.modality == "ES"
    assert np.array_equal(to_model_input(v), rgb)
    assert any("no patient geometry" in n for n in v.notes)
