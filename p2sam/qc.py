"""Quality-control numbers for one follow-up: volume, its uncertainty, and slices to review.

Thresholds come from the model card's ``qc`` section (calibrated by ``bench.uncertainty
--calibrate``: :func:`thresholds_from_card`), else from the module constants below, so the
reasons a slice is flagged are stated, not hidden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from imaging import Volume

from .followup import FollowupResult

# Fallbacks for a model whose card carries no calibrated thresholds. A slice is flagged for
# review when its uncertainty samples agree less than MIN_SAMPLE_DICE (mean pairwise Dice), when
# the prior's parts matched it worse than the model's max_distance (Wasserstein distance of the
# chosen candidate), or when the structure was expected there (registration) and not found.
MIN_SAMPLE_DICE = 0.85


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of a probability map, in bits (0 = certain, 1 = p of 0.5)."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


@dataclass(frozen=True)
class QcThresholds:
    min_sample_dice: float = MIN_SAMPLE_DICE
    max_distance: float | None = None  # model-specific (feature scale): only from a calibrated card
    source: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def thresholds_from_card(card: dict[str, Any] | None, sampler: str | None = None) -> QcThresholds:
    """The card's ``qc`` section (written from ``bench.uncertainty --calibrate``), else the defaults.

    The sample-agreement threshold was calibrated on one sampler's disagreement (``qc.sampler``):
    a job that samples with another kind gets the default threshold, not that one."""
    qc = dict((card or {}).get("qc") or {})
    if not qc:
        return QcThresholds()
    calibrated_for = qc.get("sampler")
    same_sampler = sampler is None or calibrated_for is None or calibrated_for == sampler
    return QcThresholds(
        min_sample_dice=float(qc.get("min_sample_dice", MIN_SAMPLE_DICE)) if same_sampler else MIN_SAMPLE_DICE,
        max_distance=None if qc.get("max_distance") is None else float(qc["max_distance"]),
        source=str(qc.get("source", "model card")) if same_sampler
        else f"default sample-agreement threshold (the card's was calibrated for {calibrated_for}, the job samples with {sampler})",
    )


def target_qc(result: FollowupResult, target: Volume, thresholds: QcThresholds | None = None) -> dict[str, Any]:
    th = thresholds or QcThresholds()
    voxel_ml = float(np.prod(target.spacing)) / 1000.0
    area_mm2 = target.voxel_area_mm2()
    qc: dict[str, Any] = {
        "volume_ml": float(result.mask.sum() * voxel_ml),
        "area_mm2_per_slice": {int(z): float(result.mask[z].sum() * area_mm2) for z in np.flatnonzero(result.mask.any(axis=(1, 2)))},
        "slices_segmented": [s.z for s in result.slices],
    }
    if target.is_2d():  # a picture or a single slice: an area, not a volume (volume_ml counts 1 mm thickness)
        qc["area_mm2"] = float(result.mask.sum() * area_mm2)
    region = result.mask.copy()
    if result.samples is not None and len(result.samples):
        region |= result.samples.any(axis=0)
        volumes = result.samples.reshape(len(result.samples), -1).sum(1) * voxel_ml
        qc["expected_volume_ml"] = float(volumes.mean())
        qc["volume_interval_90_ml"] = [float(np.percentile(volumes, 5)), float(np.percentile(volumes, 95))]
        dices = [s.sample_dice for s in result.slices if s.sample_dice is not None]
        qc["mean_sample_dice"] = float(np.mean(dices)) if dices else None
    qc["mean_entropy_bits"] = float(binary_entropy(result.probability[region]).mean()) if region.any() else 0.0
    flagged = []
    for s in result.slices:
        reasons = []
        if s.expected and not s.segmentation.found:
            reasons.append("expected but not found")
        if s.sample_dice is not None and s.sample_dice < th.min_sample_dice:
            reasons.append(f"samples disagree (mean pairwise Dice {s.sample_dice:.2f} < {th.min_sample_dice:.2f})")
        best = s.segmentation.best
        if th.max_distance is not None and best is not None and np.isfinite(best.distance) and best.distance > th.max_distance:
            reasons.append(f"weak match to the prior (Wasserstein distance {best.distance:.3g} > {th.max_distance:.3g})")
        if reasons:
            flagged.append({"z": s.z, "reasons": reasons})
    qc["flagged_slices"] = flagged
    qc["thresholds"] = th.to_dict()
    qc["review"] = bool(flagged) or result.registration.get("quality") == "poor"
    return qc
