"""Which parameters train: full fine-tuning, or LoRA (paper appendix B, "LoRA" setting).

- ``full``: every parameter.
- ``lora``: LoRA (rank r) on every ViT block's ``attn.qkv`` and ``attn.proj`` via
  ``models.lora.add_lora``, plus the modules the reference trains in full
  (``models.lora.TRAINED_MODULES``: patch embedding, neck, prompt encoder, mask decoder);
  everything else is frozen. Only ViT backbones (vit_b / vit_l / vit_h) have attention blocks.
"""

from __future__ import annotations

from typing import Literal

from segment_anything.modeling import Sam

Mode = Literal["full", "lora"]


def prepare_model(sam: Sam, mode: Mode = "full", lora_rank: int = 1, lora_alpha: float = 1.0) -> Sam:
    """Set ``requires_grad`` for the chosen mode (LoRA layers are injected in place)."""
    if mode == "full":
        for p in sam.parameters():
            p.requires_grad = True
        return sam
    if mode == "lora":
        from ..lora import add_lora  # peft is imported only for LoRA

        return add_lora(sam, rank=lora_rank, alpha=lora_alpha)
    raise ValueError(f"unknown training mode '{mode}' (full or lora)")


def trainable_names(sam: Sam) -> list[str]:
    return [n for n, p in sam.named_parameters() if p.requires_grad]
