"""Shared pieces of the benchmarks: loading weights, reading frames, Dice, printing tables.

Benchmarks print numbers; they are not tests. Each one skips cleanly, with a message, when its
data is absent (a fresh clone has no ../shared/data).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from models import P2SAMEngine

DEFAULT_WEIGHTS = "kvasir"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2TP / (2TP + FP + FN) of two H x W bool masks; 1.0 when both are empty (0 when only one is)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def read_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """Binary mask image -> H x W bool (grey level > 127)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def make_engine(weights: str, threads: int = 2, **config) -> tuple[P2SAMEngine, str]:
    """The engine a job on ``weights`` (a bundled model name or a weights file) runs with, built by the
    product's :class:`p2sam.modelpool.ModelPool` (the model card's part ranges, the P2SAM_* engine
    settings), with ``config`` (P2SAMConfig fields) changed on top; returns (engine, model name)."""
    from p2sam.modelpool import ModelPool
    from p2sam.settings import get_settings

    torch.set_num_threads(max(1, threads))
    loaded, engine = ModelPool(get_settings().model_copy(update={"threads": max(1, threads)})).get(weights)
    return (engine.with_config(**config) if config else engine), loaded.name


def parse_overrides(items: Sequence[str]) -> dict:
    """``key=value`` engine settings (P2SAMConfig fields): ints, floats, bools, (a,b) ranges, text."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        if not _:
            raise ValueError(f"expected key=value, got '{item}'")
        out[key.strip()] = _value(value.strip())
    return out


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"\(?\s*-?\d+\s*,\s*-?\d+\s*\)?", text):
        return tuple(int(x) for x in text.strip("()").split(","))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def table(header: Sequence[str], rows: Sequence[Sequence], first_width: int = 10) -> str:
    """A plain Markdown-style table; floats printed with 3 decimals."""
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = [max(len(str(h)), first_width if i == 0 else 7) for i, h in enumerate(header)]
    for r in rows:
        widths = [max(w, len(cell(v))) for w, v in zip(widths, r)]
    line = lambda vals: "| " + " | ".join(cell(v).rjust(w) if i else cell(v).ljust(w) for i, (v, w) in enumerate(zip(vals, widths))) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
