"""Where a follow-up scan turns into a mask: the prior's structure found slice by slice.

For volumes: rigid registration (prior -> follow-up) says which follow-up slices should hold
the structure (plus ``margin`` slices either side) and which prior slice to use as the
reference for each; every such slice is segmented with the engine, the prior slice's encoding
and parts coming from the per-process cache. 2-D pictures and single slices are one slice.

Array order is (z, y, x) everywhere; masks are on the follow-up's own grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import imaging
from imaging import Volume
from models import P2SAMEngine, Segmentation
from models.uncertainty import SamplerConfig, sample

from .errors import JobInputError
from .modelpool import ModelPool

Progress = Callable[[float, str], None]


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


@dataclass
class SliceResult:
    z: int  # follow-up slice
    prior_z: int  # prior slice used as the reference
    expected: bool  # the registered prior structure lies on this slice (False: margin slice)
    segmentation: Segmentation
    sample_dice: float | None = None  # mean pairwise Dice of the uncertainty samples


@dataclass
class FollowupResult:
    mask: np.ndarray  # (z, y, x) bool
    probability: np.ndarray  # (z, y, x) float32
    samples: np.ndarray | None  # (K, z, y, x) bool, or None without sampling
    slices: list[SliceResult]
    registration: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    prior_on_target: np.ndarray | None = None  # (z, y, x) bool: the prior contour registered onto this follow-up


def segment_followup(
    prior: Volume,
    prior_mask: np.ndarray,
    target: Volume,
    engine: P2SAMEngine,
    pool: ModelPool,
    model_name: str,
    method: str = "p2sam",
    window: str | tuple[float, float] = "default",
    margin: int = 1,
    sampler: SamplerConfig | None = None,
    progress: Progress | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    encode_batch_mb: int = 0,
) -> FollowupResult:
    """Segment the prior's structure on every follow-up slice that should contain it.

    Arguments:
      prior, target: the prior and follow-up images (:class:`imaging.Volume`: array ``(z, y, x)``,
        geometry in DICOM patient coordinates, LPS mm; a 2-D picture is one slice, ``(1, H, W[, 3])``).
      prior_mask: ``(z, y, x)`` bool on the prior's grid (the prior contour).
      engine, pool, model_name: the model's engine and the process's ModelPool (priors cached by it).
      method: the engine's method (``p2sam``, ``fixed``, ``persam``, ``direct``, ``box``).
      window: CT window (preset name or ``(lo, hi)`` HU) for grey-level images.
      margin: follow-up slices beyond the registered prior structure also segmented.
      sampler: uncertainty sampling (None / kind ``none``: no samples).
      progress, is_cancelled: ``progress(fraction in [0, 1], message)``; polled between slices.
      encode_batch_mb: follow-up slices are encoded in batches (one encoder call for B slices, B
        from this budget, see ``P2SAMEngine.encode_batch_size``; 0: one at a time); the prior
        slices' encodings come from the pool's cache.

    Returns:
      a :class:`FollowupResult` on the target's grid: ``mask`` ``(z, y, x)`` bool, ``probability``
      ``(z, y, x)`` float32, ``samples`` ``(K, z, y, x)`` bool or None, per-slice results, the
      registration used (prior -> target, rigid, LPS mm) and warnings."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    if prior.is_rgb != target.is_rgb:
        raise imaging.ImagingError(
            f"prior is {'an RGB picture' if prior.is_rgb else 'a grey-level image'} but follow-up {target.source or 'target'} "
            f"is {'an RGB picture' if target.is_rgb else 'a grey-level image'}: they must be the same kind of image")
    slices, correspondence, registration, prior_on_target = _plan(prior, prior_mask, target, margin, warnings,
                                                                  pictures=_picture_registration(engine))
    timings = {"registration": time.perf_counter() - t0}

    nz = target.shape[0]
    mask = np.zeros(target.shape, bool)
    probability = np.zeros(target.shape, np.float32)
    k = sampler.k if sampler is not None and sampler.kind != "none" else 0
    latent_head = pool.latent_head(model_name) if k and sampler.kind == "latent" else None
    if k and sampler.kind == "latent" and latent_head is None:
        raise JobInputError(f"sampler 'latent' needs a latent head trained for model '{model_name}' ({model_name}_latent.pt); use prompt_noise or retrieval")
    samples = np.zeros((k, *target.shape), bool) if k else None
    results: list[SliceResult] = []
    expected = set(slices["expected"])
    t_seg = time.perf_counter()
    batch = engine.encode_batch_size(encode_batch_mb) if len(slices["all"]) > 1 else 1
    encoded: dict[int, Any] = {}
    t_enc = 0.0
    # prior slices not cached yet: encoded in batches too, once each
    prior_zs = sorted({correspondence[z] for z in slices["all"]})
    prior_imgs = {pz: imaging.to_model_input(prior, pz, window) for pz in prior_zs}
    todo = [pz for pz in prior_zs if not pool.has_prior(model_name, engine, prior_imgs[pz], prior_mask[pz]) and prior_mask[pz].any()]
    t = time.perf_counter()
    for j in range(0, len(todo), batch):
        chunk = todo[j : j + batch]
        for pz, enc in zip(chunk, engine.encode_batch([prior_imgs[pz] for pz in chunk])):
            pool.prior(model_name, engine, prior_imgs[pz], prior_mask[pz], encoded=enc)
    timings["encode_prior"] = time.perf_counter() - t
    for i, z in enumerate(slices["all"]):
        if is_cancelled is not None and is_cancelled():
            raise JobCancelled()
        if z not in encoded:  # the next B slices in one encoder call
            t = time.perf_counter()
            chunk = slices["all"][i : i + batch]
            encoded = dict(zip(chunk, engine.encode_batch([imaging.to_model_input(target, zz, window) for zz in chunk])))
            t_enc += time.perf_counter() - t
        pz = correspondence[z]
        engine_prior = pool.prior(model_name, engine, prior_imgs[pz], prior_mask[pz])
        enc = encoded.pop(z)
        location = prior_on_target[z] if engine.config.location and prior_on_target is not None else None
        seg = engine.segment(enc, engine_prior, method=method, location=location)
        mask[z] = seg.mask
        probability[z] = 1.0 / (1.0 + np.exp(-np.clip(seg.logits, -30, 30)))
        result = SliceResult(z=z, prior_z=pz, expected=z in expected, segmentation=seg)
        if samples is not None and seg.found:
            drawn = sample(engine, enc, seg, sampler, latent_head=latent_head)
            samples[:, z] = drawn.masks
            probability[z] = drawn.probability
            result.sample_dice = mean_pairwise_dice(drawn.masks)
        results.append(result)
        if progress is not None:
            progress((i + 1) / max(len(slices["all"]), 1), f"slice {i + 1}/{len(slices['all'])}")
    timings["segmentation"] = time.perf_counter() - t_seg
    timings["encode_followup"] = t_enc
    timings["encode_batch"] = batch
    timings["slices_per_s"] = len(results) / timings["segmentation"] if results and timings["segmentation"] > 0 else 0.0
    missing = [r.z for r in results if r.expected and not r.segmentation.found]
    if missing:
        warnings.append(f"structure not found on {len(missing)} slice(s) where registration expected it: {missing}")
    if nz > 1 and not mask.any():
        warnings.append("structure not found on this follow-up")
    timings["total"] = time.perf_counter() - t0
    return FollowupResult(mask=mask, probability=probability, samples=samples, slices=results,
                          registration=registration, warnings=warnings, timings=timings, prior_on_target=prior_on_target)


def _picture_registration(engine: P2SAMEngine) -> str:
    """2-D registration kind for pictures: only the location rule uses it (P2SAM_PICTURE_REGISTRATION)."""
    if not engine.config.location:
        return "off"
    from .settings import get_settings

    return get_settings().picture_registration


def _plan(prior: Volume, prior_mask: np.ndarray, target: Volume, margin: int, warnings: list[str], pictures: str = "off"):
    """Slices to segment (registered structure +- margin) and the prior slice for each."""
    if prior.is_2d() and target.is_2d() and pictures != "off" and prior.shape[1:3] == target.shape[1:3]:
        reg = imaging.register_pictures(prior.array[0], target.array[0], pictures)
        if reg.method == "identity":
            warnings.append(f"picture registration: {reg.reason}")
        mapped = reg.map_mask(np.asarray(prior_mask)[0])[None]
        return {"all": [0], "expected": [0]}, [0], {**reg.summary(), "method": f"picture_{reg.method}"}, mapped
    if prior.is_2d() and target.is_2d():
        same_size = prior_mask.shape == target.shape
        return {"all": [0], "expected": [0]}, [0], {"method": "single_slice"}, (prior_mask if same_size else None)
    reg = imaging.register_rigid(prior, target)
    summary = reg.summary()
    if reg.quality.label == "poor":
        q = reg.quality
        good = "0.90" if q.measure == "NCC" else "1.12"
        value = "none" if q.value_after is None else f"{q.value_after:.2f}"
        warnings.append(f"registration quality is poor ({q.measure} {value}, good is {good} or more); check the follow-up slices")
    mapped = reg.map_mask(prior_mask)
    expected = [int(k) for k in np.flatnonzero(mapped.reshape(mapped.shape[0], -1).any(axis=1))]
    if not expected:
        warnings.append("the prior structure maps outside this follow-up volume after registration")
        return {"all": [], "expected": []}, [], summary, mapped
    lo, hi = max(0, min(expected) - margin), min(target.shape[0] - 1, max(expected) + margin)
    correspondence = reg.slice_correspondence(prior_mask)
    return {"all": list(range(lo, hi + 1)), "expected": expected}, correspondence, summary, mapped


def mean_pairwise_dice(masks: np.ndarray) -> float:
    """Mean Dice over all pairs of K masks (1.0 when they agree; empty pairs count as 1)."""
    k = len(masks)
    if k < 2:
        return 1.0
    flat = masks.reshape(k, -1).astype(np.float32)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    total = sizes[:, None] + sizes[None, :]
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    iu = np.triu_indices(k, 1)
    return float(dice[iu].mean())
