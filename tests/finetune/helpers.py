"""Tiny models and synthetic samples that make training tests run in seconds."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from models import build_sam
from models.registry import PIXEL_MEAN, PIXEL_STD

TINY_SMALL = {"img_size": 64, "widths": [8, 8, 16, 16, 16], "blocks": [1, 1, 1, 1], "decoder_mlp_dim": 64}


def tiny_small(seed: int = 0) -> Sam:
    """The project's small backbone at 64 px (8 x 8 grid) with a thin encoder."""
    torch.manual_seed(seed)
    return build_sam("small", TINY_SMALL)


def tiny_vit(seed: int = 0) -> Sam:
    """A two-block ViT SAM at 64 px: the block layout LoRA targets (``blocks.N.attn.qkv/proj``)."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=256,
        qkv_bias=True, use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
    )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=64, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam


def squares(n: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n samples: a bright square on a dark noisy background (H x W x 3 uint8, H x W bool)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = size, int(size * rng.uniform(0.7, 1.0))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        s = int(rng.integers(12, 28))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        img[y : y + s, x : x + s] = (220, 120, 90)
        mask = np.zeros((h, w), bool)
        mask[y : y + s, x : x + s] = True
        out.append((img, mask))
    return out
