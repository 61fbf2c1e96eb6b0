"""A SAM whose image encoder computes features we can reason about (for known-answer tests).

``ColorEncoder`` averages the normalised RGB values of each 8x8 cell and maps them linearly into
256 dimensions (plus a fixed offset, so padding has a well-defined direction). Distances between
features are therefore distances between cell colours: k-means parts, similarity peaks and
Wasserstein distances have answers we can compute by hand. The prompt encoder and mask decoder
are SAM's own, randomly initialised.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from models.registry import PIXEL_MEAN, PIXEL_STD


class ColorEncoder(nn.Module):
    def __init__(self, img_size: int = 64, stride: int = 8) -> None:
        super().__init__()
        self.img_size = img_size
        self.stride = stride
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(256, 4, generator=gen))
        self.register_buffer("proj", q[:, :3] * 10.0)
        self.register_buffer("offset", q[:, 3] * 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(x, self.stride)  # B x 3 x g x g
        feats = torch.einsum("kc,bchw->bkhw", self.proj, cells)
        return feats + self.offset[None, :, None, None]

    def feature_of(self, rgb: tuple[int, int, int]) -> torch.Tensor:
        """The feature of a cell filled with one RGB colour."""
        norm = (torch.tensor(rgb, dtype=torch.float) - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
        return self.proj @ norm + self.offset


def color_sam(img_size: int = 64) -> Sam:
    torch.manual_seed(0)
    grid = img_size // 8
    sam = Sam(
        image_encoder=ColorEncoder(img_size),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=512, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam.eval()
