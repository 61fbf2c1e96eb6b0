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


@pytest.fixture()
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema of its own (dropped afterwards): the
    PostgreSQL job store's tests. Skips, saying why, where no server answers (.ci/run starts one)."""
    from bench.stack import PG_URL, PostgresSchema

    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e .)")
    try:
        scratch = PostgresSchema(prefix="p2sam_test")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not answer at {PG_URL} ({str(exc).strip().splitlines()[0]}); "
                    "set P2SAM_TEST_DATABASE_URL or start it")
    try:
        yield scratch.url
    finally:
        scratch.drop()


class Backend:
    """Makes job stores of one backend (``make()``; ``make(path)`` for another data folder)."""

    def __init__(self, path, url: str | None) -> None:
        self.path, self.url = path, url

    def __call__(self, path=None):
        from p2sam.jobstore import open_store
        from p2sam.settings import Settings

        return open_store(Settings(data_dir=path or self.path, database_url=self.url))


@pytest.fixture(params=["files", "postgres"])
def make(request, tmp_path) -> Backend:
    """Each test using it runs twice: on the JSON-file store and on PostgreSQL."""
    return Backend(tmp_path, request.getfixturevalue("pg_url") if request.param == "postgres" else None)
