"""Uncertainty samples for a P²SAM result: K plausible masks, batched into one decoder call.

Samplers (training-free):
- ``prompt_noise``: Student-t noise on the final step's sparse prompt embeddings (points + box),
  decoded with the final logits as mask prompt (ProSAM's argument: heavier tails than Gaussian
  explore the prompt neighbourhood better). ``scale`` is relative to the embeddings' std.
- ``retrieval``: the retrieval candidates as a posterior, weights softmax(-(W - W_min) / tau),
  tau relative to W_min; K draws from it.
Learned:
- ``latent``: a Probabilistic-SAM latent head (models/latent.py); K draws from its prior net give
  K offsets added to the final step's sparse prompt tokens.
Shapes: samples K x H x W bool at the target's original size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import decode, encode_prompts, upscale_logits
from .engine import EncodedImage, P2SAMEngine, Segmentation


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = "prompt_noise"  # prompt_noise | retrieval | none
    k: int = 16
    scale: float = 0.3  # prompt_noise: noise std as a fraction of the sparse embeddings' std
    df: float = 3.0  # prompt_noise: Student-t degrees of freedom
    tau: float = 0.05  # retrieval: temperature as a fraction of the best distance
    seed: int = 0


@dataclass
class Samples:
    masks: np.ndarray  # K x H x W bool
    probability: np.ndarray  # H x W float32, mean of the samples' probabilities
    weights: np.ndarray | None = None  # retrieval: posterior weight of each candidate


def empty_samples(seg: Segmentation, k: int) -> Samples:
    h, w = seg.mask.shape
    return Samples(masks=np.zeros((k, h, w), bool), probability=np.zeros((h, w), np.float32))


def final_step_prompts(engine: P2SAMEngine, enc: EncodedImage, seg: Segmentation, k: int):
    """The chosen candidate's final-step prompts (points + box + its logits as mask prompt), K times."""
    best = seg.best
    sam, device = engine.sam, engine.device
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    pts = torch.as_tensor(transform.apply_coords(best.points.astype(np.float64), enc.original_size), dtype=torch.float, device=device)
    labs = torch.as_tensor(best.labels, dtype=torch.float, device=device)
    box = None
    if best.box is not None:
        box = torch.as_tensor(transform.apply_boxes(best.box[None], enc.original_size)[0], dtype=torch.float, device=device)
    mask_in = seg.candidate_logits[seg.chosen : seg.chosen + 1].expand(k, -1, -1, -1)
    return encode_prompts(sam, [pts] * k, [labs] * k, boxes=[box] * k, mask_inputs=mask_in)


def _decode_samples(engine: P2SAMEngine, enc: EncodedImage, prompts) -> Samples:
    low, _ = decode(engine.sam, enc.features, prompts, multimask=False)
    logits = upscale_logits(engine.sam, low, enc.input_size, enc.original_size)[:, 0]
    probs = torch.sigmoid(logits)
    return Samples(masks=(logits > 0).cpu().numpy(), probability=probs.mean(0).float().cpu().numpy())


def _usable(seg: Segmentation, cfg: SamplerConfig) -> bool:
    return seg.best is not None and cfg.k > 0 and len(seg.best.points) > 0


@torch.inference_mode()
def prompt_noise_samples(engine: P2SAMEngine, enc: EncodedImage, seg: Segmentation, cfg: SamplerConfig) -> Samples:
    if not _usable(seg, cfg):
        return empty_samples(seg, cfg.k)
    prompts = final_step_prompts(engine, enc, seg, cfg.k)
    noise = _student_t(prompts.sparse.shape, cfg.df, cfg.seed).to(engine.device)
    prompts.sparse = prompts.sparse + cfg.scale * prompts.sparse.std() * noise
    return _decode_samples(engine, enc, prompts)


@torch.inference_mode()
def latent_samples(engine: P2SAMEngine, enc: EncodedImage, seg: Segmentation, cfg: SamplerConfig, head) -> Samples:
    """K draws from the latent head's prior net, each added to the final-step prompt tokens."""
    if not _usable(seg, cfg):
        return empty_samples(seg, cfg.k)
    prompts = final_step_prompts(engine, enc, seg, cfg.k)
    prior = head.prior(enc.features)
    eps = torch.from_numpy(np.random.default_rng(cfg.seed).standard_normal((cfg.k, head.latent_dim)).astype(np.float32)).to(engine.device)
    z = prior.base_dist.loc + prior.base_dist.scale * eps
    prompts.sparse = prompts.sparse + head.offset(z)
    return _decode_samples(engine, enc, prompts)


def _student_t(shape, df: float, seed: int) -> torch.Tensor:
    """Seeded standard Student-t draws (numpy's generator: reproducible across devices)."""
    return torch.from_numpy(np.random.default_rng(seed).standard_t(df, size=tuple(shape)).astype(np.float32))


def retrieval_samples(engine: P2SAMEngine, enc: EncodedImage, seg: Segmentation, cfg: SamplerConfig) -> Samples:
    distances = np.array([c.distance for c in seg.candidates], dtype=np.float64)
    finite = np.isfinite(distances)
    if not finite.any() or cfg.k == 0:
        return empty_samples(seg, cfg.k)
    d_min = distances[finite].min()
    tau = max(cfg.tau * max(d_min, 1e-12), 1e-12)
    logw = np.where(finite, -(distances - d_min) / tau, -math.inf)
    weights = np.exp(logw - logw.max())
    weights /= weights.sum()
    rng = np.random.default_rng(cfg.seed)
    draws = rng.choice(len(weights), size=cfg.k, p=weights)
    logits = upscale_logits(engine.sam, seg.candidate_logits, enc.input_size, enc.original_size)[:, 0]
    masks = (logits > 0).cpu().numpy()
    probs = torch.sigmoid(logits).float().cpu().numpy()
    probability = np.tensordot(weights, probs, axes=1).astype(np.float32)
    return Samples(masks=masks[draws], probability=probability, weights=weights)


def sample(engine: P2SAMEngine, enc: EncodedImage, seg: Segmentation, cfg: SamplerConfig, latent_head=None) -> Samples:
    if cfg.kind == "prompt_noise":
        return prompt_noise_samples(engine, enc, seg, cfg)
    if cfg.kind == "retrieval":
        return retrieval_samples(engine, enc, seg, cfg)
    if cfg.kind == "latent":
        if latent_head is None:
            raise ValueError("the latent sampler needs a trained latent head for this model (p2sam train-latent)")
        return latent_samples(engine, enc, seg, cfg, latent_head)
    if cfg.kind == "none":
        return empty_samples(seg, 0)
    raise ValueError(f"unknown sampler '{cfg.kind}' (prompt_noise, retrieval, latent, none)")
