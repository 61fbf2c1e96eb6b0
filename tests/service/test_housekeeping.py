"""The `p2sam apikey` / `p2sam worker` commands and the API's housekeeping (retention), in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from p2sam.jobstore import RUNNING, SUCCEEDED, new_id, process_owner
from p2sam.settings import Settings
from service.auth import KeyStore
from service.services import Services


def _p2sam(tmp_path, *args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("P2SAM_")}
    full.update({"P2SAM_DATA_DIR": str(tmp_path)}, **env)
    return subprocess.run([sys.executable, "-m", "p2sam.cli", *args], env=full, capture_output=True, text=True, timeout=60)


def test_apikey_create_list_revoke(tmp_path):
    made = _p2sam(tmp_path, "apikey", "create", "--name", "planning-system", "--scope", "submit", "--scope", "read")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("p2s_") and "shown only now" in made.stderr
    stored = (tmp_path / "apikeys.json").read_text()
    assert key[len("p2s_"):] not in stored  # only a salted hash is kept
    assert oct(os.stat(tmp_path / "apikeys.json").st_mode & 0o777) == "0o600"
    assert KeyStore(tmp_path).verify(key).scopes == {"submit", "read"}
    listing = _p2sam(tmp_path, "apikey", "list").stdout
    assert "planning-system" in listing and "read,submit" in listing and key not in listing
    assert _p2sam(tmp_path, "apikey", "revoke", "planning-system").returncode == 0
    assert KeyStore(tmp_path).verify(key) is None
    assert KeyStore(tmp_path).revoke("nobody") == 0


def test_worker_without_a_broker_explains_embedded_mode(tmp_path):
    run = _p2sam(tmp_path, "worker")
    assert run.returncode == 2 and "P2SAM_BROKER_URL" in run.stderr and "embedded" in run.stderr


def test_retention_purges_old_finished_jobs_only(tmp_path):
    services = Services(Settings(data_dir=tmp_path, retention_hours=1))
    store = services.store
    old_upload, new_upload = new_id(), new_id()
    for u in (old_upload, new_upload):
        store.upload_dir(u).mkdir(parents=True)
    old = store.create({"id": new_id(), "uploads": [old_upload]})
    running = store.create({"id": new_id(), "uploads": [new_upload]})
    store.claim(old.id, process_owner(), 60)
    store.transition(old.id, SUCCEEDED, {RUNNING})
    store.results_dir(old.id).mkdir()
    store.update(old.id, lambda r: setattr(r, "finished_at", time.time() - 7200))
    store.claim(running.id, process_owner(), 60)
    services.maintenance.run_once()
    assert store.get(old.id).purged_at and store.get(old.id).purge_reason == "retention"
    assert not store.results_dir(old.id).exists() and not store.upload_dir(old_upload).exists()
    assert store.get(running.id).purged_at is None and store.upload_dir(new_upload).exists()
    audit = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert {"key": "retention", "action": "job.purge", "job_id": old.id}.items() <= audit[0].items()
