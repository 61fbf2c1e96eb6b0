"""Models: SAM backbones (Meta, fine-tuned, LoRA, the project's small one) and the P²SAM engine.

This package knows tensors, arrays and masks; never DICOM, HTTP or Celery.
"""

from .checkpoints import CheckpointError
from .engine import (
    Candidate,
    EncodedImage,
    EngineInputError,
    P2SAMConfig,
    P2SAMEngine,
    Prior,
    Segmentation,
)
from .registry import BACKBONES, LoadedModel, build_sam, bundled_weights, load_model, save_weights

__all__ = [
    "BACKBONES",
    "Candidate",
    "CheckpointError",
    "EncodedImage",
    "EngineInputError",
    "LoadedModel",
    "P2SAMConfig",
    "P2SAMEngine",
    "Prior",
    "Segmentation",
    "build_sam",
    "bundled_weights",
    "load_model",
    "save_weights",
]
