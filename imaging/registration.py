"""Prior -> follow-up correspondence: rigid registration (SimpleITK) or position matching.

``Registration.transform`` maps **follow-up LPS points to prior LPS points** (ITK's
fixed -> moving convention; fixed = follow-up, moving = prior). Masks are therefore
resampled from the prior grid onto the follow-up grid through it. Slice indices are
array indices along ``z`` of each volume.

Rigid: Euler3D, Mattes mutual information, 3-level pyramid, regular-step gradient descent,
initialised from the better (by metric) of identity and image-moments centring.
Position matching (identity in LPS) is used when a volume has fewer than
``MIN_SLICES`` slices, when registration fails, or when it makes the alignment worse
(normalised cross-correlation below identity's); ``method`` and ``reason`` say which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .volume import Volume, to_sitk

MIN_SLICES = 4
MAX_IN_PLANE = 160
MAX_SAMPLES = 60_000  # metric samples per level: keeps big CTs fast on a CPU
CLAMP_HU = (-1000.0, 1500.0)


@dataclass
class Quality:
    """How good the alignment is. NCC = normalised cross-correlation of follow-up and
    resampled prior intensities over their overlap (1 = identical)."""

    ncc_before: float | None = None
    ncc_after: float | None = None
    overlap_fraction: float | None = None
    translation_mm: tuple[float, float, float] | None = None
    rotation_deg: float | None = None
    iterations: int | None = None
    stop_condition: str = ""

    @property
    def label(self) -> str:
        if self.ncc_after is None:
            return "unknown"
        return "good" if self.ncc_after >= 0.9 else "fair" if self.ncc_after >= 0.7 else "poor"


@dataclass
class Registration:
    """Result of :func:`register_rigid`; see module docstring for conventions."""

    prior: Volume
    followup: Volume
    transform: sitk.Transform
    method: str                      # "rigid_registration" | "position_matching"
    metric_value: float | None = None
    quality: Quality = field(default_factory=Quality)
    reason: str = ""

    def map_mask(self, prior_mask: np.ndarray) -> np.ndarray:
        """Prior (z, y, x) mask -> bool (z, y, x) on the follow-up grid (linear, >= 0.5)."""
        ref = _reference(self.followup)
        moving = to_sitk(self.prior, np.asarray(prior_mask, dtype=np.float32))
        out = sitk.Resample(moving, ref, self.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out) >= 0.5

    def prior_slice_of(self, followup_points_zyx: np.ndarray) -> np.ndarray:
        """Continuous prior slice index of follow-up continuous (z, y, x) indices."""
        world = self.followup.index_to_world(followup_points_zyx)
        mapped = np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in np.atleast_2d(world)])
        return self.prior.world_to_index(mapped)[:, 0]

    def slice_correspondence(self, prior_mask: np.ndarray | None = None) -> list[int]:
        """For each follow-up slice k, the prior slice index to use as reference: the
        prior slice through which the follow-up slice centre (or, with ``prior_mask``, the
        mapped structure's centroid on that slice) maps, clipped to the prior volume; with
        ``prior_mask`` snapped to the nearest prior slice that contains the structure."""
        nz, ny, nx = self.followup.shape
        points = np.array([[k, (ny - 1) / 2, (nx - 1) / 2] for k in range(nz)], dtype=float)
        with_structure = None
        if prior_mask is not None:
            prior_mask = np.asarray(prior_mask, dtype=bool)
            with_structure = np.flatnonzero(prior_mask.reshape(prior_mask.shape[0], -1).any(axis=1))
            mapped = self.map_mask(prior_mask)
            for k in range(nz):
                if mapped[k].any():
                    rows, cols = np.nonzero(mapped[k])
                    points[k, 1:] = rows.mean(), cols.mean()
        idx = np.clip(np.rint(self.prior_slice_of(points)), 0, self.prior.shape[0] - 1).astype(int)
        if with_structure is not None and len(with_structure):
            idx = np.array([with_structure[np.argmin(np.abs(with_structure - i))] for i in idx])
        return [int(i) for i in idx]

    def target_slices(self, prior_mask: np.ndarray) -> list[int]:
        """Follow-up slice indices that should contain the structure (mapped mask non-empty)."""
        mapped = self.map_mask(prior_mask)
        return [int(k) for k in np.flatnonzero(mapped.reshape(mapped.shape[0], -1).any(axis=1))]

    def summary(self) -> dict:
        """JSON-friendly report (no patient identifiers)."""
        q = self.quality
        return {"method": self.method, "reason": self.reason, "metric_value": self.metric_value,
                "quality": q.label, "ncc_before": q.ncc_before, "ncc_after": q.ncc_after,
                "overlap_fraction": q.overlap_fraction, "translation_mm": q.translation_mm,
                "rotation_deg": q.rotation_deg, "iterations": q.iterations, "stop_condition": q.stop_condition}


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def _reference(volume: Volume) -> sitk.Image:
    ref = sitk.Image([int(s) for s in volume.shape[::-1]], sitk.sitkUInt8)
    ref.SetOrigin(tuple(volume.origin))
    ref.SetSpacing(tuple(volume.spacing))
    ref.SetDirection(tuple(volume.direction.ravel()))
    return ref


def _grey(volume: Volume) -> sitk.Image:
    """Float32 image for registration: CT clamped to CLAMP_HU, averaged down in-plane to
    at most ~MAX_IN_PLANE pixels a side (registration accuracy needed is ~1 mm, not 0.5)."""
    arr = volume.array.mean(axis=-1) if volume.is_rgb else volume.array
    arr = np.asarray(arr, dtype=np.float32)
    if volume.modality == "CT":
        arr = np.clip(arr, *CLAMP_HU)
    img = to_sitk(volume, arr)
    nx, ny, _ = img.GetSize()
    factors = [max(1, nx // MAX_IN_PLANE), max(1, ny // MAX_IN_PLANE), 1]
    return sitk.BinShrink(img, factors) if max(factors) > 1 else img


def _ncc(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> tuple[float | None, float]:
    """NCC over the overlap of fixed and transformed moving (on a grid of at most ~128
    voxels a side, for speed); and the overlap fraction."""
    fixed = sitk.Shrink(fixed, [max(1, n // 128) for n in fixed.GetSize()])
    f = sitk.GetArrayFromImage(fixed)
    m = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    inside = np.isfinite(m)
    if inside.sum() < 100:
        return None, float(inside.mean())
    a, b = f[inside] - f[inside].mean(), m[inside] - m[inside].mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return (float((a * b).sum() / denom) if denom > 0 else None), float(inside.mean())


def register_rigid(prior: Volume, followup: Volume, *, seed: int = 0, max_iterations: int = 100,
                   threads: int | None = None) -> Registration:
    """Align ``prior`` to ``followup`` (see module docstring). Never raises for images that
    cannot be registered: falls back to position matching and says why."""
    fixed, moving = _grey(followup), _grey(prior)
    identity = sitk.Euler3DTransform()
    ncc0, overlap0 = _ncc(fixed, moving, identity)

    def fallback(reason: str) -> Registration:
        return Registration(prior, followup, identity, "position_matching", None,
                            Quality(ncc_before=ncc0, ncc_after=ncc0, overlap_fraction=overlap0,
                                    translation_mm=(0.0, 0.0, 0.0), rotation_deg=0.0), reason)

    if min(prior.shape[0], followup.shape[0]) < MIN_SLICES:
        return fallback(f"a volume has fewer than {MIN_SLICES} slices; matched slices by position along the normal")
    reg = sitk.ImageRegistrationMethod()
    if threads:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=max_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    smallest = min(min(fixed.GetSize()), min(moving.GetSize()))
    shrink = [f for f in (4, 2, 1) if smallest // f >= 4] or [1]
    reg.SetShrinkFactorsPerLevel(shrink)
    voxels = float(np.prod(fixed.GetSize()))
    reg.SetMetricSamplingPercentagePerLevel([min(0.25, MAX_SAMPLES * f**3 / voxels) for f in shrink], seed)
    reg.SetSmoothingSigmasPerLevel([max(f - 1, 0) for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    try:
        candidates = [sitk.Euler3DTransform(),
                      sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                        sitk.CenteredTransformInitializerFilter.MOMENTS)]
        scores = []
        for c in candidates:
            reg.SetInitialTransform(c, inPlace=False)
            scores.append(reg.MetricEvaluate(fixed, moving))
        start = sitk.Euler3DTransform(candidates[int(np.argmin(scores))])
        reg.SetInitialTransform(start, inPlace=True)
        reg.Execute(fixed, moving)
        transform = sitk.Euler3DTransform(start)
    except RuntimeError as exc:
        return fallback(f"registration failed ({str(exc).splitlines()[0][:120]}); matched slices by position")
    ncc1, overlap1 = _ncc(fixed, moving, transform)
    if ncc1 is None or (ncc0 is not None and ncc1 < ncc0 - 0.02):
        return fallback(f"registration did not improve alignment (NCC {_fmt(ncc1)} vs {_fmt(ncc0)} before); "
                        "matched by position")
    angles = np.degrees(np.array(transform.GetParameters()[:3]))
    quality = Quality(ncc_before=ncc0, ncc_after=ncc1, overlap_fraction=overlap1,
                      translation_mm=tuple(float(v) for v in transform.GetTranslation()),
                      rotation_deg=float(np.linalg.norm(angles)), iterations=int(reg.GetOptimizerIteration()),
                      stop_condition=reg.GetOptimizerStopConditionDescription()[:200])
    return Registration(prior, followup, transform, "rigid_registration", float(reg.GetMetricValue()), quality,
                        "rigid registration (Euler3D, Mattes MI)")
