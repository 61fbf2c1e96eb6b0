"""``p2sam train``: fine-tune a SAM backbone on a folder of images + masks or on CT slices.

    python -m p2sam.train --data ../shared/data/kvasir-seg --out runs/kvasir --epochs 60

    python -m p2sam.train --base lite_medsam --mode decoder --cache-views 3 --data ../shared/data/kvasir-seg --out runs/kvasir_lite

Writes ``OUT/last.pt`` (resumable with ``--resume``), ``OUT/best.pt`` (best validation
no-prompt Dice) and the final file: ``OUT/weights.pt`` (full mode, the project weights format
with float16 parameters and a model card) or ``OUT/adapter.pt`` (``lora`` and ``decoder`` modes:
an adapter file applied on top of ``--base``; float16; when the base is a bundled model such as
``lite_medsam`` the file names it, so ``load_model`` finds the base by itself). The CLI only
parses arguments; ``run_train`` does the work.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import LORA_FORMAT, WEIGHTS_FORMAT, CheckpointError, read_checkpoint
from models.finetune import AugmentConfig, InteractiveConfig, TrainConfig, fit, load_best, prepare_model
from models.finetune.data import NO_AUGMENT
from models.registry import BACKBONES, build_sam, bundled_models, load_model, resolve_weights, save_weights

from .datasets import CT_WINDOW, DatasetError, folder_dataset, phantom_slices, split_ids, volume_slices
from .modelpool import RECOMMENDED_ENGINE

AUGMENT_PRESETS = {
    "endoscopy": AugmentConfig(),
    "ct": AugmentConfig(rot90=False, crop_p=0.4, crop_min=0.6, shrink_p=0.2, jitter=0.1),
    "none": NO_AUGMENT,
}
DEFAULT_TERMS = ("Research and education use only; not a medical device: no clinical decision may rest on it alone. "
                 "The training data's own terms (the Data line) also apply.")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``p2sam train`` (shared by ``python -m p2sam.train``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", nargs="*", default=[], help="folder (images/ + masks/), or CT volumes: folders / IMAGE:MASK pairs")
    data.add_argument("--dataset", choices=["folder", "volumes", "phantom"], default="folder")
    data.add_argument("--val-data", nargs="*", default=None, help="volumes dataset: separate validation volumes (default: every 10th slice)")
    data.add_argument("--max-train", type=int, default=None, help="use at most this many training samples (quick runs)")
    data.add_argument("--max-val", type=int, default=None, help="use at most this many validation samples")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the folder train/val/test split (bench.internal uses 0)")
    data.add_argument("--window", type=float, nargs=2, default=list(CT_WINDOW), metavar=("LO", "HI"), help="CT window in HU")
    data.add_argument("--roi", default=None, help="volumes: ROI name/label in the mask files")
    data.add_argument("--phantom-train", type=int, default=1200, help="phantom dataset: training slices")
    data.add_argument("--phantom-val", type=int, default=150, help="phantom dataset: validation slices (another seed)")
    data.add_argument("--augment", choices=sorted(AUGMENT_PRESETS), default=None, help="default: endoscopy for folders, ct otherwise")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default=None, help="default: read from --checkpoint, else small")
    model.add_argument("--small-config", default=None, help='JSON config of the small backbone, e.g. \'{"decoder_mlp_dim": 1024}\'')
    model.add_argument("--checkpoint", "--base", dest="checkpoint", default=None,
                       help="base weights: a bundled model (e.g. lite_medsam, kvasir), a Meta / fine-tuned checkpoint or a project weights file")
    model.add_argument("--mode", choices=["full", "lora", "decoder"], default="full",
                       help="full: every weight; lora: LoRA on the encoder's attention + patch embedding, neck, prompt encoder, "
                            "mask decoder; decoder: prompt encoder + mask decoder only (encoder frozen)")
    model.add_argument("--lora-rank", type=int, default=1)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=40)
    opt.add_argument("--batch-size", type=int, default=8)
    opt.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW, cosine schedule)")
    opt.add_argument("--weight-decay", type=float, default=0.05)
    opt.add_argument("--warmup", type=float, default=1.0, help="warm-up length in epochs")
    opt.add_argument("--min-lr-ratio", type=float, default=0.01)
    opt.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off)")
    opt.add_argument("--iterations", type=int, default=11, help="decoder iterations per batch (interactive protocol)")
    opt.add_argument("--pretrain-epochs", type=int, default=0, help="first epochs with --pretrain-iterations only")
    opt.add_argument("--pretrain-iterations", type=int, default=3)
    opt.add_argument("--warm-loss-epochs", type=int, default=0, help="first epochs with Dice + BCE instead of Dice + 20 x focal (from scratch)")
    opt.add_argument("--max-new-points", type=int, default=9, help="error-region points added per iteration: 1..N")
    opt.add_argument("--first-prompts", default="1,1,1", help="relative odds of none,point,box at iteration 0")
    opt.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder (last.pt, best.pt, final weights)")
    run.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    run.add_argument("--val-every", type=int, default=1)
    run.add_argument("--cache-views", type=int, default=0,
                     help="frozen encoder (--mode decoder): encode this many augmented views of every training image once "
                          "and train on the cached embeddings (view = epoch mod N)")
    run.add_argument("--modality", default=None, help="what the model is for, for the model card (e.g. endoscopy, CT)")
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--name", default=None, help="model name in the card (default: the OUT folder name)")
    run.add_argument("--weights-out", default=None, help="final weights file (default OUT/weights.pt, or OUT/adapter.pt in lora/decoder mode)")
    run.add_argument("--data-description", default=None, help="what the data is, for the model card")
    run.add_argument("--terms", default=DEFAULT_TERMS, help="terms of use, for the model card")
    run.add_argument("--no-progress", action="store_true")
    return parser


def _first_probs(text: str) -> tuple[float, float, float]:
    odds = [float(x) for x in text.split(",")]
    if len(odds) != 3 or min(odds) < 0 or sum(odds) <= 0:
        raise ValueError("--first-prompts takes three non-negative odds: none,point,box")
    return tuple(o / sum(odds) for o in odds)  # type: ignore[return-value]


def _base_model(args) -> tuple[Any, str, dict[str, Any] | None, str, str | None]:
    """(sam, backbone, small-backbone config, base sha256, bundled base an adapter names).

    A bundled adapter as ``--base`` (e.g. ``kvasir_lite``) continues its training: the new
    adapter names the adapter's own base (``lite_medsam``), which is right only when the new run
    trains every module the old adapter held and the old one has no LoRA tensors."""
    if args.checkpoint:
        loaded = load_model(args.checkpoint, backbone=args.backbone)
        raw = read_checkpoint(resolve_weights(args.checkpoint))
        is_dict = isinstance(raw, dict)
        config = dict(raw.get("config") or {}) if is_dict and raw.get("format") == WEIGHTS_FORMAT else None
        bundled = args.checkpoint if args.checkpoint in bundled_models() else None
        if is_dict and raw.get("format") == LORA_FORMAT and raw.get("base_weights") and args.mode != "full":
            return loaded.sam, loaded.backbone, config, str(raw.get("base_sha256") or ""), _continued_base(args, raw)
        return loaded.sam, loaded.backbone, config, loaded.sha256, bundled
    backbone = args.backbone or "small"
    config = json.loads(args.small_config) if args.small_config else None
    if backbone != "small" and config:
        raise ValueError("--small-config applies to the small backbone only")
    return build_sam(backbone, config), backbone, (config or {}) if backbone == "small" else None, "", None


def _continued_base(args, raw: dict[str, Any]) -> str:
    """The base an adapter trained further on ``raw`` (an adapter file) names: raw's own base."""
    from models.finetune.modes import DECODER_MODULES
    from models.lora import TRAINED_MODULES

    modules = {"decoder": DECODER_MODULES, "lora": TRAINED_MODULES}.get(args.mode)
    held = list(raw.get("trained_state_dict") or {})
    if modules is None or raw.get("lora_state_dict") or not all(k.startswith(modules) for k in held):
        raise ValueError(f"--base {args.checkpoint} is an adapter: it can be trained further with --mode decoder "
                         "(an adapter without LoRA tensors), so that the new adapter replaces every module it held")
    return str(raw["base_weights"])


def _datasets(args, size: int):
    """(train, val, description) cached samples for the chosen dataset."""
    window = tuple(args.window)
    if args.dataset == "folder":
        if len(args.data) != 1:
            raise DatasetError("--dataset folder takes one --data folder (images/ + masks/)")
        train = folder_dataset(args.data[0], size, "train", args.max_train, args.split_seed)
        val = folder_dataset(args.data[0], size, "val", args.max_val, args.split_seed)
        desc = f"{Path(args.data[0]).name}: train split ({len(train)} images), val split ({len(val)}), split seed {args.split_seed}"
        return train, val, desc
    if args.dataset == "phantom":
        train = phantom_slices(size, args.max_train or args.phantom_train, seed=args.seed, window=window)
        val = phantom_slices(size, args.max_val or args.phantom_val, seed=args.seed + 10_000, window=window)
        return train, val, f"synthetic CT phantom slices from imaging.phantom ({len(train)} train, {len(val)} val, window {list(window)} HU)"
    if not args.data:
        raise DatasetError("--dataset volumes needs --data")
    slices = volume_slices(args.data, size, window, args.roi, seed=args.seed)
    if args.val_data:
        train, val = slices, volume_slices(args.val_data, size, window, args.roi, seed=args.seed)
    else:  # hold out every 10th slice
        keep = [i for i in range(len(slices)) if i % 10]
        held = [i for i in range(len(slices)) if not i % 10]
        from .datasets import CachedSamples

        train = CachedSamples([slices[i] for i in keep], [slices.ids[i] for i in keep])
        val = CachedSamples([slices[i] for i in held], [slices.ids[i] for i in held])
    if args.max_train:
        train = type(train)(train.samples[: args.max_train], train.ids[: args.max_train])
    if args.max_val:
        val = type(val)(val.samples[: args.max_val], val.ids[: args.max_val])
    return train, val, f"CT volumes {[str(d) for d in args.data]} ({len(train)} train slices, {len(val)} val, window {list(window)} HU)"


def train_config(args) -> TrainConfig:
    augment = AUGMENT_PRESETS[args.augment or ("endoscopy" if args.dataset == "folder" else "ct")]
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
        seed=args.seed,
        val_every=args.val_every,
        cache_views=args.cache_views,
        pretrain_epochs=args.pretrain_epochs,
        pretrain_iterations=args.pretrain_iterations,
        warm_loss_epochs=args.warm_loss_epochs,
        interactive=InteractiveConfig(
            iterations=args.iterations,
            max_new_points=args.max_new_points,
            first_kind_probs=_first_probs(args.first_prompts),
            clip_grad=args.clip_grad,
        ),
        augment=augment,
        progress=not args.no_progress,
    )


def _command(args) -> str:
    if getattr(args, "command_line", None):
        return args.command_line
    prog = "python -m p2sam.train" if Path(sys.argv[0]).name in ("train.py", "__main__.py") else Path(sys.argv[0]).name
    return " ".join([prog, shlex.join(sys.argv[1:])])


def run_train(args: argparse.Namespace) -> int:
    """Train and write the run folder and the final weights; 0 on success, 2 on bad input."""
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        cfg = train_config(args)
        sam, backbone, config, base_sha, base_name = _base_model(args)
        prepare_model(sam, args.mode, args.lora_rank)
        size = sam.image_encoder.img_size
        t0 = time.perf_counter()
        train, val, desc = _datasets(args, size)
    except (DatasetError, CheckpointError, ValueError) as exc:
        log(f"error: {exc}")
        return 2
    log(f"data: {desc} (cached in {time.perf_counter() - t0:.0f}s)")
    out = Path(args.out)
    name = args.name or out.name
    meta = {"command": _command(args), "backbone": backbone, "mode": args.mode}
    result = fit(sam, train, val, cfg, out, resume=args.resume, meta=meta, log=log)
    best = load_best(sam, out)
    card = {
        "name": name,
        "summary": f"{args.data_description or desc}; val no-prompt Dice {float(best['val_dice']):.3f}",
        "backbone": backbone,
        "config": config,
        "mode": args.mode,
        "data": args.data_description or desc,
        "modality": args.modality or ("endoscopy" if args.dataset == "folder" else "CT"),
        "command": meta["command"],
        "seed": args.seed,
        "epochs": args.epochs,
        "recipe": cfg.to_dict(),
        "engine": {k: list(v) for k, v in RECOMMENDED_ENGINE.items()},  # what jobs run with this model
        "metrics": {"val_no_prompt_dice": round(float(best["val_dice"]), 4), "best_epoch": best["epoch"]},
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()} for h in result.history],
        "terms": args.terms,
        "parameters": sum(p.numel() for p in sam.parameters()),
        "software": {"torch": str(torch.__version__), "python": platform.python_version()},
    }
    if args.mode in ("lora", "decoder"):
        from models.finetune.modes import DECODER_MODULES
        from models.lora import TRAINED_MODULES, save_lora_file

        modules = TRAINED_MODULES if args.mode == "lora" else DECODER_MODULES
        path = save_lora_file(sam, args.weights_out or out / "adapter.pt", backbone, base_sha, card,
                              base_weights=base_name, trained_modules=modules, half=True)
    else:
        path = save_weights(sam, args.weights_out or out / "weights.pt", backbone, config, card)
    (out / "card.json").write_text(json.dumps(card, indent=1))
    Path(path).with_suffix(".md").write_text(card_markdown(card))  # the model card beside the weights
    log(f"best val no-prompt Dice {best['val_dice']:.4f} (epoch {best['epoch']}); wrote {path}")
    return 0


def card_markdown(card: dict[str, Any], extra: str = "") -> str:
    """The model card of a weights file as Markdown (``models/weights/<name>.md``)."""
    hist = card.get("history") or []
    rows = "\n".join(
        f"| {h['epoch']} | {h.get('iterations', '')} | {h.get('loss_kind', '')} | {h['loss']:.3f} | {h.get('val_dice', float('nan')):.3f} | {h.get('seconds', 0):.0f} |"
        for h in hist
    )
    metrics = "\n".join(f"- {k}: {v}" for k, v in (card.get("metrics") or {}).items())
    if card.get("engine"):
        metrics += f"\n\nEngine settings jobs use with this model: `{json.dumps(card['engine'])}`"
    if card.get("qc"):
        metrics += f"\n\nUncertainty sampler and QC thresholds (calibrated): `{json.dumps(card['qc'])}`"
    return f"""# Model card: {card.get('name')}

- Backbone: `{card.get('backbone')}` ({card.get('parameters', 0) / 1e6:.2f} M parameters, stored as float16), config `{json.dumps(card.get('config'))}`
- Training mode: {card.get('mode')}
- Data: {card.get('data')}
- Seed: {card.get('seed')}; epochs: {card.get('epochs')}

## Command

```
{card.get('command')}
```

## Metrics

{metrics}
{extra}
## Terms of use

{card.get('terms')}

## Training history

| epoch | decoder iterations | loss | train loss | val no-prompt Dice | seconds |
|---|---|---|---|---|---|
{rows}

Recipe (the exact settings, from the weights file's card): `{json.dumps(card.get('recipe'))}`
"""


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="p2sam train", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    if argv is not None:  # called from Python: record the equivalent command, not the caller's argv
        args.command_line = "p2sam train " + shlex.join(argv)
    return run_train(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_train_arguments", "run_train", "split_ids"]
