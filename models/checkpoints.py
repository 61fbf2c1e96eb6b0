"""Reading SAM checkpoints with errors a person can act on.

Handles Meta's released checkpoints (a flat state dict), fully fine-tuned checkpoints (nested
under ``"model"`` or ``"state_dict"``, optionally with a ``module.`` prefix from DataParallel),
the timm naming of the reference fine-tuned encoders (``mlp.fc1/fc2`` for Meta's
``mlp.lin1/lin2``), LoRA weights in the reference's loralib layout (merged into the base weights
on load) and this project's own weights files (``format: p2sam-weights/1``).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

WEIGHTS_FORMAT = "p2sam-weights/1"
LORA_FORMAT = "p2sam-lora/1"

# patch-embedding width -> Meta backbone name, used to tell users what they actually passed.
_VIT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(payload: Any, path: str | Path) -> Path:
    """``torch.save`` atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Any:
    """Load a checkpoint file onto the CPU.

    ``weights_only`` loading is used unless ``allow_pickle`` is set: a pickled checkpoint can run
    arbitrary code, so it must be opted into (``P2SAM_ALLOW_PICKLED_CHECKPOINTS=1``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); expected a PyTorch file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if not allow_pickle and "weights_only" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects besides tensors; "
                "load it only if you trust its origin, with P2SAM_ALLOW_PICKLED_CHECKPOINTS=1"
            ) from None
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch file: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} could not be read (truncated or corrupt? {path.stat().st_size} bytes): "
            f"{_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def extract_state_dict(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """Find the tensor dictionary in a loaded checkpoint object."""
    if isinstance(obj, Mapping):
        if obj.get("format") == WEIGHTS_FORMAT:
            obj = obj["state_dict"]
        else:
            for key in ("model", "state_dict"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (expected a dict of tensors, "
            "optionally under 'model' or 'state_dict')"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map timm-style encoder names onto segment-anything's (``mlp.fc1`` -> ``mlp.lin1``)."""
    out = {}
    for key, value in state.items():
        key = key.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2.")
        out[key] = value
    return merge_loralib(out)


def merge_loralib(state: dict[str, torch.Tensor], lora_alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """Merge loralib-style ``lora_A``/``lora_B`` pairs into their base weights.

    The reference code wraps ``attn.qkv`` in ``loralib.MergedLinear`` (q, k and v enabled) and
    ``attn.proj`` in ``loralib.Linear``, with ``lora_alpha = 1`` so the scale is ``1 / r``. The
    merged weight is ``W + scale * B @ A``; for the merged qkv layer the product is taken per
    group (q, k, v), as ``MergedLinear`` does with a grouped 1-D convolution.
    """
    prefixes = sorted({k[: -len(".lora_A")] for k in state if k.endswith(".lora_A")})
    if not prefixes:
        return state
    state = dict(state)
    for prefix in prefixes:
        a = state.pop(f"{prefix}.lora_A").float()
        b = state.pop(f"{prefix}.lora_B").float()
        weight_key = f"{prefix}.weight"
        if weight_key not in state:
            raise CheckpointError(f"LoRA weights for {prefix} have no base weight {weight_key}")
        weight = state[weight_key]
        out_features, in_features = weight.shape
        if a.shape[1] != in_features:
            raise CheckpointError(f"LoRA A of {prefix} has shape {tuple(a.shape)}, base weight {tuple(weight.shape)}")
        groups = a.shape[0] // b.shape[1] if b.shape[1] else 1
        r = a.shape[0] // groups
        if groups == 1:
            delta = b @ a
        else:  # MergedLinear: B (out, r) applied per group to A (groups*r, in)
            delta = torch.nn.functional.conv1d(a.unsqueeze(0), b.unsqueeze(-1), groups=groups).squeeze(0)
        if delta.shape != weight.shape:
            raise CheckpointError(f"LoRA update of {prefix} has shape {tuple(delta.shape)}, base {tuple(weight.shape)}")
        state[weight_key] = (weight.float() + delta * (lora_alpha / r)).to(weight.dtype)
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, expected: str) -> None:
    """Load ``state`` into ``model`` or raise one CheckpointError that says what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} tensors with other shapes (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        hint = ""
        width = state.get("image_encoder.patch_embed.proj.weight")
        if width is not None and width.ndim == 4:
            guess = _VIT_BY_WIDTH.get(int(width.shape[0]))
            if guess and guess != expected:
                hint = f"; this looks like a {guess} checkpoint"
        raise CheckpointError(f"checkpoint {path} does not fit backbone '{expected}': {'; '.join(parts)}{hint}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def is_lite_medsam_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A state dict with TinyViT's encoder keys (LiteMedSAM or a fine-tuned copy of it)."""
    return "image_encoder.patch_embed.seq.0.c.weight" in state and "image_encoder.layers.0.blocks.0.conv1.c.weight" in state


def guess_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """Meta backbone name from the patch-embedding width, or None."""
    width = state.get("image_encoder.patch_embed.proj.weight")
    if width is None or width.ndim != 4:
        return None
    return _VIT_BY_WIDTH.get(int(width.shape[0]))
