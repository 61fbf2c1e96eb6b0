"""Prior -> follow-up correspondence: rigid registration (SimpleITK) or position matching.

``Registration.transform`` maps **follow-up LPS points to prior LPS points** (ITK's
fixed -> moving convention; fixed = follow-up, moving = prior). Masks are therefore
resampled from the prior grid onto the follow-up grid through it. Slice indices are
array indices along ``z`` of each volume.

Rigid: Euler3D about the follow-up's centre, Mattes mutual information on CT clipped to
``CLAMP_HU``, 3-level pyramid, regular-step gradient descent, initialised from the better (by
metric) of identity and image-moments centring.
Position matching (identity in LPS) is used when a volume has fewer than
``MIN_SLICES`` slices, when registration fails, or when it makes the alignment worse
(by the quality measure); ``method`` and ``reason`` say which.

Same modality (e.g. CT -> CT): the quality measure is the normalised cross-correlation (NCC)
of the intensities. Different modalities (``Volume.modality`` differs, e.g. MR -> CT; a NIfTI
is "CT" when its values go below -200 HU, else "OT"): intensities are not comparable, so the
images are clipped to their 0.5-99.5 percentiles (CT to ``CLAMP_HU_CROSS``), the Mattes MI uses
more bins, the moments initialiser (which assumes similar intensities) is not tried, and the
quality measure is the normalised mutual information NMI = (H(A) + H(B)) / H(A, B) (1 =
independent, 2 = one image determines the other); ``Quality.measure`` says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .volume import Volume, to_sitk

MIN_SLICES = 4
MAX_IN_PLANE = 160
MAX_SAMPLES = 60_000  # metric samples per level: keeps big CTs fast on a CPU
# CT is clipped to soft-tissue HU for registration: over -1000..1500 HU the MI's 32 bins are 78 HU
# wide and fat, muscle and tumour fall into two or three of them (on the sarcoma CTs of
# bench.volumes the optimiser then diverged or stopped 4-10 mm off; clipped, 25 HU bins resolve
# them and air / bone still give edges: mean rigid error 1.89 -> 0.67 mm, docs/volumes.md)
CLAMP_HU = (-300.0, 500.0)
CLAMP_HU_CROSS = (-1000.0, 1500.0)
NMI_GOOD, NMI_FAIR = 1.12, 1.06  # cross-modality quality labels (docs/volumes.md: MR T1 -> CT, STS data)


@dataclass
class Quality:
    """How good the alignment is. NCC = normalised cross-correlation of follow-up and
    resampled prior intensities over their overlap (1 = identical); NMI = their normalised
    mutual information (cross-modality, see module docstring). ``measure`` names the one the
    label and the fallback decision use."""

    ncc_before: float | None = None
    ncc_after: float | None = None
    overlap_fraction: float | None = None
    translation_mm: tuple[float, float, float] | None = None
    rotation_deg: float | None = None
    iterations: int | None = None
    stop_condition: str = ""
    measure: str = "NCC"
    nmi_before: float | None = None
    nmi_after: float | None = None

    @property
    def label(self) -> str:
        if self.measure == "NMI":
            if self.nmi_after is None:
                return "unknown"
            return "good" if self.nmi_after >= NMI_GOOD else "fair" if self.nmi_after >= NMI_FAIR else "poor"
        if self.ncc_after is None:
            return "unknown"
        return "good" if self.ncc_after >= 0.9 else "fair" if self.ncc_after >= 0.7 else "poor"

    @property
    def value_after(self) -> float | None:
        return self.nmi_after if self.measure == "NMI" else self.ncc_after


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
                "cross_modality": q.measure == "NMI", "modalities": [self.prior.modality, self.followup.modality],
                "quality": q.label, "quality_measure": q.measure, "nmi_before": q.nmi_before, "nmi_after": q.nmi_after,
                "ncc_before": q.ncc_before, "ncc_after": q.ncc_after,
                "overlap_fraction": q.overlap_fraction, "translation_mm": q.translation_mm,
                "rotation_deg": q.rotation_deg, "iterations": q.iterations, "stop_condition": q.stop_condition,
                "transform": transform_dict(self.transform)}


def transform_dict(transform: sitk.Transform) -> dict:
    """The rigid transform (follow-up LPS -> prior LPS) as JSON: Euler3D angles (rad) and translation
    (mm) in ``parameters``, the rotation centre (mm) in ``fixed_parameters``."""
    t = sitk.Euler3DTransform(transform) if transform.GetName() == "Euler3DTransform" else transform
    return {"kind": t.GetName(), "parameters": [float(v) for v in t.GetParameters()],
            "fixed_parameters": [float(v) for v in t.GetFixedParameters()]}


def transform_from_dict(d: dict) -> sitk.Transform:
    """Inverse of :func:`transform_dict` (Euler3D)."""
    t = sitk.Euler3DTransform()
    t.SetFixedParameters([float(v) for v in d["fixed_parameters"]])
    t.SetParameters([float(v) for v in d["parameters"]])
    return t


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def _reference(volume: Volume) -> sitk.Image:
    ref = sitk.Image([int(s) for s in volume.shape[::-1]], sitk.sitkUInt8)
    ref.SetOrigin(tuple(volume.origin))
    ref.SetSpacing(tuple(volume.spacing))
    ref.SetDirection(tuple(volume.direction.ravel()))
    return ref


def _grey(volume: Volume, robust: bool = False) -> sitk.Image:
    """Float32 image for registration: CT clamped to CLAMP_HU (other images, with ``robust``,
    to their 0.5-99.5 percentiles), averaged down in-plane to at most ~MAX_IN_PLANE pixels a
    side (registration accuracy needed is ~1 mm, not 0.5)."""
    arr = volume.array.mean(axis=-1) if volume.is_rgb else volume.array
    arr = np.asarray(arr, dtype=np.float32)
    if volume.modality == "CT":
        arr = np.clip(arr, *(CLAMP_HU_CROSS if robust else CLAMP_HU))
    elif robust and arr.size:
        lo, hi = np.percentile(arr.ravel()[:: max(1, arr.size // 200_000)], [0.5, 99.5])
        arr = np.clip(arr, lo, hi if hi > lo else lo + 1).astype(np.float32)  # float64 bounds would promote
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


def _nmi(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, bins: int = 32) -> float | None:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) over the overlap of fixed and
    transformed moving (same coarse grid as :func:`_ncc`)."""
    fixed = sitk.Shrink(fixed, [max(1, n // 128) for n in fixed.GetSize()])
    f = sitk.GetArrayFromImage(fixed)
    m = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    inside = np.isfinite(m)
    if inside.sum() < 100:
        return None
    joint, _, _ = np.histogram2d(f[inside], m[inside], bins=bins)
    p = joint / joint.sum()

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_ab = entropy(p)
    return float((entropy(p.sum(1)) + entropy(p.sum(0))) / h_ab) if h_ab > 0 else None


def register_rigid(prior: Volume, followup: Volume, *, seed: int = 1, max_iterations: int = 100,
                   threads: int | None = None) -> Registration:
    """Align ``prior`` to ``followup`` (see module docstring). Never raises for images that
    cannot be registered: falls back to position matching and says why."""
    cross = prior.modality != followup.modality
    measure = "NMI" if cross else "NCC"
    fixed, moving = _grey(followup, robust=cross), _grey(prior, robust=cross)
    identity = sitk.Euler3DTransform()
    ncc0, overlap0 = _ncc(fixed, moving, identity)
    nmi0 = _nmi(fixed, moving, identity) if cross else None
    kind = f"{prior.modality} -> {followup.modality}, " if cross else ""

    def fallback(reason: str) -> Registration:
        return Registration(prior, followup, identity, "position_matching", None,
                            Quality(ncc_before=ncc0, ncc_after=ncc0, overlap_fraction=overlap0,
                                    translation_mm=(0.0, 0.0, 0.0), rotation_deg=0.0, measure=measure,
                                    nmi_before=nmi0, nmi_after=nmi0), reason)

    if min(prior.shape[0], followup.shape[0]) < MIN_SLICES:
        return fallback(f"a volume has fewer than {MIN_SLICES} slices; matched slices by position along the normal")
    reg = sitk.ImageRegistrationMethod()
    if threads:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48 if cross else 32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=max_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    smallest = min(min(fixed.GetSize()), min(moving.GetSize()))
    shrink = [f for f in (4, 2, 1) if smallest // f >= 4] or [1]
    reg.SetShrinkFactorsPerLevel(shrink)
    voxels = float(np.prod(fixed.GetSize()))
    # the sampling seed makes the result repeatable; SimpleITK reads 0 as "seed from the wall clock"
    reg.SetMetricSamplingPercentagePerLevel([min(0.25, MAX_SAMPLES * f**3 / voxels) for f in shrink], seed or 1)
    reg.SetSmoothingSigmasPerLevel([max(f - 1, 0) for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    try:
        # GEOMETRY: identity, rotating about the follow-up's centre (about the world origin, far
        # outside a cropped volume, a small rotation is a large translation and the optimiser's
        # scales are off); MOMENTS: image-moments centring, not across modalities (intensity
        # moments of MR and CT mean nothing together)
        starts = [sitk.CenteredTransformInitializerFilter.GEOMETRY] + ([] if cross else [sitk.CenteredTransformInitializerFilter.MOMENTS])
        candidates = [sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), s) for s in starts]
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
    if cross:
        nmi1 = _nmi(fixed, moving, transform)
        if nmi1 is None or (nmi0 is not None and nmi1 < nmi0 - 0.005):
            return fallback(f"cross-modality registration ({kind.rstrip(', ')}) did not improve alignment (NMI {_fmt(nmi1)} "
                            f"vs {_fmt(nmi0)} before); matched by position")
    else:
        nmi1 = None
        if ncc1 is None or (ncc0 is not None and ncc1 < ncc0 - 0.02):
            return fallback(f"registration did not improve alignment (NCC {_fmt(ncc1)} vs {_fmt(ncc0)} before); "
                            "matched by position")
    angles = np.degrees(np.array(transform.GetParameters()[:3]))
    quality = Quality(ncc_before=ncc0, ncc_after=ncc1, overlap_fraction=overlap1,
                      translation_mm=tuple(float(v) for v in transform.GetTranslation()),
                      rotation_deg=float(np.linalg.norm(angles)), iterations=int(reg.GetOptimizerIteration()),
                      stop_condition=reg.GetOptimizerStopConditionDescription()[:200], measure=measure,
                      nmi_before=nmi0, nmi_after=nmi1)
    return Registration(prior, followup, transform, "rigid_registration", float(reg.GetMetricValue()), quality,
                        f"rigid registration ({kind}Euler3D, Mattes MI)")


# --- 2-D pictures and video frames ---------------------------------------------------------------
PICTURE_MAX_SIDE = 96  # pictures are registered at most this many pixels a side (coarse is enough for a box)
PICTURE_MAX_SHIFT = 0.35  # a transform moving the centre more than this fraction of the picture is not trusted
PICTURE_SCALE_RANGE = (0.6, 1.6)  # nor one scaling (affine: its area change) outside this


@dataclass
class PictureRegistration:
    """Result of :func:`register_pictures`. ``transform`` maps TARGET pixel (x, y) -> PRIOR pixel
    (x, y) (fixed -> moving, continuous pixel coordinates of the original pictures), so a prior
    mask is resampled onto the target through it. ``method`` is ``rigid``, ``affine`` or
    ``identity`` (registration failed or made the alignment worse: ``reason`` says why)."""

    transform: sitk.Transform
    method: str
    prior_shape: tuple[int, int]
    target_shape: tuple[int, int]
    ncc_before: float | None = None
    ncc_after: float | None = None
    overlap_fraction: float | None = None
    reason: str = ""

    @property
    def quality(self) -> str:
        if self.ncc_after is None:
            return "unknown"
        return "good" if self.ncc_after >= 0.9 else "fair" if self.ncc_after >= 0.7 else "poor"

    def map_mask(self, prior_mask: np.ndarray) -> np.ndarray:
        """Prior (y, x) mask -> bool (y, x) on the target picture (linear, >= 0.5)."""
        moving = sitk.GetImageFromArray(np.asarray(prior_mask, np.float32))
        ref = sitk.Image([int(self.target_shape[1]), int(self.target_shape[0])], sitk.sitkFloat32)
        out = sitk.Resample(moving, ref, self.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out) >= 0.5

    def summary(self) -> dict:
        """JSON-friendly report: method, why, the NCC quality measure, the transform (pixels)."""
        return {"method": self.method, "reason": self.reason, "quality": self.quality, "quality_measure": "NCC",
                "ncc_before": self.ncc_before, "ncc_after": self.ncc_after, "overlap_fraction": self.overlap_fraction,
                "transform": {"kind": self.transform.GetName(), "parameters": [float(v) for v in self.transform.GetParameters()],
                              "fixed_parameters": [float(v) for v in self.transform.GetFixedParameters()]}}


def _picture(image: np.ndarray, max_side: int) -> sitk.Image:
    """Grey float32 picture averaged down to at most ``max_side`` pixels a side, its spacing in
    original pixels (so physical coordinates = original (x, y) pixel coordinates)."""
    arr = np.asarray(image, np.float32)
    arr = arr.mean(axis=-1) if arr.ndim == 3 else arr
    img = sitk.GetImageFromArray(arr)
    f = max(1, int(np.ceil(max(arr.shape) / max_side)))
    return sitk.BinShrink(img, [f, f]) if f > 1 else img


def register_pictures(prior: np.ndarray, target: np.ndarray, kind: str = "rigid", max_iterations: int = 100,
                      max_side: int = PICTURE_MAX_SIDE) -> PictureRegistration:
    """Align a prior picture (H x W [x 3]) to a target picture: 2-D rigid (Euler2D) or ``affine``
    registration, correlation metric, 2-level pyramid, from identity (frames of one video start
    aligned). Never raises: identity when registration fails, moves the picture implausibly far
    (``PICTURE_MAX_SHIFT``, ``PICTURE_SCALE_RANGE``) or lowers the NCC; ``reason`` says which."""
    if kind not in ("rigid", "affine"):
        raise ValueError(f"picture registration kind must be rigid or affine, got '{kind}'")
    fixed, moving = _picture(target, max_side), _picture(prior, max_side)
    shape_p, shape_t = tuple(np.asarray(prior).shape[:2]), tuple(np.asarray(target).shape[:2])
    centre = ((shape_t[1] - 1) / 2.0, (shape_t[0] - 1) / 2.0)
    identity = sitk.Euler2DTransform()
    identity.SetCenter(centre)
    if shape_p != shape_t:  # different sizes: identity in relative coordinates
        identity = sitk.AffineTransform(2)
        identity.SetMatrix([shape_p[1] / shape_t[1], 0.0, 0.0, shape_p[0] / shape_t[0]])
        identity.SetCenter((0.0, 0.0))
    ncc0, overlap0 = _ncc(fixed, moving, identity)

    def fallback(reason: str) -> PictureRegistration:
        return PictureRegistration(identity, "identity", shape_p, shape_t, ncc0, ncc0, overlap0, reason)

    if shape_p != shape_t:
        return fallback(f"prior picture is {shape_p[1]}x{shape_p[0]}, target {shape_t[1]}x{shape_t[0]}: matched by relative position")

    start = sitk.AffineTransform(2) if kind == "affine" else sitk.Euler2DTransform()
    if kind == "affine":
        start.SetMatrix(identity.GetMatrix())
    start.SetCenter(centre)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)  # small pictures: threads cost more than they save
    reg.SetMetricAsCorrelation()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=max_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(start, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:
        return fallback(f"picture registration failed ({str(exc).splitlines()[0][:120]}); identity used")
    transform = sitk.AffineTransform(start) if kind == "affine" else sitk.Euler2DTransform(start)
    moved = np.array(transform.TransformPoint(centre)) - np.array(identity.TransformPoint(centre))
    if np.any(np.abs(moved) > PICTURE_MAX_SHIFT * np.array([shape_t[1], shape_t[0]])):
        return fallback(f"picture registration moved the picture by {moved.round(1).tolist()} pixels, more than "
                        f"{PICTURE_MAX_SHIFT:.0%} of it; identity used")
    if kind == "affine":
        scale = abs(float(np.linalg.det(np.reshape(transform.GetMatrix(), (2, 2))))) / abs(float(np.linalg.det(np.reshape(identity.GetMatrix(), (2, 2)))))
        if not PICTURE_SCALE_RANGE[0] <= scale <= PICTURE_SCALE_RANGE[1]:
            return fallback(f"picture registration scaled the area by {scale:.2f}; identity used")
    ncc1, overlap1 = _ncc(fixed, moving, transform)
    if ncc1 is None or (ncc0 is not None and ncc1 < ncc0):
        return fallback(f"picture registration did not improve alignment (NCC {_fmt(ncc1)} vs {_fmt(ncc0)} before); identity used")
    return PictureRegistration(transform, kind, shape_p, shape_t, ncc0, ncc1, overlap1,
                               f"2-D {kind} registration ({transform.GetName()}, correlation)")
