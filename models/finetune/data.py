"""Training samples as tensors: augmentation and batching into SAM's padded input frame.

A sample is ``(image, mask)``: ``H x W x 3`` uint8 RGB and ``H x W`` bool, already resized so the
longest side is the model's ``img_size`` (``resize_sample``, the inference engine's own
``ResizeLongestSide``). Augmentation keeps that convention (longest side <= ``img_size``);
``collate`` normalises and zero-pads bottom/right with the model's own ``Sam.preprocess`` (SAM's
mean/std, or LiteMedSAM's min-max), so training inputs look exactly like inference inputs.

All randomness comes from one ``torch.Generator`` (its state is saved with the training state,
so a resumed run continues the same random stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F

Sample = tuple[np.ndarray, np.ndarray]


def resize_sample(image: np.ndarray, mask: np.ndarray, size: int) -> Sample:
    """Resize so the longest side is ``size`` (the engine's transform); mask thresholded at 0.5."""
    transform = ResizeLongestSide(size)
    img = transform.apply_image(np.ascontiguousarray(image))
    m = transform.apply_image(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2))[..., 0] > 127
    return img, m


@dataclass(frozen=True)
class AugmentConfig:
    """What ``augment`` may do; the defaults suit endoscopy (no natural orientation)."""

    flips: bool = True
    rot90: bool = True
    crop_p: float = 0.5  # probability of a random crop (zoom in)
    crop_min: float = 0.55  # smallest crop side, as a fraction of the image side
    shrink_p: float = 0.25  # probability of shrinking the image inside the frame (zoom out)
    shrink_min: float = 0.6  # smallest longest side after shrinking, fraction of img_size
    jitter: float = 0.2  # brightness / contrast / saturation factors in [1 - j, 1 + j]


NO_AUGMENT = AugmentConfig(flips=False, rot90=False, crop_p=0.0, shrink_p=0.0, jitter=0.0)


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def _resize(img: torch.Tensor, mask: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    img = F.interpolate(img[None], (h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), (h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
    return img, mask


def augment(image: np.ndarray, mask: np.ndarray, size: int, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """One random augmentation of a sample: returns 3 x h x w float (0..255) and h x w bool, max(h, w) <= size."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    m = torch.from_numpy(np.ascontiguousarray(mask)).bool()
    if cfg.flips and _u(gen) < 0.5:
        img, m = img.flip(-1), m.flip(-1)
    if cfg.flips and _u(gen) < 0.5:
        img, m = img.flip(-2), m.flip(-2)
    if cfg.rot90:
        k = int(torch.randint(4, (1,), generator=gen))
        img, m = torch.rot90(img, k, (-2, -1)), torch.rot90(m, k, (-2, -1))
    h, w = m.shape
    if cfg.crop_p > 0 and _u(gen) < cfg.crop_p:
        ch, cw = max(8, int(h * _u(gen, cfg.crop_min, 1.0))), max(8, int(w * _u(gen, cfg.crop_min, 1.0)))
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys):  # keep the structure's centre inside the crop
            cy, cx = int(ys.float().mean()), int(xs.float().mean())
            y0 = int(_u(gen, max(0, cy - ch + 1), min(cy, h - ch) + 1)) if h > ch else 0
            x0 = int(_u(gen, max(0, cx - cw + 1), min(cx, w - cw) + 1)) if w > cw else 0
        else:
            y0, x0 = int(_u(gen, 0, h - ch + 1)), int(_u(gen, 0, w - cw + 1))
        y0, x0 = min(max(y0, 0), h - ch), min(max(x0, 0), w - cw)
        img, m = img[:, y0 : y0 + ch, x0 : x0 + cw], m[y0 : y0 + ch, x0 : x0 + cw]
        h, w = ch, cw
    longest = size
    if cfg.shrink_p > 0 and _u(gen) < cfg.shrink_p:
        longest = int(size * _u(gen, cfg.shrink_min, 1.0))
    scale = longest / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    if (nh, nw) != (h, w):
        img, m = _resize(img, m, nh, nw)
    if cfg.jitter > 0:
        j = cfg.jitter
        grey = img.mean(0, keepdim=True)
        img = grey + (img - grey) * _u(gen, 1 - j, 1 + j)  # saturation
        img = img * _u(gen, 1 - j, 1 + j)  # brightness
        mean = img.mean()
        img = mean + (img - mean) * _u(gen, 1 - j, 1 + j)  # contrast
        img = img.clamp(0, 255)
    return img, m


@dataclass
class Batch:
    """B samples in the model's input frame (S = img_size)."""

    images: torch.Tensor  # B x 3 x S x S, normalised, zero-padded
    masks: torch.Tensor  # B x S x S bool ground truth (padding = background)
    valid: torch.Tensor  # B x S x S bool, True inside the unpadded image

    def __len__(self) -> int:
        return self.images.shape[0]


def collate(samples: Sequence[tuple[torch.Tensor, torch.Tensor]], sam: Sam) -> Batch:
    """Normalise and pad to S x S with ``sam.preprocess`` (S = ``sam.image_encoder.img_size``).

    samples: (3 x h x w float 0..255, h x w bool), h, w <= S.
    """
    size = sam.image_encoder.img_size
    b = len(samples)
    images = torch.zeros(b, 3, size, size)
    masks = torch.zeros(b, size, size, dtype=torch.bool)
    valid = torch.zeros(b, size, size, dtype=torch.bool)
    with torch.no_grad():
        for i, (img, m) in enumerate(samples):
            h, w = m.shape
            images[i] = sam.preprocess(img[None].to(sam.pixel_mean.device))[0].cpu()
            masks[i, :h, :w] = m
            valid[i, :h, :w] = True
    return Batch(images=images, masks=masks, valid=valid)


def batches(n: int, batch_size: int, gen: torch.Generator | None, drop_last: bool = False) -> list[list[int]]:
    """Index batches over n samples, shuffled with ``gen`` (None: in order)."""
    order = torch.randperm(n, generator=gen).tolist() if gen is not None else list(range(n))
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size and len(out) > 1:
        out = out[:-1]
    return out


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and not (drop_last and full) else 0) if n else 0


__all__ = ["AugmentConfig", "Batch", "NO_AUGMENT", "Sample", "augment", "batches", "collate", "resize_sample", "steps_per_epoch"]
