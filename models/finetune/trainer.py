"""The fine-tuning loop: epochs of interactive steps, validation, checkpoint selection, resume.

``fit`` trains a SAM (full or LoRA, whatever parameters have ``requires_grad``) on in-memory
samples (``H x W x 3`` uint8, ``H x W`` bool, longest side = the model's ``img_size``) and writes
to ``out_dir``:

- ``last.pt``: the full training state after every epoch (``--resume`` continues from it with
  the same model, optimiser, schedule and random streams, as if never interrupted);
- ``best.pt``: the model with the best validation no-prompt Dice so far.

An optional pretraining phase runs the first ``pretrain_epochs`` with fewer decoder iterations
(``pretrain_iterations``), then the full interactive protocol; the first ``warm_loss_epochs``
may use the BCE warm-start loss (``losses.segmentation_loss(kind="bce")``).

With a frozen image encoder (``modes.prepare_model(mode="decoder")``) and ``cache_views`` > 0,
the encoder runs once per training image and view: ``cache_views`` augmented views of every
training sample (and the un-augmented validation samples) are encoded before the first epoch and
kept in ``cache-*.pt`` files of ``out_dir`` (reused on resume); epoch e trains on view
e mod ``cache_views``. This is what makes decoder adaptation of an expensive encoder (LiteMedSAM's
TinyViT: about 1.3 s per image on 2 CPU cores) affordable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from .data import NO_AUGMENT, AugmentConfig, Batch, Sample, augment, batches, collate, steps_per_epoch
from .interactive import InteractiveConfig, no_prompt_dice, train_step
from .modes import encoder_frozen, freeze_frozen_norms
from .state import load_state, make_optimizer, make_scheduler, rng_state, save_state, set_rng_state


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    seed: int = 0
    val_every: int = 1
    cache_views: int = 0  # frozen encoder: encode this many augmented views per training image once
    pretrain_epochs: int = 0  # first epochs with fewer decoder iterations
    pretrain_iterations: int = 2
    warm_loss_epochs: int = 0  # first epochs with the "bce" warm-start loss (from-scratch training)
    interactive: InteractiveConfig = InteractiveConfig()
    augment: AugmentConfig = AugmentConfig()
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    best_dice: float
    best_epoch: int
    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _model_state(sam: Sam) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sam.state_dict().items()}


def _val_batches(samples: Sequence[Sample], sam: Sam, batch_size: int) -> list[Batch]:
    size = sam.image_encoder.img_size
    out = []
    for idx in batches(len(samples), batch_size, None):
        items = [augment(*samples[i], size, torch.Generator(), NO_AUGMENT) for i in idx]
        out.append(collate(items, sam))
    return out


def validate(sam: Sam, val: list[Batch], features: list[torch.Tensor] | None = None) -> float:
    """Mean no-prompt Dice over the validation samples (model left in eval mode)."""
    sam.eval()
    scores = [no_prompt_dice(sam, b, None if features is None else features[i]) for i, b in enumerate(val)]
    return float(torch.cat(scores).mean()) if scores else float("nan")


@dataclass
class EmbeddingCache:
    """Frozen-encoder embeddings of ``views`` augmented copies of every sample (float16)."""

    features: list[torch.Tensor]  # per view: N x 256 x g x g
    masks: list[torch.Tensor]  # per view: N x S x S bool
    valid: list[torch.Tensor]  # per view: N x S x S bool

    def batch(self, view: int, idx: list[int]) -> tuple[Batch, torch.Tensor]:
        v = view % len(self.features)
        masks, valid = self.masks[v][idx], self.valid[v][idx]
        return Batch(images=torch.zeros(len(idx), 0), masks=masks, valid=valid), self.features[v][idx]


@torch.no_grad()
def build_cache(sam: Sam, samples: Sequence[Sample], views: int, seed: int, aug: AugmentConfig, path: Path,
                log: Callable[[str], None]) -> EmbeddingCache:
    """Encode ``views`` seeded augmentations of every sample once (or load them from ``path``)."""
    key = {"n": len(samples), "views": views, "seed": seed, "augment": asdict(aug), "img_size": sam.image_encoder.img_size}
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # pages read on demand
        if payload.get("key") == key:
            log(f"embedding cache: loaded {path.name} ({len(samples)} samples x {views} views)")
            return EmbeddingCache(payload["features"], payload["masks"], payload["valid"])
        log(f"embedding cache {path.name} was made for other data or settings: recomputing it")
    sam.eval()
    size = sam.image_encoder.img_size
    gen = torch.Generator().manual_seed(seed + 7919)  # its own stream: caching leaves training's untouched
    feats, masks, valid = [], [], []
    t0 = time.perf_counter()
    for v in range(views):
        f_v, m_v, ok_v = [], [], []
        for i, sample in enumerate(samples):
            batch = collate([augment(*sample, size, gen, aug)], sam)
            f_v.append(sam.image_encoder(batch.images.to(sam.pixel_mean.device)).half().cpu())
            m_v.append(batch.masks)
            ok_v.append(batch.valid)
            done = v * len(samples) + i + 1
            if done % 50 == 0 or done == views * len(samples):
                rate = (time.perf_counter() - t0) / done
                log(f"embedding cache: {done}/{views * len(samples)} images encoded ({rate:.2f} s each, "
                    f"{rate * (views * len(samples) - done) / 60:.0f} min left)")
        feats.append(torch.cat(f_v))
        masks.append(torch.cat(m_v))
        valid.append(torch.cat(ok_v))
    save_state(path, {"key": key, "features": feats, "masks": masks, "valid": valid})
    return EmbeddingCache(feats, masks, valid)


def fit(
    sam: Sam,
    train: Sequence[Sample],
    val: Sequence[Sample],
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> FitResult:
    """Train ``sam`` in place; returns the best validation Dice and the history."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    params = [p for p in sam.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    per_epoch = steps_per_epoch(len(train), cfg.batch_size, drop_last=True)
    total = per_epoch * cfg.epochs
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, int(round(cfg.warmup_epochs * per_epoch)), total, cfg.min_lr_ratio)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, best, best_epoch, history = 0, -1.0, -1, []
    last_path = out / "last.pt"
    if resume and last_path.is_file():
        state = load_state(last_path)
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(gen, state["rng"])
        start, best, best_epoch, history = state["epoch"] + 1, state["best_dice"], state["best_epoch"], state["history"]
        if state.get("config") != cfg.to_dict():
            log("warning: resuming with a different training configuration than the saved state")
        log(f"resumed from {last_path} after epoch {start} (best val Dice {best:.4f} at epoch {best_epoch + 1})")
    elif resume:
        log(f"no training state at {last_path}: starting from scratch")
    val_batches = _val_batches(val, sam, cfg.batch_size)
    cache, val_features = None, None
    if cfg.cache_views > 0 and encoder_frozen(sam):
        cache = build_cache(sam, train, cfg.cache_views, cfg.seed, cfg.augment, out / "cache-train.pt", log)
        if val:
            val_cache = build_cache(sam, val, 1, cfg.seed, NO_AUGMENT, out / "cache-val.pt", log)
            val_features = [val_cache.batch(0, list(range(i, i + len(b))))[1]
                            for i, b in zip(range(0, len(val), cfg.batch_size), val_batches)]
    elif cfg.cache_views > 0:
        log("cache_views ignored: the image encoder trains (embeddings change every step)")

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        icfg = cfg.interactive
        if epoch < cfg.pretrain_epochs:
            icfg = replace(icfg, iterations=min(icfg.iterations, cfg.pretrain_iterations))
        if epoch < cfg.warm_loss_epochs:
            icfg = replace(icfg, loss="bce")
        sam.train()
        freeze_frozen_norms(sam)
        order = batches(len(train), cfg.batch_size, gen, drop_last=True)
        losses, first_dice, last_dice = [], [], []
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, file=sys.stderr, mininterval=5, leave=False)
        for idx in bar:
            if cache is not None:
                batch, features = cache.batch(epoch, idx)
                stats = train_step(sam, batch, optimizer, gen, icfg, features=features)
            else:
                items = [augment(*train[i], size, gen, cfg.augment) for i in idx]
                stats = train_step(sam, collate(items, sam), optimizer, gen, icfg)
            scheduler.step()
            losses.append(sum(stats.loss) / len(stats.loss))
            first_dice.append(stats.dice[0])
            last_dice.append(stats.dice[-1])
            bar.set_postfix(loss=f"{losses[-1]:.3f}", dice0=f"{stats.dice[0]:.3f}", dice_last=f"{stats.dice[-1]:.3f}")
        bar.close()
        record = {
            "epoch": epoch + 1,
            "iterations": icfg.iterations,
            "loss_kind": icfg.loss,
            "loss": sum(losses) / max(1, len(losses)),
            "train_dice_first": sum(first_dice) / max(1, len(first_dice)),
            "train_dice_last": sum(last_dice) / max(1, len(last_dice)),
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": time.perf_counter() - t0,
        }
        if val_batches and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            record["val_dice"] = validate(sam, val_batches, val_features)
            if record["val_dice"] > best:
                best, best_epoch = record["val_dice"], epoch
                save_state(out / "best.pt", {"model": _model_state(sam), "epoch": epoch + 1, "val_dice": best, "meta": meta or {}})
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        save_state(
            last_path,
            {
                "model": _model_state(sam),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(gen),
                "epoch": epoch,
                "best_dice": best,
                "best_epoch": best_epoch,
                "history": history,
                "config": cfg.to_dict(),
                "meta": meta or {},
            },
        )
        val_text = f" val_dice {record['val_dice']:.4f}" if "val_dice" in record else ""
        log(
            f"epoch {epoch + 1}/{cfg.epochs} it={icfg.iterations} {icfg.loss} loss {record['loss']:.4f} "
            f"dice(it0) {record['train_dice_first']:.3f} dice(last) {record['train_dice_last']:.3f}"
            f"{val_text} lr {record['lr']:.2e} {record['seconds']:.0f}s"
        )
    if not val_batches and cfg.epochs > 0 and best_epoch < 0:
        save_state(out / "best.pt", {"model": _model_state(sam), "epoch": cfg.epochs, "val_dice": float("nan"), "meta": meta or {}})
        best_epoch = cfg.epochs - 1
    return FitResult(best_dice=best, best_epoch=best_epoch, last_epoch=len(history), history=history)


def load_best(sam: Sam, out_dir: str | Path) -> dict[str, Any]:
    """Load ``best.pt`` into ``sam``; returns its epoch and validation Dice."""
    state = load_state(Path(out_dir) / "best.pt")
    sam.load_state_dict(state["model"])
    return {"epoch": state["epoch"], "val_dice": state["val_dice"]}
