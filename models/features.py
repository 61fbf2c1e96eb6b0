"""Retrieval features from a richer encoder layer (an engine option, off by default).

The reference transports SAM's final embedding (the neck output). ``P2SAMConfig.retrieval_layer``
names a sub-module of the image encoder (e.g. ``stage4`` of the small encoder, ``blocks.5`` of a
ViT) whose output is captured during ``encode``; the retrieval features are then the neck
features and that layer's features, each L2-normalised per grid cell and concatenated (the layer
bilinearly resized to the g x g grid), so both count equally in the Wasserstein cost.

Shapes: conv outputs ``B x C x h x w``; ViT blocks ``B x h x w x C`` (channels last); the result
is ``1 x (256 + C) x g x g``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn
from torch.nn import functional as F


@contextmanager
def capture(encoder: nn.Module, name: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``encoder.<name>`` (as ``B x C x h x w``) while the block runs."""
    try:
        module = encoder.get_submodule(name)
    except AttributeError:
        raise ValueError(f"retrieval_layer '{name}' is not a module of the image encoder") from None
    store: dict[str, torch.Tensor] = {}

    def hook(mod, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        store["out"] = out.permute(0, 3, 1, 2) if isinstance(mod, Block) else out

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def combine(neck: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """Concatenate per-cell L2-normalised neck (1 x 256 x g x g) and layer features (resized)."""
    g = neck.shape[-2:]
    layer = F.interpolate(layer.float(), size=g, mode="bilinear", align_corners=False)
    return torch.cat([F.normalize(neck, dim=1), F.normalize(layer, dim=1)], dim=1)
