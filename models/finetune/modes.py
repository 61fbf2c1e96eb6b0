"""Which parameters train: full fine-tuning, or LoRA (paper appendix B, "LoRA" setting).

- ``full``: every parameter.
- ``lora``: LoRA (rank r) on every attention block's ``attn.qkv`` and ``attn.proj`` via
  ``models.lora.add_lora``, plus the modules the reference trains in full
  (``models.lora.TRAINED_MODULES``: patch embedding, neck, prompt encoder, mask decoder);
  everything else is frozen. ViT backbones (vit_b / vit_l / vit_h) and LiteMedSAM's TinyViT have
  attention blocks; the small conv backbone has none.
- ``decoder``: the prompt encoder and the mask decoder only; the image encoder is frozen (so its
  embeddings can be computed once per training image: ``TrainConfig.cache_views``).

Frozen normalisation layers stay in eval mode while training (``freeze_frozen_norms``): a frozen
BatchNorm must not learn running statistics from small training batches.
"""

from __future__ import annotations

from typing import Literal

from segment_anything.modeling import Sam
from torch import nn

Mode = Literal["full", "lora", "decoder"]
DECODER_MODULES = ("prompt_encoder", "mask_decoder")


def prepare_model(sam: Sam, mode: Mode = "full", lora_rank: int = 1, lora_alpha: float = 1.0) -> Sam:
    """Set ``requires_grad`` for the chosen mode (LoRA layers are injected in place)."""
    if mode == "full":
        for p in sam.parameters():
            p.requires_grad = True
        return sam
    if mode == "lora":
        from ..lora import add_lora  # peft is imported only for LoRA

        return add_lora(sam, rank=lora_rank, alpha=lora_alpha)
    if mode == "decoder":
        for name, p in sam.named_parameters():
            p.requires_grad = name.startswith(DECODER_MODULES)
        return sam
    raise ValueError(f"unknown training mode '{mode}' (full, lora or decoder)")


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode (call after .train())."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def encoder_frozen(sam: Sam) -> bool:
    return not any(p.requires_grad for p in sam.image_encoder.parameters())
