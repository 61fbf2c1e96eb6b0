"""Fixtures for the imaging tests: synthetic DICOM series of several geometries, hard
masks (holes, rings, islands, diagonal contacts), dciodvfy, and the real DICOM files in
../shared/data/dicom (tests skip with a message when those are absent)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging import Volume, read_image, write_dicom_series
from tests.conftest import shared_data


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


# direction columns: +col (row direction), +row (column direction), +slice, all LPS
GEOMETRIES = {
    "axial": dict(shape=(5, 40, 48), spacing=(0.8, 0.8, 2.0), origin=(-20.0, -15.0, 100.0), direction=np.eye(3)),
    "oblique": dict(shape=(5, 40, 48), spacing=(1.0, 1.0, 1.5), origin=(10.0, -30.0, -50.0),
                    direction=rotation([1, 2, 3], 25)),
    "non_square": dict(shape=(4, 36, 50), spacing=(0.6, 1.4, 3.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3)),
    "sagittal": dict(shape=(4, 40, 44), spacing=(0.9, 1.1, 2.5), origin=(30.0, -20.0, 40.0),
                     direction=np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)),
    "single_slice": dict(shape=(1, 40, 48), spacing=(0.7, 0.7, 3.0), origin=(-5.0, 5.0, 12.5), direction=np.eye(3)),
}


def synthetic_volume(kind: str, seed: int = 0) -> Volume:
    g = GEOMETRIES[kind]
    rng = np.random.default_rng(seed)
    hu = rng.normal(0, 200, g["shape"]).astype(np.float32)
    return Volume(array=hu, origin=g["origin"], spacing=g["spacing"], direction=g["direction"], modality="CT",
                  source=kind)


def hard_mask(shape, seed: int = 0) -> np.ndarray:
    """Per slice: a ring (hole) with an island inside the hole, one-pixel islands, two
    pixels touching only diagonally, a blob touching the border; one empty slice when
    there are 3 or more."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    m = np.zeros(shape, dtype=bool)
    for k in range(nz):
        if nz >= 3 and k == nz - 1:
            continue
        cy, cx = ny / 2 + rng.integers(-2, 3), nx / 2 + rng.integers(-2, 3)
        r = np.hypot(yy - cy, xx - cx)
        m[k] |= (r <= 12 + k) & (r >= 6)
        m[k] |= r <= 2.5
        m[k, 2, 2] = m[k, 2, nx - 3] = True             # one-pixel islands
        m[k, ny - 4, 3] = m[k, ny - 3, 4] = True         # diagonal contact only
        m[k, : 3 + k, nx // 2: nx // 2 + 4] = True        # touches the image border
    return m


def dice_per_slice(a: np.ndarray, b: np.ndarray) -> list[float]:
    out = []
    for x, y in zip(a, b):
        s = x.sum() + y.sum()
        out.append(1.0 if s == 0 else 2.0 * (x & y).sum() / s)
    return out


@pytest.fixture
def dicom_image(tmp_path):
    """Factory: write a synthetic CT series of a GEOMETRIES kind, read it back (Volume
    with DICOM identity)."""
    def make(kind: str, seed: int = 0, folder: str | None = None) -> Volume:
        out = tmp_path / (folder or f"ct_{kind}_{seed}")
        write_dicom_series(synthetic_volume(kind, seed), out, uid_entropy=f"test-{kind}-{seed}-{out.name}")
        return read_image(out)
    return make


def dciodvfy_errors(exe: str, path: Path) -> list[str]:
    out = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="session")
def dciodvfy():
    """Return check(path): dciodvfy must report no 'Error' line. Skips if not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; CI installs it)")

    def check(path: Path) -> None:
        errors = dciodvfy_errors(exe, path)
        assert not errors, f"dciodvfy reports errors for {Path(path).name}: {errors}"
    return check


@pytest.fixture
def dciodvfy_optional():
    """Like ``dciodvfy`` but a no-op (not a skip) when it is not installed, for tests whose
    main subject is something else."""
    exe = shutil.which("dciodvfy")

    def check(path: Path) -> None:
        if exe is not None:
            errors = dciodvfy_errors(exe, path)
            assert not errors, f"dciodvfy reports errors for {Path(path).name}: {errors}"
    return check


@pytest.fixture(autouse=True)
def every_written_rtstruct_and_seg_passes_dciodvfy(tmp_path):
    """After each test, validate every RTSTRUCT and SEG it wrote under tmp_path (when
    dciodvfy is installed)."""
    yield
    exe = shutil.which("dciodvfy")
    if exe is None:
        return
    for f in sorted(tmp_path.rglob("*.dcm")):
        try:
            modality = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality")
        except Exception:
            continue
        if modality in ("RTSTRUCT", "SEG"):
            errors = dciodvfy_errors(exe, f)
            assert not errors, f"dciodvfy reports errors for {f.name}: {errors}"


@pytest.fixture(scope="session")
def dicom_data() -> Path:
    """../shared/data/dicom (skip with a message when absent)."""
    return shared_data("dicom")
