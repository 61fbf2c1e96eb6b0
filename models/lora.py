"""LoRA on SAM's image encoder (``attn.qkv`` and ``attn.proj`` of every block), with peft.

The paper's "LoRA" setting trains LoRA (reference rank 1) plus the patch embedding, the neck, the
prompt encoder and the mask decoder. An adapter file (``format: p2sam-lora/1``) therefore holds
the LoRA tensors *and* those fully trained modules; it is applied on top of the base checkpoint it
was trained from, and merged into the base weights for inference (no run-time overhead).

The same file holds a decoder-only adaptation (rank 0: no LoRA tensors, the prompt encoder and mask
decoder trained in full). ViT blocks (``blocks.N.attn``) and TinyViT's (``layers.L.blocks.N.attn``,
LiteMedSAM) both match the target modules. ``base_weights`` names a bundled base (e.g.
``lite_medsam``) so that ``load_model(adapter)`` finds the base by itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from segment_anything.modeling import Sam
from torch import nn

from .checkpoints import LORA_FORMAT, CheckpointError, read_checkpoint, write_checkpoint

TARGET_MODULES = r".*blocks\.\d+\.attn\.(qkv|proj)"
# Modules trained in full alongside LoRA (paper appendix B).
TRAINED_MODULES = ("image_encoder.patch_embed", "image_encoder.neck", "prompt_encoder", "mask_decoder")


def add_lora(sam: Sam, rank: int = 1, alpha: float = 1.0, dropout: float = 0.0) -> Sam:
    """Inject LoRA layers into the encoder's attention and freeze what LoRA training freezes."""
    if not any(re.fullmatch(TARGET_MODULES, name) for name, _ in sam.image_encoder.named_modules()):
        raise CheckpointError("LoRA targets attention blocks (vit_b/l/h, lite_medsam); this backbone's encoder has none")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES)
    inject_adapter_in_model(config, sam.image_encoder)
    for name, param in sam.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith(TRAINED_MODULES)
    sam._p2sam_lora = {"rank": rank, "alpha": alpha}  # type: ignore[attr-defined]
    return sam


def save_lora_file(
    sam: Sam,
    path: str | Path,
    base_backbone: str,
    base_sha256: str,
    card: dict[str, Any] | None = None,
    base_weights: str | None = None,
    trained_modules: tuple[str, ...] = TRAINED_MODULES,
    half: bool = False,
) -> Path:
    """Write the LoRA tensors (if any) and the fully trained modules to an adapter file.

    ``half`` stores floating-point parameters as float16 (buffers stay float32).
    """
    lora_cfg = getattr(sam, "_p2sam_lora", None)
    lora_state = get_peft_model_state_dict(sam.image_encoder) if lora_cfg else {}
    params = {n.replace(".base_layer.", ".") for n, _ in sam.named_parameters()}

    def store(key: str, v: torch.Tensor) -> torch.Tensor:
        return (v.half() if half and v.is_floating_point() and (key in params or "lora_" in key) else v).contiguous()

    trained = {k: store(k, v) for k, v in _base_state(sam).items() if k.startswith(trained_modules)}
    payload = {
        "format": LORA_FORMAT,
        "base": base_backbone,
        "base_sha256": base_sha256,
        "base_weights": base_weights,
        "lora": dict(lora_cfg or {"rank": 0, "alpha": 1.0}),
        "lora_state_dict": {k: store(k, v) for k, v in lora_state.items()},
        "trained_state_dict": trained,
        "card": card or {},
    }
    return write_checkpoint(payload, path)


def _base_state(sam: Sam) -> dict[str, torch.Tensor]:
    """State dict with peft's ``base_layer.`` indirection removed and LoRA tensors dropped."""
    out = {}
    for key, value in sam.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def apply_lora_file(sam: Sam, path: str | Path, base_backbone: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load an adapter file onto ``sam`` (already holding its base weights) and merge it in.

    Returns the adapter's model card.
    """
    payload = read_checkpoint(path, allow_pickle=allow_pickle)
    if not isinstance(payload, dict) or payload.get("format") != LORA_FORMAT:
        raise CheckpointError(f"{path} is not a LoRA adapter file (expected format '{LORA_FORMAT}')")
    if payload.get("base") != base_backbone:
        raise CheckpointError(f"LoRA adapter {path} was trained on '{payload.get('base')}', not '{base_backbone}'")
    cfg = payload.get("lora") or {}
    if payload.get("lora_state_dict"):
        add_lora(sam, rank=int(cfg.get("rank", 1)), alpha=float(cfg.get("alpha", 1.0)))
        lora_state = {k: v.float() for k, v in payload["lora_state_dict"].items()}
        result = set_peft_model_state_dict(sam.image_encoder, lora_state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CheckpointError(f"LoRA adapter {path} does not fit this encoder ({len(unexpected)} unexpected tensors, e.g. {unexpected[0]})")
        merge_lora(sam)
    trained = payload.get("trained_state_dict") or {}
    own = sam.state_dict()
    bad = [k for k, v in trained.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"LoRA adapter {path}: {len(bad)} trained tensors do not fit the base model (e.g. {bad[0]})")
    sam.load_state_dict({k: v.to(own[k].dtype) for k, v in trained.items()}, strict=False)
    for param in sam.parameters():
        param.requires_grad = True
    return dict(payload.get("card") or {})


def merge_lora(sam: Sam) -> Sam:
    """Fold every LoRA layer into its base linear layer and put the plain layer back."""
    for name, module in list(sam.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent: nn.Module = sam.get_submodule(parent_name) if parent_name else sam
            setattr(parent, child, module.get_base_layer())
    if hasattr(sam, "_p2sam_lora"):
        del sam._p2sam_lora
    return sam
