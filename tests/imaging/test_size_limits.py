"""Headers that claim huge images are refused from the header, before anything is allocated:
every reader (NIfTI .nii and .nii.gz, DICOM series, SEG, PNG) checks the declared size against
imaging.errors (the size limits) and, where the file can tell, against the bytes it holds.

The readers run in a child process whose address space is capped at 1.5 GB: a reader that
allocates what the header claims fails there with MemoryError instead of taking the host down;
``peak_mb`` is the resident memory the read added beyond the imports."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging import ImageTooLargeError, read_image

CAP_BYTES = 1536 << 20
CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import imaging
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    imaging.read_image(sys.argv[1])
    out = {{"error": None}}
except BaseException as exc:
    out = {{"error": type(exc).__name__, "message": str(exc)}}
out["seconds"] = time.perf_counter() - t0
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # beyond the imports
print(json.dumps(out), flush=True)
import os
os._exit(0)  # no interpreter teardown (slow on a loaded machine)
"""


def _read_capped(path: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD.format(cap=CAP_BYTES), str(path)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _nifti_header(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), 1)
    header.set_sform(np.eye(4), 1)
    raw = header.binaryblock + b"\0" * 4  # vox_offset 352
    return raw


def test_nifti_header_claiming_a_huge_4d_image_is_refused_from_the_header(tmp_path):
    """The attack: 64x64x64x30000 int16 (15.7 GB declared) with 1 KB of data."""
    path = tmp_path / "bomb.nii"
    path.write_bytes(_nifti_header((64, 64, 64, 30000)) + b"\1" * 1024)
    out = _read_capped(path)
    assert out["error"] == "ImageTooLargeError", out
    assert "million values" in out["message"] and out["seconds"] < 5 and out["peak_mb"] < 200


def test_nifti_header_claiming_more_data_than_the_file_holds_is_refused(tmp_path):
    """Within the voxel limit (64x64x64x10 int16 = 5 MB declared), but only 1 KB present."""
    path = tmp_path / "short.nii"
    path.write_bytes(_nifti_header((64, 64, 64, 10)) + b"\1" * 1024)
    with pytest.raises(ImageTooLargeError, match=r"declares 5,24\d,\d{3} bytes of image data but the file holds 1,376"):
        read_image(path)


def test_small_gzip_expanding_to_a_huge_volume_is_refused_from_the_header(tmp_path):
    """The attack: a 261 KB .nii.gz of 256x1024x1024 (zeros compress ~1000:1): refused without
    decompressing its data."""
    path = tmp_path / "big.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(_nifti_header((256, 1024, 1024), np.uint8))
        f.write(b"\0" * (4 << 20))  # the first few MB of it are enough to show it is never read
    out = _read_capped(path)
    assert out["error"] == "ImageTooLargeError", out
    assert "256 x 1024 x 1024" in out["message"] and out["peak_mb"] < 200


def test_a_normal_nifti_is_still_read(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    assert read_image(path).shape == (6, 5, 4)


def test_dicom_series_whose_headers_claim_a_huge_volume_is_refused_before_pixels_are_read(tmp_path):
    """Two tiny DICOM files whose Rows/Columns claim 65535 x 65535 (4 G pixels each)."""
    from imaging import Volume, write_dicom_series

    image = Volume(array=np.zeros((2, 8, 8), np.float32), spacing=np.array([1.0, 1.0, 2.0]), origin=np.zeros(3),
                   direction=np.eye(3), modality="CT")
    folder = tmp_path / "series"
    write_dicom_series(image, folder)
    import pydicom

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.Rows, ds.Columns = 65535, 65535
        ds.save_as(f)
    out = _read_capped(folder)
    assert out["error"] == "ImageTooLargeError", out
    assert "2 x 65535 x 65535" in out["message"]


def test_png_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """A PNG header may declare 12000 x 10000 pixels (120 MP, over the 100 MP limit but under
    PIL's own refusal at twice that): refused from the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 10000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    path = tmp_path / "big.png"
    path.write_bytes(png)
    out = _read_capped(path)
    assert out["error"] == "ImageTooLargeError", out
