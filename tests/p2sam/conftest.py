"""Fixtures for the application tests: a small example case and a random-weight model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_sam, save_weights


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A folder with `testmodel.pt`: the small backbone with seeded random weights."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_weights(build_sam("small"), folder / "testmodel.pt", "small", None, {"engine": {"pos_range": [1, 2]}})
    return folder


@pytest.fixture(scope="module")
def settings(model_dir, tmp_path_factory):
    """Settings of a data folder of the module's own, the test model folder, islands kept."""
    from p2sam.settings import Settings

    return Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=model_dir, min_island_mm2=0.0)


@pytest.fixture(scope="module")
def pool(settings):
    from p2sam.modelpool import ModelPool

    return ModelPool(settings)


@pytest.fixture(scope="session")
def example_case(tmp_path_factory) -> dict:
    from imaging.phantom import write_example_case

    return write_example_case(tmp_path_factory.mktemp("example"), seed=3, shape=(8, 96, 96))


@pytest.fixture(scope="session")
def picture_case(tmp_path_factory) -> dict:
    """Two RGB frames and a PNG mask of the first (a 2-D endoscopy-like case)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    paths = {}
    for i, (cy, cx) in enumerate([(60, 70), (64, 80)]):
        img = rng.integers(60, 120, (120, 160, 3)).astype(np.uint8)
        blob = (yy - cy) ** 2 / 25**2 + (xx - cx) ** 2 / 35**2 < 1
        img[blob] = (200, 90, 80)
        Image.fromarray(img).save(folder / f"frame{i}.png")
        Image.fromarray((blob * 255).astype(np.uint8)).save(folder / f"frame{i}_mask.png")
        paths[f"frame{i}"] = str(folder / f"frame{i}.png")
        paths[f"mask{i}"] = str(folder / f"frame{i}_mask.png")
    return paths
