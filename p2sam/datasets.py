"""Training data from files: samples ``(image, mask)`` = (``H x W x 3`` uint8 RGB, ``H x W`` bool).

Three sources, all pre-resized once (longest side = the model's input size, the engine's own
``ResizeLongestSide``) and cached in memory, so epochs never re-decode files:

- ``folder``: a Kvasir-SEG-like folder, ``images/<id>.<ext>`` + ``masks/<id>.<ext>`` (mask > 127
  = foreground), split into train/val/test by ``split_ids`` (fixed seed; ``bench.internal``
  uses the same function, so its test ids are exactly the ones never trained on);
- ``volumes``: CT volumes (DICOM series folders or NIfTI files) with a mask per volume, sliced
  along z and windowed (default [-910, 590] HU) through the project's ``imaging`` package;
- ``phantom``: synthetic CT slices + lesion masks from ``imaging.phantom`` (no external data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from models.finetune.data import Sample, resize_sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CT_WINDOW = (-910.0, 590.0)
SPLIT_SEED = 0
SPLIT_SIZES = (800, 100, 100)


class DatasetError(ValueError):
    """The data given cannot be used for training (missing files, empty folder, bad layout)."""


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test: list[str]


def split_ids(ids: Iterable[str], seed: int = SPLIT_SEED, sizes: tuple[int, int, int] = SPLIT_SIZES) -> Split:
    """Fixed, seeded train/val/test split of sample ids (sorted first, so file order never matters).

    With exactly ``sum(sizes)`` ids (Kvasir-SEG: 1000) the split is 800/100/100; otherwise the
    same proportions (val and test at least 1 each when there are 3 or more ids).
    """
    ordered = sorted(set(ids))
    n = len(ordered)
    if n == sum(sizes):
        n_val, n_test = sizes[1], sizes[2]
    else:
        n_val = n_test = max(1 if n >= 3 else 0, round(n * sizes[1] / sum(sizes)))
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    test = sorted(shuffled[:n_test])
    val = sorted(shuffled[n_test : n_test + n_val])
    train = sorted(shuffled[n_test + n_val :])
    return Split(train=train, val=val, test=test)


def read_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_binary_mask(path: str | Path) -> np.ndarray:
    """A mask image -> H x W bool (any channel > 127)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"))
    return arr > 127


def folder_pairs(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """id -> (image path, mask path) for a folder with ``images/`` and ``masks/``."""
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DatasetError(f"{root} must contain images/ and masks/ (the Kvasir-SEG layout)")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = {p.stem: (p, masks[p.stem]) for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks}
    if not pairs:
        raise DatasetError(f"no image/mask pairs with matching names in {img_dir} and {mask_dir}")
    return pairs


def load_pair(image_path: Path, mask_path: Path) -> Sample:
    image, mask = read_rgb(image_path), read_binary_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DatasetError(f"{mask_path} is {mask.shape}, its image {image_path} is {image.shape[:2]}")
    return image, mask


class CachedSamples(Sequence[Sample]):
    """Samples decoded and resized once (longest side = ``size``), kept in memory."""

    def __init__(self, samples: list[Sample], ids: list[str]) -> None:
        self.samples, self.ids = samples, ids

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.samples[i]


def folder_dataset(root: str | Path, size: int, subset: str = "train", limit: int | None = None, seed: int = SPLIT_SEED) -> CachedSamples:
    """The ``subset`` ("train", "val", "test" or "all") of a Kvasir-SEG-like folder, cached."""
    pairs = folder_pairs(root)
    split = split_ids(pairs, seed)
    ids = sorted(pairs) if subset == "all" else getattr(split, subset)
    ids = ids[:limit] if limit else ids
    samples = [resize_sample(*load_pair(*pairs[i]), size) for i in ids]
    return CachedSamples(samples, ids)


# --- CT: volumes and the synthetic phantom (through the project's imaging package) ----------


def window_slice(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """HU (y x x) -> H x W x 3 uint8 with the window [lo, hi] mapped linearly to 0..255."""
    from imaging import window as apply_window

    grey = apply_window(np.asarray(hu), tuple(window))
    return np.repeat(grey[..., None], 3, axis=2)


def volume_pairs(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from ``--data`` entries. Each entry is ``IMAGE:MASK`` (a DICOM series
    folder / NIfTI file and an RTSTRUCT / SEG / NIfTI mask), a folder with ``images/<id>`` and
    ``masks/<id>`` (matched by name without extension), or a folder with exactly one ``image*``
    and one ``mask*`` entry."""
    out: list[tuple[Path, Path]] = []
    for spec in paths:
        text = str(spec)
        if ":" in text and not Path(text).exists():
            a, b = text.split(":", 1)
            out.append((Path(a), Path(b)))
            continue
        root = Path(text)
        if (root / "images").is_dir() and (root / "masks").is_dir():
            masks = {_stem(p): p for p in (root / "masks").iterdir()}
            out += [(p, masks[_stem(p)]) for p in sorted((root / "images").iterdir()) if _stem(p) in masks]
            continue
        imgs = sorted(p for p in root.iterdir() if p.name.lower().startswith("image")) if root.is_dir() else []
        msks = sorted(p for p in root.iterdir() if p.name.lower().startswith("mask")) if root.is_dir() else []
        if len(imgs) == 1 and len(msks) == 1:
            out.append((imgs[0], msks[0]))
        else:
            raise DatasetError(f"{root}: expected images/ + masks/, one image* and one mask*, or IMAGE:MASK")
    if not out:
        raise DatasetError("no volume/mask pairs found")
    return out


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def volume_slices(paths: Sequence[str | Path], size: int, window: tuple[float, float] = CT_WINDOW, roi: str | None = None, with_empty: float = 0.1, seed: int = SPLIT_SEED) -> CachedSamples:
    """Axial slices (z) of CT volumes with their mask, windowed to uint8 and cached.

    Read through ``imaging.read_image`` / ``imaging.read_mask`` (mask on the image's grid,
    (z, y, x)) and ``imaging.to_model_input`` (window, grey -> 3 channels). Every slice where the
    mask is non-empty is kept, plus a ``with_empty`` fraction of the empty ones (seeded), so the
    model also learns to say "nothing here".
    """
    try:
        from imaging import ImagingError, read_image, read_mask, to_model_input
    except ImportError as exc:  # pragma: no cover - the imaging layer ships with the project
        raise DatasetError(f"the imaging package is not available ({exc})") from None
    rng = np.random.default_rng(seed)
    samples, ids = [], []
    for image_path, mask_path in volume_pairs(paths):
        try:
            volume = read_image(image_path)
            mask = np.asarray(read_mask(mask_path, volume, roi)).astype(bool)
        except ImagingError as exc:
            raise DatasetError(f"{image_path} / {mask_path}: {exc}") from None
        for z in range(volume.shape[0]):
            if mask[z].any() or rng.random() < with_empty:
                samples.append(resize_sample(to_model_input(volume, z, tuple(window)), mask[z], size))
                ids.append(f"{_stem(Path(image_path))}#z{z}")
    if not samples:
        raise DatasetError("the volumes gave no slices")
    return CachedSamples(samples, ids)


def phantom_slices(size: int, count: int, seed: int, window: tuple[float, float] = CT_WINDOW, phantom_size: int = 128) -> CachedSamples:
    """``count`` synthetic CT slices + lesion masks (``imaging.phantom.iter_training_slices``,
    ``phantom_size`` px square, windowed), resized to the model size and cached."""
    try:
        from imaging import phantom
    except ImportError as exc:  # pragma: no cover
        raise DatasetError(f"imaging.phantom is not available ({exc})") from None
    samples, ids = [], []
    for i, (image, mask) in enumerate(phantom.iter_training_slices(seed=seed, size=phantom_size, preset=tuple(window), count=count)):
        samples.append(resize_sample(image, np.asarray(mask, bool), size))
        ids.append(f"phantom-{seed}-{i}")
    return CachedSamples(samples, ids)
