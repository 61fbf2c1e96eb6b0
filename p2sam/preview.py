"""Preview pictures: the follow-up slice with the predicted contour, the prompts and the
uncertainty (pixel entropy) as a heat map. Pure PIL, no display needed.

Conventions: images are (H, W, 3) uint8 with rows = y; points are (x, y) pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .qc import binary_entropy

CONTOUR = (40, 230, 90)
PRIOR_CONTOUR = (80, 160, 255)
POSITIVE = (40, 230, 90)
NEGATIVE = (255, 60, 60)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def render_preview(
    image: np.ndarray,
    mask: np.ndarray,
    probability: np.ndarray | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    title: str = "",
    min_size: int = 384,
    reference_mask: np.ndarray | None = None,
) -> Image.Image:
    """Compose the preview (image, entropy heat map, contour, prompts, title strip)."""
    base = image.astype(np.float32)
    if probability is not None:
        ent = binary_entropy(probability)[..., None]
        heat = np.concatenate([np.ones_like(ent) * 255, 200 * (1 - ent), np.zeros_like(ent)], axis=2)
        alpha = 0.6 * ent
        base = base * (1 - alpha) + heat * alpha
    out = base.astype(np.uint8)
    if reference_mask is not None:
        out[_outline(reference_mask.astype(bool))] = PRIOR_CONTOUR
    out[_outline(mask.astype(bool))] = CONTOUR
    scale = max(1, int(np.ceil(min_size / max(image.shape[:2]))))
    pic = Image.fromarray(out).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pic)
    if points is not None and labels is not None:
        r = max(3, scale * 2)
        for (x, y), lab in zip(np.asarray(points), np.asarray(labels)):
            cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
            color = POSITIVE if lab == 1 else NEGATIVE
            if lab == 1:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 255, 255), fill=color)
            else:
                draw.line([cx - r, cy - r, cx + r, cy + r], fill=color, width=3)
                draw.line([cx - r, cy + r, cx + r, cy - r], fill=color, width=3)
    if title:
        strip = Image.new("RGB", (pic.width, 22), (20, 20, 20))
        ImageDraw.Draw(strip).text((6, 5), title, fill=(235, 235, 235))
        canvas = Image.new("RGB", (pic.width, pic.height + strip.height))
        canvas.paste(strip, (0, 0))
        canvas.paste(pic, (0, strip.height))
        pic = canvas
    return pic


def save_preview(path: str | Path, *args, **kwargs) -> Path:
    path = Path(path)
    render_preview(*args, **kwargs).save(path, format="PNG", optimize=True)
    return path
