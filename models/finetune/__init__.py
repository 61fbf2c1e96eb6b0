"""Fine-tuning SAM backbones with the interactive protocol of the reference code (tensors only).

- ``prompts``: iteration-0 prompts, error-region points, prompt encoding with stop-gradient;
- ``losses``: Dice + 20 x focal + IoU-prediction MSE;
- ``interactive``: one batch through the K decoder iterations;
- ``data``: augmentation and batching into SAM's padded input frame;
- ``state``: AdamW, cosine schedule with warm-up, the resumable state;
- ``trainer``: epochs, validation (no-prompt Dice) selecting the checkpoint, resume;
- ``modes``: full fine-tuning or LoRA (which parameters train).
"""

from .data import AugmentConfig, Batch, augment, collate, resize_sample
from .interactive import InteractiveConfig, no_prompt_dice, train_step
from .modes import prepare_model
from .trainer import FitResult, TrainConfig, fit, load_best

__all__ = [
    "AugmentConfig",
    "Batch",
    "FitResult",
    "InteractiveConfig",
    "TrainConfig",
    "augment",
    "collate",
    "fit",
    "load_best",
    "no_prompt_dice",
    "prepare_model",
    "resize_sample",
    "train_step",
]
