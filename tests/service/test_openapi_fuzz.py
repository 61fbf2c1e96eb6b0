"""schemathesis against the live API's OpenAPI: every check, no conformance failure.

Bounded: a few examples per operation, a time budget, one worker. Skips with a message when
schemathesis is not installed (pip install -e '.[test]' installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ensure_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def test_openapi_is_served(stack):
    import httpx

    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert {"/v1/uploads", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results",
            "/v1/jobs/{job_id}/artifacts/{target}/{name}", "/v1/jobs/{job_id}/reviews", "/v1/batches",
            "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/report", "/v1/batches/{batch_id}/report.csv",
            "/v1/batches/{batch_id}/plots/{patient}", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    docs = httpx.get(f"{stack.url}/docs")
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text  # no CDN: works offline
    assert httpx.get(f"{stack.url}/docs/assets/swagger-ui-bundle.js").status_code == 200


def _wait_ready(stack, timeout=60):
    import time

    import httpx

    deadline = time.time() + timeout
    while httpx.get(f"{stack.url}/readyz", timeout=30).status_code != 200:
        assert time.time() < deadline, "the stack did not become ready"
        time.sleep(1)


CONFIG = Path(__file__).with_name("schemathesis.toml")  # the rejections the OpenAPI cannot describe, with why
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")  # names unique across array items: beyond JSON Schema
RUNS = {  # a fresh key per run: the first owns no upload, so a schema-valid job or batch body must be a 404, not a 422
    "key, every operation but uploads": (["submit", "read"], ["--exclude-name", "POST /v1/uploads"]),
    "key, uploads": (["submit", "read"], ["--include-name", "POST /v1/uploads"]),
    "no key": (None, []),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_schemathesis_conformance(stack, run, tmp_path):
    """Every schemathesis check (`--checks all`): no 5xx; status codes, content types, headers and
    bodies as the OpenAPI documents them; schema-valid requests accepted and schema-violating ones
    rejected. With a key of its own that reads everything but may change only what it made (an
    admin key would delete the other tests' jobs, batches and uploads: the lists show their ids),
    and without a key."""
    beside = Path(sys.executable).with_name("schemathesis")  # this venv's, also when it is not activated
    exe = str(beside) if beside.exists() else shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    scopes, selection = RUNS[run]
    ensure_worker(stack)
    _wait_ready(stack)  # /readyz is 503 while no worker answers: that is not what this test is about
    argv = [exe, "--config-file", str(CONFIG), "run", f"{stack.url}/openapi.json", "--checks", "all",
            "--max-examples", "10", "--workers", "1", "--request-timeout", "30", "--seed", "1",
            "--phases", "examples,coverage,fuzzing", "--no-color", "--report", "junit", "--report-dir", str(tmp_path),
            *selection]
    if scopes:
        from service.auth import KeyStore

        argv += ["--header", f"X-API-Key: {KeyStore(stack.data_dir).create('fuzzer', scopes)}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=360, cwd=tmp_path, env=env)  # its cache in tmp
    tail = (proc.stdout + proc.stderr)[-4000:]
    print(tail[-1500:])
    assert proc.returncode == 0, tail
    api_log = stack.api.log()
    assert "Traceback" not in api_log, api_log[-3000:]
