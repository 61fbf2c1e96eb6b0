"""A Probabilistic-SAM-style latent head: learned uncertainty on top of a frozen SAM.

A latent z (dim 6) comes from a prior net on the image embedding, or — in training — from a
posterior net on the image embedding and a mask; an MLP maps z to a 256-d offset added to every
sparse prompt token. Trained with BCE + Dice + beta * KL(posterior || prior) (beta = 10). At
inference K prior draws give K masks in one batched decoder call.

Shapes: image embedding 1 x 256 x g x g; masks on the grid B x 1 x g x g; z B x latent_dim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Independent, Normal

LATENT_FORMAT = "p2sam-latent/1"


def _net(in_ch: int, hidden: int, latent_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(hidden, 2 * latent_dim),
    )


class LatentHead(nn.Module):
    def __init__(self, latent_dim: int = 6, embed_dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.config = {"latent_dim": latent_dim, "embed_dim": embed_dim, "hidden": hidden}
        self.prior_net = _net(embed_dim, hidden, latent_dim)
        self.posterior_net = _net(embed_dim + 1, hidden, latent_dim)
        self.to_token = nn.Sequential(nn.Linear(latent_dim, embed_dim), nn.ReLU(inplace=True), nn.Linear(embed_dim, embed_dim))
        nn.init.zeros_(self.to_token[-1].weight)  # start as "no offset": SAM's behaviour
        nn.init.zeros_(self.to_token[-1].bias)

    @staticmethod
    def _dist(params: torch.Tensor) -> Independent:
        mu, log_sigma = params.chunk(2, dim=-1)
        return Independent(Normal(mu, torch.exp(log_sigma.clamp(-6, 3))), 1)

    def prior(self, embedding: torch.Tensor) -> Independent:
        return self._dist(self.prior_net(embedding))

    def posterior(self, embedding: torch.Tensor, mask_grid: torch.Tensor) -> Independent:
        return self._dist(self.posterior_net(torch.cat([embedding, mask_grid.float() * 2 - 1], dim=1)))

    def offset(self, z: torch.Tensor) -> torch.Tensor:
        """B x latent_dim -> B x 1 x 256, added to every sparse token."""
        return self.to_token(z)[:, None, :]


def save_latent(head: LatentHead, path: str | Path, base_sha256: str, card: dict[str, Any]) -> Path:
    payload = {"format": LATENT_FORMAT, "config": head.config, "base_sha256": base_sha256, "card": card,
               "state_dict": {k: v.contiguous() for k, v in head.state_dict().items()}}
    from .checkpoints import write_checkpoint

    return write_checkpoint(payload, path)


def load_latent(path: str | Path, base_sha256: str | None = None) -> LatentHead:
    from .checkpoints import CheckpointError, read_checkpoint

    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != LATENT_FORMAT:
        raise CheckpointError(f"{path} is not a latent-head file (expected format '{LATENT_FORMAT}')")
    if base_sha256 and payload.get("base_sha256") and payload["base_sha256"] != base_sha256:
        raise CheckpointError(f"latent head {path} was trained for another backbone file (sha256 {payload['base_sha256'][:12]})")
    head = LatentHead(**payload["config"])
    head.load_state_dict(payload["state_dict"])
    return head.eval()
