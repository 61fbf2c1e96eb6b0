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
    return segment_structures(prior, [prior_mask], target, engine, pool, model_name, method=method, window=window,
                              margin=margin, sampler=sampler, progress=progress, is_cancelled=is_cancelled,
                              encode_batch_mb=encode_batch_mb)[0]


@dataclass
class _Track:
    """One structure's work on a follow-up: its slices, prior slices and what it found so far."""

    prior_mask: np.ndarray
    slices: dict[str, list[int]]
    correspondence: Any
    registration: dict[str, Any]
    prior_on_target: np.ndarray | None
    warnings: list[str]
    mask: np.ndarray
    probability: np.ndarray
    samples: np.ndarray | None
    results: list[SliceResult] = field(default_factory=list)
    decode_s: float = 0.0
    priors: dict[int, Any] = field(default_factory=dict)  # prior slice -> engine Prior, held for the whole follow-up

    def prior_slices(self) -> set[int]:
        return {self.correspondence[z] for z in self.slices["all"]}


def segment_structures(
    prior: Volume,
    prior_masks: list[np.ndarray],
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
) -> list[FollowupResult]:
    """Segment several prior structures on one follow-up; one result per structure, in order.

    The follow-up is registered once; each structure is carried onto it by that registration
    (its own slices, its own prior slice per follow-up slice). Every follow-up slice any
    structure needs is encoded ONCE and every structure's prompts are decoded against that
    shared embedding; every prior slice is encoded once too, whatever the number of structures
    drawn on it (each structure's parts are clustered from its own mask on that encoding)."""
    t0 = time.perf_counter()
    if prior.is_rgb != target.is_rgb:
        raise imaging.ImagingError(
            f"prior is {'an RGB picture' if prior.is_rgb else 'a grey-level image'} but follow-up {target.source or 'target'} "
            f"is {'an RGB picture' if target.is_rgb else 'a grey-level image'}: they must be the same kind of image")
    shared_warnings: list[str] = []
    reg = _register(prior, target, shared_warnings, pictures=_picture_registration(engine))
    k = sampler.k if sampler is not None and sampler.kind != "none" else 0
    tracks = []
    for prior_mask in prior_masks:
        warnings = list(shared_warnings)
        slices, correspondence, registration, prior_on_target = _plan(reg, prior, prior_mask, target, margin, warnings)
        tracks.append(_Track(prior_mask, slices, correspondence, registration, prior_on_target, warnings,
                             mask=np.zeros(target.shape, bool), probability=np.zeros(target.shape, np.float32),
                             samples=np.zeros((k, *target.shape), bool) if k else None))
    timings = {"registration": time.perf_counter() - t0}

    nz = target.shape[0]
    latent_head = pool.latent_head(model_name) if k and sampler.kind == "latent" else None
    if k and sampler.kind == "latent" and latent_head is None:
        raise JobInputError(f"sampler 'latent' needs a latent head trained for model '{model_name}' ({model_name}_latent.pt); use prompt_noise or retrieval")
    t_seg = time.perf_counter()
    union = sorted({z for tr in tracks for z in tr.slices["all"]})
    batch = engine.encode_batch_size(encode_batch_mb) if len(union) > 1 else 1
    encoded: dict[int, Any] = {}
    t_enc = 0.0
    # prior slices not cached yet: encoded in batches too, once each (shared by the structures drawn on them)
    prior_zs = sorted({tr.correspondence[z] for tr in tracks for z in tr.slices["all"]})
    prior_imgs = {pz: imaging.to_model_input(prior, pz, window) for pz in prior_zs}
    # Each track holds its priors for the whole follow-up: with many structures they outnumber the
    # pool's LRU (P2SAM_PRIOR_CACHE_SIZE), which must not make a prior slice be encoded twice.
    for tr in tracks:  # cached ones first, before new entries can push them out of the LRU
        for pz in tr.prior_slices():
            if tr.prior_mask[pz].any() and pool.has_prior(model_name, engine, prior_imgs[pz], tr.prior_mask[pz]):
                tr.priors[pz] = pool.prior(model_name, engine, prior_imgs[pz], tr.prior_mask[pz])
    todo = {pz: [tr for tr in tracks if pz in tr.prior_slices() and tr.prior_mask[pz].any() and pz not in tr.priors]
            for pz in prior_zs}
    todo_zs = [pz for pz in prior_zs if todo[pz]]
    t = time.perf_counter()
    for j in range(0, len(todo_zs), batch):
        chunk = todo_zs[j : j + batch]
        for pz, enc in zip(chunk, engine.encode_batch([prior_imgs[pz] for pz in chunk])):
            for tr in todo[pz]:
                tr.priors[pz] = pool.prior(model_name, engine, prior_imgs[pz], tr.prior_mask[pz], encoded=enc)
    timings["encode_prior"] = time.perf_counter() - t
    wanted = [set(tr.slices["all"]) for tr in tracks]
    expected = [set(tr.slices["expected"]) for tr in tracks]
    for i, z in enumerate(union):
        if is_cancelled is not None and is_cancelled():
            raise JobCancelled()
        if z not in encoded:  # the next B slices in one encoder call
            t = time.perf_counter()
            chunk = union[i : i + batch]
            encoded = dict(zip(chunk, engine.encode_batch([imaging.to_model_input(target, zz, window) for zz in chunk])))
            t_enc += time.perf_counter() - t
        enc = encoded.pop(z)
        for tr, want, exp in zip(tracks, wanted, expected):
            if z in want:
                t = time.perf_counter()
                _segment_slice(tr, z, z in exp, enc, engine, pool, model_name, prior_imgs, method, sampler, latent_head)
                tr.decode_s += time.perf_counter() - t
        if progress is not None:
            progress((i + 1) / max(len(union), 1), f"slice {i + 1}/{len(union)}")
    timings["segmentation"] = time.perf_counter() - t_seg
    timings["encode_followup"] = t_enc
    timings["encode_batch"] = batch
    timings["slices_per_s"] = len(union) / timings["segmentation"] if union and timings["segmentation"] > 0 else 0.0
    timings["total"] = time.perf_counter() - t0
    out = []
    for tr in tracks:
        missing = [r.z for r in tr.results if r.expected and not r.segmentation.found]
        if missing:
            tr.warnings.append(f"structure not found on {len(missing)} slice(s) where registration expected it: {missing}")
        if nz > 1 and not tr.mask.any():
            tr.warnings.append("structure not found on this follow-up")
        out.append(FollowupResult(mask=tr.mask, probability=tr.probability, samples=tr.samples, slices=tr.results,
                                  registration=tr.registration, warnings=tr.warnings,
                                  timings={**timings, "decode": tr.decode_s}, prior_on_target=tr.prior_on_target))
    return out


def _segment_slice(tr: _Track, z: int, expected: bool, enc, engine: P2SAMEngine, pool: ModelPool, model_name: str,
                   prior_imgs: dict[int, np.ndarray], method: str, sampler: SamplerConfig | None, latent_head) -> None:
    """One structure on one encoded follow-up slice: decode, sample, record."""
    pz = tr.correspondence[z]
    engine_prior = tr.priors.get(pz) or pool.prior(model_name, engine, prior_imgs[pz], tr.prior_mask[pz])
    location = tr.prior_on_target[z] if engine.config.location and tr.prior_on_target is not None else None
    seg = engine.segment(enc, engine_prior, method=method, location=location)
    tr.mask[z] = seg.mask
    tr.probability[z] = 1.0 / (1.0 + np.exp(-np.clip(seg.logits, -30, 30)))
    result = SliceResult(z=z, prior_z=pz, expected=expected, segmentation=seg)
    if tr.samples is not None and seg.found:
        drawn = sample(engine, enc, seg, sampler, latent_head=latent_head)
        tr.samples[:, z] = drawn.masks
        tr.probability[z] = drawn.probability
        result.sample_dice = mean_pairwise_dice(drawn.masks)
    tr.results.append(result)


def _picture_registration(engine: P2SAMEngine) -> str:
    """2-D registration kind for pictures: only the location rule uses it (P2SAM_PICTURE_REGISTRATION)."""
    if not engine.config.location:
        return "off"
    from .settings import get_settings

    return get_settings().picture_registration


def _register(prior: Volume, target: Volume, warnings: list[str], pictures: str = "off"):
    """Registration prior -> follow-up, once per follow-up whatever the number of structures:
    rigid for volumes (a poor one adds a warning); for two same-size pictures the 2-D
    registration ``pictures`` (affine / rigid; identity + a warning when it fails), else None."""
    if prior.is_2d() and target.is_2d():
        if pictures == "off" or prior.shape[1:3] != target.shape[1:3]:
            return None
        preg = imaging.register_pictures(prior.array[0], target.array[0], pictures)
        if preg.method == "identity":
            warnings.append(f"picture registration: {preg.reason}")
        return preg
    reg = imaging.register_rigid(prior, target)
    if reg.quality.label == "poor":
        q = reg.quality
        good = "0.90" if q.measure == "NCC" else "1.12"
        value = "none" if q.value_after is None else f"{q.value_after:.2f}"
        warnings.append(f"registration quality is poor ({q.measure} {value}, good is {good} or more); check the follow-up slices")
    return reg


def _plan(reg, prior: Volume, prior_mask: np.ndarray, target: Volume, margin: int, warnings: list[str]):
    """Slices to segment (registered structure +- margin) and the prior slice for each."""
    if reg is None:
        same_size = prior_mask.shape == target.shape
        return {"all": [0], "expected": [0]}, [0], {"method": "single_slice"}, (prior_mask if same_size else None)
    if isinstance(reg, imaging.PictureRegistration):
        mapped = reg.map_mask(np.asarray(prior_mask)[0])[None]
        return {"all": [0], "expected": [0]}, [0], {**reg.summary(), "method": f"picture_{reg.method}"}, mapped
    summary = reg.summary()
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
