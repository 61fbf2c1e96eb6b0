"""Optimiser, learning-rate schedule and the resumable training state.

The schedule is linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio`` x lr
at ``total_steps`` (one step = one batch). The training state (``last.pt``) holds everything a
resumed run needs to continue as if never interrupted: model, optimiser and scheduler states, the
data generator's state, torch's global RNG state, the epoch reached, the best validation score
and the history.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import write_checkpoint


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices/kernels only (not on biases, norms or embeddings)."""
    decay = [p for p in params if p.ndim >= 2 and p.shape[0] > 1]
    other = [p for p in params if not (p.ndim >= 2 and p.shape[0] > 1)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def cosine_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01) -> float:
    """Multiplier of the base lr at ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_warmup(s, warmup_steps, total_steps, min_lr_ratio))


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {
        "data": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_state(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (a crash mid-write leaves the previous file intact)."""
    return write_checkpoint(payload, path)


def load_state(path: str | Path) -> dict[str, Any]:
    # The state holds numpy/python RNG tuples besides tensors: it is our own file, so a full
    # (pickle) load is acceptable here; never point --resume at a file you did not write.
    return torch.load(path, map_location="cpu", weights_only=False)
