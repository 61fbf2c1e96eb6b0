"""The project's own small SAM-architecture image encoder.

No pretrained SAM weights can be downloaded where this project is built, so the embedded default
models pair SAM's own prompt encoder and mask decoder with this encoder, sized to train on a
2-core CPU. It is a residual conv net with a small feature pyramid: strides 8, 16 and 32 are
fused at stride 8, so a 256-px input gives SAM's 256-channel embedding on a 32x32 grid, followed
by SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d).

Input: B x 3 x img_size x img_size, normalised and padded by ``Sam.preprocess``.
Output: B x 256 x (img_size / 8) x (img_size / 8).
"""

from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip connection (ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(x + y, inplace=True)


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cout, stride=2), *[ResidualBlock(cout) for _ in range(blocks)])


class SmallImageEncoder(nn.Module):
    """Residual conv encoder with a stride-8 feature pyramid and SAM's neck.

    ``img_size`` is read by ``Sam.preprocess``/``postprocess`` and by the resize transform,
    exactly like ``ImageEncoderViT.img_size``.
    """

    def __init__(
        self,
        img_size: int = 256,
        widths: tuple[int, int, int, int, int] = (32, 64, 128, 160, 192),
        blocks: tuple[int, int, int, int] = (1, 2, 2, 1),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {img_size}")
        self.img_size = img_size
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(_conv_bn(3, w0, stride=2), _conv_bn(w0, w0))  # /2
        self.stage1 = _stage(w0, w1, blocks[0])  # /4
        self.stage2 = _stage(w1, w2, blocks[1])  # /8
        self.stage3 = _stage(w2, w3, blocks[2])  # /16
        self.stage4 = _stage(w3, w4, blocks[3])  # /32
        self.lateral2 = nn.Conv2d(w2, out_chans, 1)
        self.lateral3 = nn.Conv2d(w3, out_chans, 1)
        self.lateral4 = nn.Conv2d(w4, out_chans, 1)
        # SAM's neck, as in ImageEncoderViT.
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def grid_size(self) -> int:
        return self.img_size // 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.stem(x))
        c2 = self.stage2(x)
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        size = c2.shape[-2:]
        p = (
            self.lateral2(c2)
            + F.interpolate(self.lateral3(c3), size=size, mode="bilinear", align_corners=False)
            + F.interpolate(self.lateral4(c4), size=size, mode="bilinear", align_corners=False)
        )
        return self.neck(p)
