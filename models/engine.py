"""The P²SAM engine: set a patient's prior once, segment any number of follow-ups.

    engine = P2SAMEngine(load_model("kvasir").sam)
    prior = engine.set_prior(prior_image, prior_mask)      # encoded once, parts clustered once
    result = engine.segment(followup_image, prior)          # method="p2sam" (retrieval)

Images are ``H x W x 3`` uint8 RGB (or ``H x W`` grey); masks ``H x W`` bool, same size as their
image. Results are at the original size of the target image; point prompts are ``(x, y)`` =
(column, row) pixels of that image.

Methods: ``p2sam`` (part-aware prompts, the part count chosen by Wasserstein retrieval over
``pos_range`` x ``neg_range``), ``fixed`` (P²SAM at given part counts, no retrieval), ``persam``
(training-free PerSAM: mean prototype, target-guided attention, target-semantic prompting) and
``direct`` (direct transfer: no prompt at all) and ``box`` (the prior mask's bounding box as a box
prompt on the target, scaled to the target's size: what a MedSAM user does by hand).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

from .candidates import KINDS_WITH_LOCATION, SelectionWeights, eligible, mask_prompt, overlaps, propagated_box, selection_scores
from .cascade import CascadeInput, run_cascade
from .decoder import Guidance, decode, encode_prompts, logits_on_grid, upscale_logits
from .features import capture, combine
from .parts import argmax_xy, box_of, kmeans_prototypes, mask_to_grid, similarity_maps
from .regraf import RegrafConfig, refine_points
from .retrieval import Cost, mask_area_fraction, pick_best, size_aware_scores, wasserstein

Method = Literal["p2sam", "fixed", "persam", "direct", "box"]


class EngineInputError(ValueError):
    """An image or mask the engine cannot use (wrong shape, type, or empty prior)."""


@dataclass(frozen=True)
class P2SAMConfig:
    """Every choice of the method, defaulting to the reference code (see ALGORITHM.md)."""

    mode: Literal["medical", "natural"] = "medical"  # negatives: background parts (argmax) | argmin of mean similarity
    pos_range: tuple[int, int] = (1, 5)  # positive part counts tried by retrieval (inclusive)
    neg_range: tuple[int, int] = (1, 1)  # negative (background) part counts, medical mode
    cost: Cost = "sqeuclidean"  # Wasserstein ground cost on raw features; "cosine" = paper eq. 5
    kmeans_seed: int = 0
    kmeans_n_init: int = 10
    kmeans_space: Literal["raw", "normalized"] = "raw"  # features k-means clusters: raw (reference) or L2-normalised
    size_weight: float = 0.0  # retrieval score W / median W + size_weight x |ln(area / prior area)|; 0: reference
    retrieval_layer: str | None = None  # also transport this encoder layer's features (models/features.py); None: reference
    multimask_cascade: bool | None = None  # None: natural -> True (PerSAM), medical -> False (P²SAM)
    guidance: Guidance = "reference"  # PerSAM attention bias after (reference) or before (paper) softmax
    direct_candidate: bool = False  # also offer the no-prompt prediction to retrieval
    batched: bool = True  # one decoder call per cascade step for all candidates
    prune_k: int = 0  # retrieval: score every candidate after cascade step (a), refine only the best k; 0: all (reference)
    share_prompts: bool = False  # a point repeated in a candidate is given once; candidates with the same points share one decode
    encoder_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # autocast for the image encoder only (GPU path)
    regraf: RegrafConfig | None = None  # ReGRAF prompt refinement of the chosen candidate (off by default)
    # registration-guided candidates and selection (models/candidates.py), used when segment() gets a location
    location: bool = False  # add box / box + points / mask + points candidates and choose with the selection rule
    location_margin: float = 0.1  # the propagated box is widened by this fraction of its size on every side
    location_parts: int = 3  # box + points and mask + points candidates for n_pos = 1 .. this (at the first n_neg)
    overlap_weight: float = 1.0  # selection: - this x Dice(candidate, propagated mask)
    area_weight: float = 0.25  # selection: + this x |ln(candidate area / propagated area)|
    iou_weight: float = 0.0  # selection: - this x predicted IoU
    location_gate: float = 1.5  # a location candidate is eligible only if its W <= this x the best point candidate's W
    absent_ratio: float = 0.0  # > 0: a candidate with W > this x W(prior foreground, prior background) is background

    @property
    def selection(self) -> SelectionWeights:
        return SelectionWeights(self.overlap_weight, self.area_weight, self.iou_weight, self.location_gate, self.absent_ratio)

    @property
    def multimask(self) -> bool:
        return (self.mode == "natural") if self.multimask_cascade is None else self.multimask_cascade


@dataclass
class EncodedImage:
    """Image-encoder output for one image: features 1 x 256 x g x g (raw, un-normalised)."""

    features: torch.Tensor
    original_size: tuple[int, int]  # (H, W) of the image given
    input_size: tuple[int, int]  # (h, w) after resizing the longest side, before padding
    retrieval: torch.Tensor | None = None  # 1 x C' x g x g retrieval features (P2SAMConfig.retrieval_layer)


@dataclass
class Prior:
    """A patient's prior, encoded and clustered once, reused for every follow-up."""

    image: EncodedImage
    grid_mask: torch.Tensor  # g x g bool
    fg_features: torch.Tensor  # Nf x 256 raw features under the prior mask (the retrieval reference)
    bg_features: torch.Tensor  # Nb x 256 raw features outside it (padding counts as background)
    mean_embedding: torch.Tensor  # 256, mean foreground feature (PerSAM's target embedding)
    seed: int
    n_init: int
    normalized: bool = False  # k-means on L2-normalised features (P2SAMConfig.kmeans_space)
    area: float = 0.0  # fraction of the prior image inside the prior mask
    box: np.ndarray | None = None  # (x0, y0, x1, y1) inclusive box of the prior mask, prior pixels
    fg_retrieval: torch.Tensor | None = None  # Nf x C' retrieval-layer features under the mask (if configured)
    pos_parts: dict[int, torch.Tensor | None] = field(default_factory=dict)  # n -> n x 256 normalised
    neg_parts: dict[int, torch.Tensor | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    absent_distance: float | None = None  # W(foreground, background) of the prior, computed when first needed

    def parts(self, n: int, background: bool = False) -> torch.Tensor | None:
        """n prototypes of the foreground (or background), None if there are fewer cells than n."""
        cache, feats = (self.neg_parts, self.bg_features) if background else (self.pos_parts, self.fg_features)
        if n not in cache:
            cache[n] = kmeans_prototypes(feats, n, self.seed, self.n_init, self.normalized) if 1 <= n <= len(feats) else None
        return cache[n]


@dataclass
class Candidate:
    """One prompt set tried for a target, and how it scored."""

    n_pos: int
    n_neg: int
    points: np.ndarray  # N x 2 (x, y) original pixels
    labels: np.ndarray  # N, 1 positive / 0 negative
    distance: float = math.inf  # Wasserstein distance to the prior's foreground features
    iou_pred: float = 0.0
    cells: int = 0  # feature-grid cells inside the candidate mask
    area: float = 0.0  # fraction of the image inside the candidate mask
    score: float = math.inf  # retrieval score (= distance unless P2SAMConfig.size_weight > 0)
    box: np.ndarray | None = None  # step-(c) box (x0, y0, x1, y1), original pixels
    refined: bool = True  # went through cascade steps (b), (c); False: pruned after step (a), its mask/score are step (a)'s
    shared_with: int | None = None  # index of an earlier candidate with the same point set (one decode for both)
    step_a_score: float | None = None  # retrieval score of the step (a) mask (when pruning)
    unrefined_points: np.ndarray | None = None  # the points before ReGRAF refinement, if it ran
    kind: str = "points"  # points | direct | box | box_points | mask_points (models/candidates.py)
    overlap: float | None = None  # Dice with the propagated mask (when a location was given)
    area_change: float | None = None  # |ln(area / propagated area)| (when a location was given)
    selection_score: float | None = None  # the selection rule's score (lower wins; when it ran)
    eligible: bool | None = None  # whether the selection rule could choose it (when it ran)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "overlap": self.overlap,
            "area_change": self.area_change,
            "selection_score": None if self.selection_score is None or math.isinf(self.selection_score) else self.selection_score,
            "eligible": self.eligible,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "points": self.points.tolist(),
            "labels": self.labels.tolist(),
            "distance": None if math.isinf(self.distance) else self.distance,
            "iou_pred": self.iou_pred,
            "cells": self.cells,
            "area": self.area,
            "score": None if math.isinf(self.score) else self.score,
            "box": None if self.box is None else self.box.tolist(),
            "unrefined_points": None if self.unrefined_points is None else self.unrefined_points.tolist(),
            "refined": self.refined,
            "shared_with": self.shared_with,
            "step_a_score": None if self.step_a_score is None or math.isinf(self.step_a_score) else self.step_a_score,
        }


@dataclass
class Segmentation:
    """The engine's answer for one target image."""

    method: str
    mask: np.ndarray  # H x W bool at the target's original size
    logits: np.ndarray  # H x W float32 logits (probability = sigmoid)
    found: bool  # False: nothing was found (the mask is empty)
    chosen: int | None  # index into candidates
    candidates: list[Candidate]
    candidate_logits: torch.Tensor  # B x 1 x 4g x 4g final low-res logits of every candidate
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    selection: str = "retrieval"  # retrieval (smallest W) | location (models/candidates.py rule)
    retrieval_chosen: int | None = None  # p2sam: the candidate plain retrieval (smallest W, point candidates) chose

    def candidate_mask(self, sam: Sam, index: int | None, input_size: tuple[int, int]) -> np.ndarray:
        """Candidate ``index``'s mask at the target's original size (empty for None)."""
        if index is None:
            return np.zeros(self.mask.shape, bool)
        full = upscale_logits(sam, self.candidate_logits[index : index + 1], input_size, self.mask.shape)[0, 0]
        return (full > sam.mask_threshold).cpu().numpy()

    @property
    def best(self) -> Candidate | None:
        return None if self.chosen is None else self.candidates[self.chosen]

    def to_dict(self) -> dict:
        best = self.best
        return {
            "method": self.method,
            "found": self.found,
            "selection": self.selection,
            "kind": best.kind if best else None,
            "retrieval_chosen": self.retrieval_chosen,
            "n_pos": best.n_pos if best else None,
            "n_neg": best.n_neg if best else None,
            "points": best.points.tolist() if best else [],
            "labels": best.labels.tolist() if best else [],
            "distance": (None if best is None or math.isinf(best.distance) else best.distance),
            "iou_pred": best.iou_pred if best else None,
            "area_px": int(self.mask.sum()),
            "candidates": [c.to_dict() for c in self.candidates],
            "timings_s": {k: round(v, 6) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }


def prior_box_on(prior: Prior, size: tuple[int, int]) -> np.ndarray:
    """The prior mask's box (x0, y0, x1, y1) scaled from the prior image to a target of ``size`` (H, W)."""
    (ph, pw), (h, w) = prior.image.original_size, size
    x0, y0, x1, y1 = prior.box
    return np.array([x0 * w / pw, y0 * h / ph, (x1 + 1) * w / pw - 1, (y1 + 1) * h / ph - 1], dtype=np.float64)


def unique_points(points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (N x 2) and labels (N) with repeated (x, y, label) triples dropped, first kept."""
    seen, keep = set(), []
    for i, (p, lab) in enumerate(zip(points.tolist(), labels.tolist())):
        key = (p[0], p[1], lab)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return points[keep], labels[keep]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as H x W x 3 uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise EngineInputError(f"image must be uint8 (window CT first), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise EngineInputError(f"image must be H x W or H x W x 3, got shape {image.shape}")
    return np.ascontiguousarray(image)


class P2SAMEngine:
    """SamPredictor-like object: one model, a cached prior per patient, many targets."""

    def __init__(self, sam: Sam, config: P2SAMConfig | None = None) -> None:
        self.sam = sam.eval()
        self.config = config or P2SAMConfig()
        self.device = next(sam.parameters()).device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.grid = int(sam.prompt_encoder.image_embedding_size[0])

    def with_config(self, **changes) -> "P2SAMEngine":
        """A second engine on the same model with some settings changed."""
        return P2SAMEngine(self.sam, replace(self.config, **changes))

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> EncodedImage:
        return self.encode_batch([image])[0]

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> list[EncodedImage]:
        """Encode several images in one encoder call (they must have one size, e.g. the slices of a
        volume); the same features as ``encode`` one by one (up to float rounding)."""
        if not len(images):
            return []
        images = [as_rgb(im) for im in images]
        if len({im.shape for im in images}) != 1:
            raise EngineInputError(f"encode_batch needs images of one size, got {sorted({im.shape for im in images})}")
        resized = [self.transform.apply_image(im) for im in images]
        x = torch.as_tensor(np.stack(resized), device=self.device).permute(0, 3, 1, 2).contiguous()
        retrieval = None
        with self._encoder_autocast():
            if self.config.retrieval_layer:
                with capture(self.sam.image_encoder, self.config.retrieval_layer) as layer:
                    features = self.sam.image_encoder(self.sam.preprocess(x))
                retrieval = combine(features.float(), layer["out"].float())
            else:
                features = self.sam.image_encoder(self.sam.preprocess(x))
        features = features.float()  # the decoder, clustering and transport stay float32
        size, input_size = tuple(images[0].shape[:2]), tuple(resized[0].shape[:2])
        return [
            EncodedImage(features=features[i : i + 1], original_size=size, input_size=input_size,
                         retrieval=None if retrieval is None else retrieval[i : i + 1])
            for i in range(len(images))
        ]

    MAX_ENCODE_BATCH = 32

    def encode_batch_size(self, budget_mb: int) -> int:
        """Images per ``encode_batch`` call that fit ``budget_mb`` of encoder memory (1 .. 32; 1
        when the budget is 0). One image's memory is measured once per model: on a GPU the peak
        allocated by one encoder pass, on a CPU the sum of every encoder layer's output for one
        image (an over-estimate: inference frees most of them as it goes)."""
        if budget_mb <= 0:
            return 1
        per_image = getattr(self.sam, "_p2sam_encode_bytes", None)
        if per_image is None:
            per_image = self._measure_encoder_bytes()
            self.sam._p2sam_encode_bytes = per_image
        return int(max(1, min(self.MAX_ENCODE_BATCH, budget_mb * 2**20 // max(per_image, 1))))

    @torch.inference_mode()
    def _measure_encoder_bytes(self) -> int:
        size = self.sam.image_encoder.img_size
        x = torch.zeros((1, 3, size, size), device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with self._encoder_autocast():
                self.sam.image_encoder(self.sam.preprocess(x))
            return int(torch.cuda.max_memory_allocated(self.device) - base)
        total = [0]

        def count(module, inputs, output):
            if isinstance(output, torch.Tensor):
                total[0] += output.numel() * output.element_size()

        hooks = [m.register_forward_hook(count) for m in self.sam.image_encoder.modules() if not list(m.children())]
        try:
            with self._encoder_autocast():
                self.sam.image_encoder(self.sam.preprocess(x))
        finally:
            for h in hooks:
                h.remove()
        return max(total[0], 1)

    def _encoder_autocast(self):
        """Autocast for the image encoder when ``encoder_dtype`` asks for it (bf16/fp16 on a GPU)."""
        dtype = self.config.encoder_dtype
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=getattr(torch, dtype))

    @torch.inference_mode()
    def set_prior(self, image: np.ndarray | EncodedImage, mask: np.ndarray) -> Prior:
        """Encode the prior image and cluster its foreground/background into parts (cached)."""
        encoded = image if isinstance(image, EncodedImage) else self.encode(image)
        mask = np.asarray(mask).astype(bool)
        if mask.shape != encoded.original_size:
            raise EngineInputError(f"prior mask is {mask.shape}, its image is {encoded.original_size}: they must match")
        if not mask.any():
            raise EngineInputError("prior mask is empty: nothing to take the structure's appearance from")
        grid_mask = mask_to_grid(mask, self.sam, self.grid).to(self.device)
        feats = encoded.features[0].permute(1, 2, 0)  # g x g x C
        prior = Prior(
            image=encoded,
            grid_mask=grid_mask,
            fg_features=feats[grid_mask],
            area=float(mask.mean()),
            box=box_of(torch.from_numpy(mask)),
            fg_retrieval=None if encoded.retrieval is None else encoded.retrieval[0].permute(1, 2, 0)[grid_mask],
            bg_features=feats[~grid_mask],
            mean_embedding=feats[grid_mask].mean(0),
            seed=self.config.kmeans_seed,
            n_init=self.config.kmeans_n_init,
            normalized=self.config.kmeans_space == "normalized",
        )
        if len(prior.bg_features) == 0:
            prior.warnings.append("prior mask covers the whole image: no background parts, no negative points")
        for n in range(self.config.pos_range[0], self.config.pos_range[1] + 1):
            prior.parts(n)
        if self.config.mode == "medical":
            for n in range(self.config.neg_range[0], self.config.neg_range[1] + 1):
                prior.parts(n, background=True)
        return prior

    @torch.inference_mode()
    def segment(
        self,
        target: np.ndarray | EncodedImage,
        prior: Prior | None = None,
        method: Method = "p2sam",
        n_pos: int | None = None,
        n_neg: int | None = None,
        location: np.ndarray | None = None,
    ) -> Segmentation:
        """Segment the prior's structure on ``target``.

        Arguments:
          target: the follow-up image, ``H x W x 3`` uint8 RGB (array order: rows = y, columns = x),
            or its ``EncodedImage`` from :meth:`encode` (encode once, segment many times).
          prior: from :meth:`set_prior` (the prior image's encoding and parts); needed by every
            method but ``box``-less direct transfer.
          method: ``p2sam`` (retrieval over the config's ``pos_range`` x ``neg_range``), ``fixed``,
            ``persam``, ``direct`` or ``box``.
          n_pos, n_neg: ``fixed`` only: the part counts (default: the ranges' lower ends).
          location: the prior mask propagated onto the target by registration (``H x W`` bool, the
            target's original size), or None. ``box`` then prompts with its box (not the prior's);
            ``p2sam`` with ``P2SAMConfig.location`` adds the registration-guided candidates and
            chooses with the selection rule (models/candidates.py).

        Returns:
          a :class:`Segmentation`: ``mask`` ``H x W`` bool and ``logits`` ``H x W`` float32 at the
          target's original size; the candidates tried, their prompt points ``N x 2`` as ``(x, y)``
          original pixels. A target where nothing is found gives ``found=False`` and an empty mask.
        """
        cfg = self.config
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        enc = target if isinstance(target, EncodedImage) else self.encode(target)
        timings["encode"] = time.perf_counter() - t0
        if method != "direct" and prior is None:
            raise EngineInputError(f"method '{method}' needs a prior (set_prior first)")
        warnings = list(prior.warnings) if prior is not None else []
        if location is not None:
            location = np.asarray(location, bool)
            if location.shape != enc.original_size:
                raise EngineInputError(f"location mask is {location.shape}, the target is {enc.original_size}: they must match")
        guided_by_location = method == "p2sam" and cfg.location and location is not None
        retrieval_chosen = None

        # PerSAM (and P²SAM on natural images, as in the reference) use the argmin negative,
        # target-guided attention and target-semantic prompting.
        guided = method == "persam" or cfg.mode == "natural"
        t = time.perf_counter()
        if method in ("direct", "box"):
            cands, inputs = [Candidate(0, 0, np.zeros((0, 2), np.int64), np.zeros(0, np.int64))], []
        else:
            specs = self._specs(prior, method, n_pos, n_neg)
            if not specs:
                raise EngineInputError("no candidate part counts fit the prior (is the prior mask too small?)")
            cands, inputs = self._prompts(enc, prior, specs, argmin_negative=guided, guided=guided)
            if guided_by_location:
                self._location_candidates(location, cands, inputs)
        timings["prompts"] = time.perf_counter() - t

        prune, pruning = None, {}
        if method == "p2sam" and cfg.prune_k > 0:  # (k >= candidates: all refined, step (a) scores still reported)
            prune = self._pruner(enc, prior, pruning)
        t = time.perf_counter()
        if method == "direct":
            low_res, iou = decode(self.sam, enc.features, encode_prompts(self.sam, [None], [None]))
        elif method == "box":
            located = None if location is None else propagated_box(location, 0.0)
            cands[0].box = prior_box_on(prior, enc.original_size) if located is None else located
            cands[0].kind = "box"
            box_in = torch.as_tensor(self.transform.apply_boxes(cands[0].box[None], enc.original_size)[0], dtype=torch.float, device=self.device)
            low_res, iou = decode(self.sam, enc.features, encode_prompts(self.sam, [None], [None], boxes=[box_in]))
        else:
            target_embedding = prior.mean_embedding.reshape(1, 1, -1) if guided else None
            out = run_cascade(
                self.sam, enc.features, inputs, enc.input_size, enc.original_size,
                multimask=cfg.multimask, target_embedding=target_embedding, guidance=cfg.guidance, batched=cfg.batched,
                prune=prune, share=cfg.share_prompts,
            )
            low_res, iou = out.low_res, out.iou.reshape(-1, 1)
            for i, (cand, box, refined, owner) in enumerate(zip(cands, out.boxes, out.refined, out.shared_with)):
                cand.box, cand.refined = box, refined
                cand.shared_with = None if owner == i else owner
            if prune is not None:  # step (a) scores are per distinct prompt set, in order of first occurrence
                rows = {o: r for r, o in enumerate(sorted(set(out.shared_with)))}
                for cand, owner in zip(cands, out.shared_with):
                    cand.step_a_score = pruning["scores"][rows[owner]]
                timings["prune"] = pruning["seconds"]
            if method == "p2sam" and cfg.direct_candidate:
                d_low, d_iou = decode(self.sam, enc.features, encode_prompts(self.sam, [None], [None]))
                cands.append(Candidate(0, 0, np.zeros((0, 2), np.int64), np.zeros(0, np.int64), kind="direct"))
                low_res, iou = torch.cat([low_res, d_low]), torch.cat([iou, d_iou])
        timings["decode"] = time.perf_counter() - t - timings.get("prune", 0.0)  # the step (a) scoring is "prune"

        t = time.perf_counter()
        distances, cells = self._transport(low_res, enc, prior, pruning.setdefault("seen", {}))
        for i, cand in enumerate(cands):
            cand.iou_pred = float(iou[i, 0])
            cand.cells = cells[i]
            if prior is not None:
                cand.distance = distances[i]
        timings["transport"] = time.perf_counter() - t

        if method == "p2sam":
            scores = [c.distance for c in cands]
            if cfg.size_weight > 0:
                areas = mask_area_fraction(low_res, enc.input_size, self.sam.image_encoder.img_size)
                scores = size_aware_scores(scores, areas, prior.area, cfg.size_weight)
                for cand, area in zip(cands, areas):
                    cand.area = area
            for cand, score in zip(cands, scores):
                cand.score = score
            # pruned candidates report their step (a) score but are not chosen (reference: all are refined);
            # the registration-guided candidates are not retrieval's to choose
            chosen = pick_best([sc if c.refined and c.kind not in KINDS_WITH_LOCATION else math.inf for c, sc in zip(cands, scores)])
            retrieval_chosen = chosen
            if cfg.location and location is not None:
                chosen = self._select(cands, low_res, enc, prior, location)
        else:
            chosen = 0 if cands[0].cells > 0 or method in ("direct", "box") else None
        if cfg.regraf is not None and method not in ("direct", "box") and chosen is not None and chosen < len(inputs):
            t = time.perf_counter()
            low_res, iou = self._regraf(enc, prior, cands, inputs, chosen, low_res, iou, guided)
            timings["regraf"] = time.perf_counter() - t
        t = time.perf_counter()
        if chosen is None:
            h, w = enc.original_size
            mask, logits = np.zeros((h, w), bool), np.full((h, w), -20.0, np.float32)
        else:
            full = upscale_logits(self.sam, low_res[chosen : chosen + 1], enc.input_size, enc.original_size)[0, 0]
            logits = full.float().cpu().numpy()
            mask = logits > self.sam.mask_threshold
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        found = bool(mask.any())
        if not found:
            warnings.append("not found: no candidate produced a mask on this target")
        return Segmentation(
            method=method, mask=mask, logits=logits, found=found, chosen=chosen if found else None,
            candidates=cands, candidate_logits=low_res, timings=timings, warnings=warnings,
            selection="location" if guided_by_location else "retrieval", retrieval_chosen=retrieval_chosen,
        )

    def _location_candidates(self, location: np.ndarray, cands: list[Candidate], inputs: list[CascadeInput]) -> None:
        """Append the registration-guided candidates (models/candidates.py) for a non-empty location:
        the propagated box; that box + the points of the first ``location_parts`` point candidates
        at the first n_neg; the propagated mask as dense prompt + those points."""
        box = propagated_box(location, self.config.location_margin)
        if box is None:
            return
        dense = mask_prompt(self.sam, location).to(self.device)
        first_neg = cands[0].n_neg
        with_points = [(c, i) for c, i in zip(cands, inputs) if c.n_neg == first_neg and c.n_pos <= self.config.location_parts]
        empty = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
        cands.append(Candidate(0, 0, *empty, kind="box"))
        inputs.append(CascadeInput(points=empty[0], labels=empty[1], box=box))
        for kind in ("box_points", "mask_points"):
            for c, i in with_points:
                cands.append(Candidate(c.n_pos, c.n_neg, c.points, c.labels, kind=kind))
                inputs.append(CascadeInput(points=i.points, labels=i.labels, attn_sim=i.attn_sim,
                                           box=box if kind == "box_points" else None,
                                           mask_input=dense if kind == "mask_points" else None))

    def _select(self, cands: list[Candidate], low_res: torch.Tensor, enc: EncodedImage, prior: Prior, location: np.ndarray) -> int | None:
        """The selection rule (models/candidates.py): every candidate's signals, the gates, the best score."""
        weights = self.config.selection
        areas = mask_area_fraction(low_res, enc.input_size, self.sam.image_encoder.img_size)
        loc_prompt = mask_prompt(self.sam, location)
        loc_area = mask_area_fraction(loc_prompt, enc.input_size, self.sam.image_encoder.img_size)[0]
        reference_area = loc_area if loc_area > 0 else prior.area
        dice = overlaps(low_res, loc_prompt)
        distances = [c.distance for c in cands]
        scores = selection_scores(distances, dice, areas, reference_area, [c.iou_pred for c in cands], weights)
        absent = self._absent_distance(prior) if weights.absent_ratio > 0 else None
        ok = eligible([c.kind for c in cands], distances, weights, absent)
        for c, a, o, sc, e in zip(cands, areas, dice, scores, ok):
            c.area, c.overlap, c.selection_score, c.eligible = a, o, sc, e and c.refined
            c.area_change = abs(math.log(max(a, 1e-6) / max(reference_area, 1e-6)))
        return pick_best([c.selection_score if c.eligible else math.inf for c in cands])

    def _absent_distance(self, prior: Prior) -> float:
        """W(prior foreground, prior background): how far the structure's appearance is from its
        surroundings (cached on the prior); +inf without background."""
        if prior.absent_distance is None:
            bg = prior.bg_features
            if len(bg) > 2048:  # a fixed, evenly spread subset keeps the transport cheap
                bg = bg[torch.linspace(0, len(bg) - 1, 2048).long()]
            prior.absent_distance = wasserstein(prior.fg_features, bg, self.config.cost)
        return prior.absent_distance

    def _transport(self, low_res: torch.Tensor, enc: EncodedImage, prior: Prior | None, seen: dict[bytes, float]) -> tuple[list[float], list[int]]:
        """W of each candidate mask (B x 1 x 4g x 4g logits, > 0 on the grid) to the prior's
        foreground features, and its cells; masks covering the same cells share one OT solve
        (``seen``, kept across the pruning and the final pass)."""
        on_grid = logits_on_grid(low_res, self.grid) > 0
        cells = on_grid.flatten(1).sum(1).tolist()
        if prior is None:
            return [math.inf] * len(cells), cells
        reference, target_feats = prior.fg_features, enc.features[0].permute(1, 2, 0)
        if prior.fg_retrieval is not None and enc.retrieval is not None:
            reference, target_feats = prior.fg_retrieval, enc.retrieval[0].permute(1, 2, 0)
        out = []
        for i in range(len(cells)):
            key = on_grid[i].cpu().numpy().tobytes()
            if key not in seen:
                seen[key] = wasserstein(reference, target_feats[on_grid[i]], self.config.cost)
            out.append(seen[key])
        return out, cells

    def _pruner(self, enc: EncodedImage, prior: Prior, state: dict):
        """The cascade's prune callback: retrieval scores of the step (a) masks (the same score as
        the final choice: W, or the size-aware score), the best ``prune_k`` go on (ties: fewer parts)."""
        cfg = self.config

        def keep(logits: torch.Tensor, iou: torch.Tensor) -> list[int]:
            t = time.perf_counter()
            scores, _ = self._transport(logits, enc, prior, state.setdefault("seen", {}))
            if cfg.size_weight > 0:
                areas = mask_area_fraction(logits, enc.input_size, self.sam.image_encoder.img_size)
                scores = size_aware_scores(scores, areas, prior.area, cfg.size_weight)
            order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
            state["scores"] = scores
            state["seconds"] = time.perf_counter() - t
            return order[: cfg.prune_k]

        return keep

    def _specs(self, prior: Prior, method: Method, n_pos: int | None, n_neg: int | None) -> list[tuple[int, int]]:
        """(n_pos, n_neg) pairs to try, in retrieval order (fewer parts first)."""
        cfg = self.config
        if method == "persam":
            return [(1, 1)]
        if method == "fixed":
            n_pos = n_pos or cfg.pos_range[0]
            n_neg = cfg.neg_range[0] if n_neg is None else n_neg
            pos = [n_pos] if prior.parts(n_pos) is not None else []
            negs = [n_neg]
        else:
            pos = [n for n in range(cfg.pos_range[0], cfg.pos_range[1] + 1) if prior.parts(n) is not None]
            negs = list(range(cfg.neg_range[0], cfg.neg_range[1] + 1))
        if cfg.mode == "natural":
            return [(p, 1) for p in pos]
        negs = [m for m in negs if m == 0 or prior.parts(m, background=True) is not None] or [0]
        return [(p, m) for p in pos for m in negs]

    def _prompts(self, enc: EncodedImage, prior: Prior, specs: list[tuple[int, int]], argmin_negative: bool, guided: bool):
        """Point prompts for every candidate from ONE batch of similarity maps.

        Positives: the argmax of each part's map (n = 1: of the mean prototype's map).
        Negatives: the argmin of the mean positive map (natural images, PerSAM), or the argmax
        of each background part's map (medical images).
        """
        pos_ns = sorted({p for p, _ in specs})
        neg_ns = [] if argmin_negative else sorted({m for _, m in specs if m > 0})
        blocks, offsets = [], {}
        for key in [("pos", n) for n in pos_ns] + [("neg", m) for m in neg_ns]:
            protos = prior.parts(key[1], background=key[0] == "neg")
            offsets[key] = (sum(len(b) for b in blocks), len(protos))
            blocks.append(protos)
        maps = similarity_maps(self.sam, torch.cat(blocks), enc.features[0], enc.input_size, enc.original_size)
        peaks = argmax_xy(maps)

        def group(key):
            start, count = offsets[key]
            return maps[start : start + count], peaks[start : start + count]

        cands, inputs = [], []
        for n_pos, n_neg in specs:
            pos_maps, pos_xy = group(("pos", n_pos))
            mean_map = pos_maps.mean(0, keepdim=True)
            if argmin_negative:
                neg_xy = argmax_xy(mean_map, largest=False) if n_neg else np.zeros((0, 2), np.int64)
            else:
                neg_xy = group(("neg", n_neg))[1] if n_neg else np.zeros((0, 2), np.int64)
            points = np.concatenate([pos_xy, neg_xy])
            labels = np.concatenate([np.ones(len(pos_xy), np.int64), np.zeros(len(neg_xy), np.int64)])
            if self.config.share_prompts:  # two parts' peaks on one pixel: one point (the set is the prompt)
                points, labels = unique_points(points, labels)
            attn_sim = self._attention_bias(mean_map[0]) if guided else None
            cands.append(Candidate(n_pos, len(neg_xy), points, labels))
            inputs.append(CascadeInput(points=points, labels=labels, attn_sim=attn_sim))
        return cands, inputs

    def _regraf(self, enc, prior, cands, inputs, chosen, low_res, iou, guided):
        """Refine the chosen candidate's prompts (ReGRAF) and decode them on the original features."""
        cfg, cand = self.config, cands[chosen]
        pos = prior.parts(cand.n_pos)
        neg = prior.parts(cand.n_neg, background=True) if (cand.n_neg and not guided) else None
        points, labels = refine_points(self.sam, enc.features, enc.input_size, enc.original_size, pos, neg,
                                       cand.points, cand.labels, argmin_negative=guided, cfg=cfg.regraf)
        target_embedding = prior.mean_embedding.reshape(1, 1, -1) if guided else None
        out = run_cascade(self.sam, enc.features, [CascadeInput(points, labels, inputs[chosen].attn_sim)],
                          enc.input_size, enc.original_size, multimask=cfg.multimask,
                          target_embedding=target_embedding, guidance=cfg.guidance)
        cand.unrefined_points, cand.points, cand.labels, cand.box = cand.points, points, labels, out.boxes[0]
        low_res, iou = low_res.clone(), iou.clone()
        low_res[chosen], iou[chosen, 0] = out.low_res[0], out.iou[0]
        on_grid = logits_on_grid(low_res[chosen : chosen + 1], self.grid)[0] > 0
        cand.iou_pred, cand.cells = float(out.iou[0]), int(on_grid.sum())
        cand.distance = wasserstein(prior.fg_features, enc.features[0].permute(1, 2, 0)[on_grid], cfg.cost)
        return low_res, iou

    def _attention_bias(self, sim: torch.Tensor) -> torch.Tensor:
        """PerSAM's target-guided attention: sigmoid of the standardised similarity on the grid."""
        sim = (sim - sim.mean()) / sim.std().clamp_min(1e-12)
        sim = F.interpolate(sim[None, None], size=(self.grid, self.grid), mode="bilinear")
        return sim.sigmoid().reshape(1, 1, 1, -1)
