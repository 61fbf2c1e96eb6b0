"""Shared fixtures: paths to the real data beside the repository, and small synthetic models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
def _find_shared_data() -> Path:
    """P2SAM_SHARED_DATA, else ../shared/data beside the checkout, else the workplace's copy."""
    if "P2SAM_SHARED_DATA" in os.environ:
        return Path(os.environ["P2SAM_SHARED_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "data"


SHARED_DATA = _find_shared_data()

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a message saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
