"""One training step of the interactive protocol (ALGORITHM.md, paper appendix B).

Per batch: encode the images once; iteration 0 prompts each sample with nothing, one random
ground-truth point or a noisy ground-truth box; iterations 1..K-2 add 1..``max_new_points``
points drawn from the error region of the previous prediction (false negative -> positive,
false positive -> negative) and give the previous low-res logits as mask prompt; the last
iteration adds no points (mask prompt + the points so far). The decoder always returns SAM's
single-mask output. Points and the iteration-0 box accumulate across iterations.

As in the reference code, every iteration is its own optimisation step (loss, backward,
optimizer step), and only iteration 0 back-propagates into the image encoder: later iterations
decode the detached embedding. ``step_per_iteration=False`` sums the iterations' losses into one
step instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam

from ..decoder import decode
from .data import Batch
from .losses import dice_score, segmentation_loss, upsample_logits
from .prompts import add_points, encode_training_prompts, error_points, first_prompts


@dataclass(frozen=True)
class InteractiveConfig:
    iterations: int = 11  # decoder iterations per batch (1 = iteration 0 only)
    max_new_points: int = 9  # iterations 1..K-2 add 1..max_new_points error-region points
    first_kind_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # none / point / box
    stop_gradient: bool = True  # not-a-point / no-mask embeddings learn only from prompt-free samples
    step_per_iteration: bool = True  # reference: an optimizer step after each decoder iteration
    clip_grad: float = 0.0  # max gradient norm (0: no clipping)
    loss: str = "focal"  # "focal": Dice + 20 x focal + IoU MSE (reference); "bce": warm start from scratch


@dataclass
class StepStats:
    loss: list[float] = field(default_factory=list)  # per iteration
    dice: list[float] = field(default_factory=list)  # hard Dice of each iteration's prediction
    first_kinds: list[str] = field(default_factory=list)


def _apply(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def decode_batch(sam: Sam, embeddings: torch.Tensor, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-mask decoding of B prompt sets on B image embeddings (B x 256 x g x g), one call."""
    tokens = embeddings.shape[0] * embeddings.shape[-2] * embeddings.shape[-1]
    return decode(sam, embeddings, prompts, multimask=False, chunk_tokens=tokens)


def new_point_counts(batch: int, iteration: int, cfg: InteractiveConfig, gen: torch.Generator) -> list[int]:
    """How many error points each sample gets after ``iteration`` (0 before the last iteration)."""
    if iteration + 1 >= cfg.iterations - 1:
        return [0] * batch
    return torch.randint(1, cfg.max_new_points + 1, (batch,), generator=gen).tolist()


def train_step(
    sam: Sam,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    cfg: InteractiveConfig = InteractiveConfig(),
    features: torch.Tensor | None = None,
) -> StepStats:
    """Run the interactive iterations on one batch, updating ``sam`` through ``optimizer``.

    ``features``: the batch's image embeddings (B x 256 x g x g) when the encoder is frozen and
    they were computed beforehand (``trainer.EmbeddingCache``); ``batch.images`` is then unused.
    """
    size = sam.image_encoder.img_size
    params = [p for p in sam.parameters() if p.requires_grad]
    target = batch.masks.float()
    if features is None:
        encoder_trains = any(p.requires_grad for p in sam.image_encoder.parameters())
        with torch.set_grad_enabled(encoder_trains):
            features = sam.image_encoder(batch.images)
    features = features.float()
    state = first_prompts(batch.masks, batch.valid, gen, cfg.first_kind_probs)
    stats = StepStats(first_kinds=list(state.kinds))
    pending = []
    for it in range(cfg.iterations):
        embedding = features if it == 0 else features.detach()
        prompts = encode_training_prompts(sam, state, cfg.stop_gradient)
        low_res, iou = decode_batch(sam, embedding, prompts)
        logits = upsample_logits(low_res, size)
        terms = segmentation_loss(logits, iou, target, kind=cfg.loss)
        if cfg.step_per_iteration:
            _apply(terms.total, optimizer, params, cfg.clip_grad)
        else:
            pending.append(terms.total)
        pred = logits.detach() > 0
        stats.loss.append(float(terms.total.detach()))
        stats.dice.append(float(dice_score(pred & batch.valid, batch.masks).mean()))
        if it + 1 < cfg.iterations:
            counts = new_point_counts(len(batch), it, cfg, gen)
            pts, labs = error_points(pred, batch.masks, batch.valid, counts, gen)
            state = add_points(state, pts, labs, low_res.detach())
    if pending:
        _apply(torch.stack(pending).sum(), optimizer, params, cfg.clip_grad)
    return stats


@torch.no_grad()
def no_prompt_dice(sam: Sam, batch: Batch, features: torch.Tensor | None = None) -> torch.Tensor:
    """Dice of the prompt-free prediction (direct transfer) per sample, inside the valid area: B."""
    from .prompts import PromptState

    n = len(batch)
    state = PromptState(points=[torch.zeros(0, 2)] * n, labels=[torch.zeros(0, dtype=torch.long)] * n, boxes=[None] * n)
    features = sam.image_encoder(batch.images) if features is None else features.float()
    low_res, _ = decode_batch(sam, features, encode_training_prompts(sam, state, stop_gradient=False))
    pred = upsample_logits(low_res, sam.image_encoder.img_size) > 0
    return dice_score(pred & batch.valid, batch.masks)
