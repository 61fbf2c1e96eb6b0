"""Real processes for the service tests: a private redis-server, the API (`p2sam serve`) and a
Celery worker (`p2sam worker`) sharing a temporary data directory; a random-weight model and a
small synthetic DICOM case.

The session's Redis runs WITHOUT persistence on purpose: the Redis-restart test then proves that
queued jobs are re-enqueued from the job store, not saved by Redis (production runs Redis with
append-only persistence as well).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bench.stack import RedisServer, Stack
from service.auth import KeyStore

from .client import client

MAX_UPLOAD_MB = 2


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """`testmodel.pt`: the small backbone with seeded random weights."""
    from models import build_sam, save_weights

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_weights(build_sam("small"), folder / "testmodel.pt", "small", None, {"engine": {"pos_range": [1, 2]}})
    return folder


@pytest.fixture(scope="session")
def case(tmp_path_factory) -> dict:
    """The bundled example's layout, small: prior/ + prior_rtstruct.dcm (ROI GTV), followup1/, followup2/."""
    from imaging.phantom import write_example_case

    return write_example_case(tmp_path_factory.mktemp("case"), seed=3, shape=(8, 96, 96))


@pytest.fixture(scope="session")
def small_case(tmp_path_factory) -> dict:
    from imaging.phantom import write_example_case

    return write_example_case(tmp_path_factory.mktemp("small_case"), seed=5, shape=(6, 64, 64))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, redis_server, model_dir):
    """API + one worker on the session's Redis (tests may kill and restart workers)."""
    s = Stack(tmp_path_factory.mktemp("stack"), model_dir, redis_server.url, max_upload_mb=MAX_UPLOAD_MB,
              min_island_mm2=0)
    s.redis = redis_server
    try:
        s.start_api()
        s.start_worker()
        keys = KeyStore(s.data_dir)  # (the `p2sam apikey` command itself is tested in test_housekeeping)
        s.keys = {
            "planning": keys.create("planning-system", ["submit", "read"]),
            "admin": keys.create("admin", ["admin"]),
            "viewer": keys.create("viewer", ["read"]),
            "other": keys.create("other-system", ["submit"]),
        }
        yield s
    finally:
        s.stop()


def ensure_worker(stack) -> None:
    if not stack.live_workers():
        stack.start_worker()


@pytest.fixture()
def api(stack):
    """A client with the planning system's key (submit + read); a live worker guaranteed."""
    ensure_worker(stack)
    with client(stack.url, stack.keys["planning"]) as c:
        yield c


@pytest.fixture(scope="session")
def uploaded(stack, small_case):
    """The small case uploaded once: prior (zip of series + RTSTRUCT) and follow-up 1 (multipart)."""
    from .client import upload_files, upload_zip

    with client(stack.url, stack.keys["planning"]) as c:
        prior = upload_zip(c, small_case["prior"], small_case["prior_rtstruct"])
        followup = upload_files(c, small_case["followup1"])
    return {"prior": prior, "followup": followup}
