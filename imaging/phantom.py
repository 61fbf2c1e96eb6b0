"""Synthetic, seeded CT-like chest phantom with a lesion (GTV) followed over visits.

No external data. Anatomy is defined analytically in *patient* coordinates (mm): body
outline with a subcutaneous fat layer, two lungs (~-820 HU) with vessels, an anterior
mediastinal fat pad, a vertebra (~700 HU) and spinal canal; the table is fixed in
*scanner* coordinates. Each visit places the patient with a small rigid pose change
(translation a few mm, rotation about the body axis a few degrees), and the lesion
(30-60 HU, irregular blob in a lung or in mediastinal fat) moves, shrinks and deforms.
Images are sampled on an axial scanner grid (LPS, array (z, y, x)), blurred slightly and
given Gaussian noise. GTV masks are the lesion's inside at voxel centres.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import ndimage

from .volume import Volume
from .window import window


@dataclass
class PhantomCase:
    """In-memory case: per visit a CT Volume (float32 HU) and a GTV mask (z, y, x) bool."""

    seed: int
    images: list[Volume]
    gtv: list[np.ndarray]
    poses: list[dict]
    lesion_site: str


def _anatomy(rng: np.random.Generator) -> dict:
    a, b = rng.uniform(115, 150), rng.uniform(80, 105)
    vessels = []
    for _ in range(int(rng.integers(30, 60))):
        side = rng.choice([-1, 1])
        start = np.array([side * a * rng.uniform(0.3, 0.6), b * rng.uniform(-0.5, 0.35), rng.uniform(-40, 40)])
        direction = rng.normal(size=3) * np.array([1, 1, 2.5])
        vessels.append((start, direction / np.linalg.norm(direction) * rng.uniform(15, 50),
                        rng.uniform(0.8, 2.2), rng.uniform(350, 700)))
    return dict(a=a, b=b, fat=rng.uniform(6, 18), wobble=rng.uniform(0, 0.04), wobble_phase=rng.uniform(0, 6.3),
                lung_x=rng.uniform(0.42, 0.5), lung_ax=rng.uniform(0.27, 0.33), lung_by=rng.uniform(0.5, 0.62),
                vessels=vessels, table=True)


def _lesion_states(rng: np.random.Generator, anat: dict, n_visits: int) -> tuple[str, list[dict]]:
    a, b = anat["a"], anat["b"]
    site = "lung" if rng.random() < 0.75 else "mediastinum"
    if site == "lung":
        side = rng.choice([-1, 1])
        r = rng.uniform(8, 16)
        theta, rho = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45)
        centre = np.array([side * anat["lung_x"] * a + rho * np.cos(theta) * anat["lung_ax"] * a * 0.8,
                           -0.1 * b + rho * np.sin(theta) * anat["lung_by"] * b * 0.8, rng.uniform(-6, 6)])
    else:
        r = rng.uniform(7, 10)
        centre = np.array([rng.uniform(-4, 4), -0.38 * b + rng.uniform(-4, 4), rng.uniform(-5, 5)])
    axes = r * rng.uniform(0.8, 1.2, size=3)
    harmonics = [(v / np.linalg.norm(v), int(k), amp, ph) for v, k, amp, ph in zip(
        rng.normal(size=(4, 3)), rng.integers(2, 4, size=4), rng.uniform(0, 0.14, size=4), rng.uniform(0, 6.3, size=4))]
    states, hu = [], rng.uniform(30, 60)
    for _ in range(n_visits):
        states.append(dict(centre=centre.copy(), axes=axes.copy(), harmonics=list(harmonics), hu=hu))
        centre = centre + rng.normal(0, 2.0, size=3) * np.array([1, 1, 0.7])
        axes = np.maximum(axes * rng.uniform(0.75, 0.93), 4.5)
        harmonics = [(u, k, float(np.clip(amp + rng.normal(0, 0.04), 0, 0.22)), ph + rng.normal(0, 0.3))
                     for u, k, amp, ph in harmonics]
    return site, states


def _pose(rng: np.random.Generator) -> dict:
    return dict(translation_mm=tuple(float(v) for v in rng.normal(0, [4.0, 3.0, 3.0])),
                rotation_deg=float(np.clip(rng.normal(0, 2.0), -4, 4)))


def _lesion_inside(p: np.ndarray, s: dict) -> np.ndarray:
    d = p - s["centre"]
    rho = np.sqrt(np.sum((d / s["axes"]) ** 2, axis=1))
    u = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    g = np.ones(len(p))
    for v, k, amp, ph in s["harmonics"]:
        g += amp * np.cos(k * np.arccos(np.clip(u @ v, -1, 1)) + ph)
    return rho <= g


def _render(anat: dict, lesion: dict, pose: dict, geometry: Volume, rng: np.random.Generator,
            noise_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """HU image and GTV mask on ``geometry``'s grid (its array only gives the shape)."""
    shape = geometry.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = geometry.index_to_world(idx)
    t = np.radians(pose["rotation_deg"])
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    p = (world - np.array(pose["translation_mm"])) @ rot  # = R^T (w - t): scanner -> patient
    x, y, z = p.T
    a, b = anat["a"] * (1 - 0.001 * z), anat["b"] * (1 - 0.001 * z)
    phi = np.arctan2(y / b, x / a)
    r_body = np.sqrt((x / a) ** 2 + (y / b) ** 2) / (1 + anat["wobble"] * np.cos(3 * phi + anat["wobble_phase"]))
    hu = np.full(len(p), -1000.0)
    table_top = anat["b"] + 12
    hu[(np.abs(world[:, 0]) < 175) & (world[:, 1] > table_top) & (world[:, 1] < table_top + 8)] = -250.0
    body = r_body <= 1
    hu[body] = -100.0
    inner = np.sqrt((x / (a - anat["fat"])) ** 2 + (y / (b - anat["fat"])) ** 2) <= 1
    hu[inner] = 40.0
    lung = np.zeros(len(p), dtype=bool)
    for side in (-1, 1):
        lx, ly = side * anat["lung_x"] * a, -0.1 * b
        lung |= ((x - lx) / (anat["lung_ax"] * a * (1 - 0.002 * z))) ** 2 + ((y - ly) / (anat["lung_by"] * b)) ** 2 <= 1
    lung &= inner
    hu[lung] = -820.0
    lp = p[lung]
    vessel = np.zeros(len(lp))
    for start, vec, sigma, amp in anat["vessels"]:
        s = np.clip(((lp - start) @ vec) / (vec @ vec), 0, 1)
        d2 = np.sum((lp - start - s[:, None] * vec) ** 2, axis=1)
        vessel = np.maximum(vessel, amp * np.exp(-d2 / (2 * sigma**2)))
    hu[lung] += vessel
    hu[(((x / (0.15 * a)) ** 2 + ((y + 0.38 * b) / (0.2 * b)) ** 2) <= 1) & inner] = -90.0
    hu[(x**2 + (y - 0.55 * b) ** 2) <= (0.15 * b) ** 2] = 700.0
    arch = np.sqrt(x**2 + (y - 0.8 * b) ** 2)
    hu[(arch <= 0.13 * b) & inner] = 600.0
    hu[arch <= 0.065 * b] = 30.0
    gtv = _lesion_inside(p, lesion) & inner
    hu[gtv] = lesion["hu"]
    img = ndimage.gaussian_filter(hu.reshape(shape), sigma=(0, 0.6, 0.6))
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma=(0, 0.5, 0.5))
    img += noise * (noise_hu / max(float(noise.std()), 1e-6))
    return img.astype(np.float32), gtv.reshape(shape)


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], z_centre: float = 0.0) -> Volume:
    """Axial scanner grid centred on (0, 0, z_centre) LPS; array is a shape placeholder."""
    nz, ny, nx = shape
    sx, sy, sz = spacing
    origin = np.array([-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, z_centre - (nz - 1) / 2 * sz])
    return Volume(array=np.broadcast_to(np.float32(0), shape), origin=origin, spacing=spacing, modality="CT")


def make_case(seed: int = 0, n_visits: int = 3, shape: tuple[int, int, int] = (16, 128, 128),
              spacing: tuple[float, float, float] = (2.5, 2.5, 3.0)) -> PhantomCase:
    """Seeded case with ``n_visits`` CT visits (float32 HU, (z, y, x), spacing (x, y, z)
    mm, axial LPS grid centred on the scanner origin) and their GTV masks."""
    rng = np.random.default_rng([seed, 20240])
    anat = _anatomy(rng)
    site, states = _lesion_states(rng, anat, n_visits)
    noise_hu = rng.uniform(8, 25)
    images, masks, poses = [], [], []
    for state in states:
        pose = _pose(rng)
        grid = _grid(shape, spacing)
        hu, gtv = _render(anat, state, pose, grid, rng, noise_hu)
        images.append(grid.with_array(hu, modality="CT"))
        masks.append(gtv)
        poses.append(pose)
    return PhantomCase(seed=seed, images=images, gtv=masks, poses=poses, lesion_site=site)


def iter_training_slices(n_cases: int | None = None, seed: int = 0, size: int = 128, slices_per_case: int = 3,
                         preset: "str | tuple[float, float]" = "default",
                         count: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(image (H, W, 3) uint8 windowed with preset, lesion mask (H, W) bool)``:
    axial slices through the lesion of random cases (H = W = ``size``), with varied body
    size, pixel spacing (1.8-3.0 mm), noise, lesion size/shape/site/contrast. Stops after
    ``n_cases`` cases and/or ``count`` pairs (endless when both are None). Only 2-D planes
    are rendered, so this is cheap (~10 ms a pair)."""
    i, produced = 0, 0
    while (n_cases is None or i < n_cases) and (count is None or produced < count):
        rng = np.random.default_rng([seed, i, 7])
        i += 1
        anat = _anatomy(rng)
        _, (state,) = _lesion_states(rng, anat, 1)
        pose, noise_hu, px = _pose(rng), rng.uniform(6, 30), rng.uniform(1.8, 3.0)
        cz, rz = state["centre"][2] + pose["translation_mm"][2], state["axes"][2]
        for z in cz + rng.uniform(-0.7, 0.7, size=slices_per_case) * rz:
            hu, gtv = _render(anat, state, pose, _grid((1, size, size), (px, px, 1.0), float(z)), rng, noise_hu)
            if gtv.any() and (count is None or produced < count):
                produced += 1
                yield np.repeat(window(hu[0], preset)[:, :, None], 3, axis=2), gtv[0]


def write_example_case(out_dir, seed: int = 0, shape: tuple[int, int, int] = (16, 128, 128),
                       spacing: tuple[float, float, float] = (2.5, 2.5, 3.0)) -> dict:
    """Write a small 3-visit example case and return its paths:
    ``prior/`` CT series + ``prior_rtstruct.dcm`` (ROI ``GTV``), ``followup1/``,
    ``followup2/`` CT series, and ground truth ``{prior,followup1,followup2}_gtv.nii.gz``.
    Each visit is its own study with its own Frame of Reference (like a real scanner);
    one patient. UIDs are deterministic for a seed. Also writes ``case.json``."""
    from .dicom_write import write_dicom_series
    from .nifti import write_nifti
    from .rtstruct import write_rtstruct

    out = Path(out_dir)
    case = make_case(seed, 3, shape, spacing)
    patient = {"PatientName": "Phantom^Synthetic", "PatientID": f"PHANTOM-{seed:04d}", "PatientSex": "O",
               "PatientBirthDate": ""}
    names = ["prior", "followup1", "followup2"]
    paths: dict[str, str] = {}
    volumes = []
    for v, (name, image, gtv) in enumerate(zip(names, case.images, case.gtv)):
        study = {"StudyDate": f"2024{1 + 3 * v:02d}15", "StudyTime": "100000", "StudyID": f"V{v}",
                 "AccessionNumber": f"PH{seed:04d}{v}", "StudyDescription": f"Synthetic phantom visit {v}",
                 "ReferringPhysicianName": ""}
        written = write_dicom_series(image, out / name, patient, study, series_description=f"Phantom CT visit {v}",
                                     uid_entropy=f"p2sam-phantom-{seed}-{name}")
        volumes.append(written)
        paths[name] = str(out / name)
        paths[f"{name}_gtv"] = str(write_nifti(gtv, written, out / f"{name}_gtv.nii.gz"))
    paths["prior_rtstruct"] = str(write_rtstruct(
        case.gtv[0], volumes[0], out / "prior_rtstruct.dcm", "GTV", (255, 0, 0), interpreted_type="GTV",
        algorithm_name="p2sam-phantom-ground-truth", algorithm_version="1", min_island_area_mm2=0,
        uid_entropy=f"p2sam-phantom-{seed}-rtstruct"))
    summary = {"seed": seed, "shape_zyx": list(shape), "spacing_xyz_mm": list(spacing), "lesion_site": case.lesion_site,
               "gtv_volume_ml": [float(m.sum() * np.prod(spacing) / 1000) for m in case.gtv],
               "gtv_slices": [[int(k) for k in np.flatnonzero(m.any(axis=(1, 2)))] for m in case.gtv],
               "patient_poses": case.poses, "paths": {k: Path(p).name for k, p in paths.items()}}
    (out / "case.json").write_text(json.dumps(summary, indent=2))
    paths["case_json"] = str(out / "case.json")
    return paths


def write_picture_example(out_dir, seed: int = 0, size: tuple[int, int] = (240, 288)) -> dict:
    """A tiny 2-D case made here (no dataset files): two endoscopy-like RGB frames of a
    reddish, lit lumen with a raised pale polyp that moves and grows a little between them, and
    the polyp's mask on both. Writes ``frame1.png``, ``frame1_mask.png`` (the prior),
    ``frame2.png`` (the follow-up) and ``frame2_mask.png`` (its truth); returns their paths."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 3).astype(np.float32)
    texture /= texture.std() + 1e-6
    paths: dict[str, str] = {}
    polyps = [(0.46 * h, 0.40 * w, 0.16 * h, 0.13 * w, 0.2), (0.50 * h, 0.47 * w, 0.17 * h, 0.145 * w, 0.35)]
    for i, (cy, cx, ry, rx, angle) in enumerate(polyps, start=1):
        # lumen: dark centre (the far end), light falling off towards the edges (vignette)
        r = np.hypot((yy - 0.55 * h) / h, (xx - 0.62 * w) / w)
        light = np.clip(1.15 - 1.4 * np.abs(r - 0.32), 0.25, 1.0)
        img = np.stack([185 * light, 80 * light, 70 * light], axis=-1) + 6 * texture[..., None]
        c, s = np.cos(angle), np.sin(angle)
        u, v = ((xx - cx) * c + (yy - cy) * s) / rx, (-(xx - cx) * s + (yy - cy) * c) / ry
        wobble = 1 + 0.08 * np.sin(3 * np.arctan2(v, u) + i)
        d = np.hypot(u, v) / wobble
        mask = d < 1.0
        dome = np.clip(1 - d, 0, 1)[..., None]
        polyp = np.array([225, 150, 135], np.float32) * (0.8 + 0.25 * dome) + 8 * texture[..., None]
        img = np.where(mask[..., None], polyp, img)
        img = img + np.where(((d > 0.95) & (d < 1.08))[..., None], -35, 0)  # its shadowed rim
        glint = np.exp(-(((xx - cx + 0.3 * rx) ** 2 + (yy - cy - 0.35 * ry) ** 2) / (2 * (0.08 * rx) ** 2)))
        img = img + 120 * glint[..., None]
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(out / f"frame{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"frame{i}_mask.png")
        paths[f"frame{i}"] = str(out / f"frame{i}.png")
        paths[f"frame{i}_mask"] = str(out / f"frame{i}_mask.png")
    return paths
