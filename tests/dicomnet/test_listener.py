"""Receiving studies: the C-STORE SCP (`p2sam dicom-listener`) fed by dcmtk's storescu."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from bench.stack import free_port
from dicomnet.listener import Listener, received_upload
from dicomnet.peers import PeerError
from p2sam.settings import Settings

pytestmark = pytest.mark.timeout(180)


def storescu(port: int, calling: str, *paths: Path, called: str = "P2SAM") -> subprocess.CompletedProcess:
    exe = shutil.which("storescu", path="/usr/bin:/usr/local/bin:/bin")  # dcmtk, not pynetdicom's venv script of that name
    if exe is None:
        pytest.skip("storescu is not installed (apt-get install dcmtk; .ci/run does it)")
    return subprocess.run([exe, "-aet", calling, "-aec", called, "-ta", "10", "+sd", "+r", "-nh", "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=120, check=False)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def manifests(data_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((data_dir / "uploads").glob("*/manifest.json"))]


def series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture
def listener(tmp_path):
    s = Settings(data_dir=tmp_path / "data", dicom_port=free_port(), dicom_quiet_period_s=1.5,
                 dicom_peers=json.dumps({"scanner": {"ae_title": "SCANNER", "host": "127.0.0.1", "port": 104}}),
                 dicom_allowed_aes="TPS1,TPS2")
    lis = Listener(s)
    lis.start()
    stop = threading.Event()
    sweeper = threading.Thread(target=lis.run_forever, args=(stop, 0.2), daemon=True)
    sweeper.start()
    yield lis
    stop.set()
    sweeper.join(5)
    lis.stop()


def test_three_series_pushed_concurrently_become_three_complete_uploads(listener, example):
    port = listener.settings.dicom_port
    senders = {"prior": "SCANNER", "followup1": "TPS1", "followup2": "TPS2"}
    results: dict[str, subprocess.CompletedProcess] = {}
    threads = [threading.Thread(target=lambda n=n, ae=ae: results.__setitem__(n, storescu(port, ae, example[n])))
               for n, ae in senders.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), {n: r.stderr[-500:] for n, r in results.items()}
    deadline = time.time() + 30
    while len(manifests(listener.store.data_dir)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2 * listener.settings.dicom_quiet_period_s)  # nothing else trickles in
    found = manifests(listener.store.data_dir)
    assert len(found) == 3
    by_series = {m["series"][0]["series_instance_uid"]: m for m in found}
    for name in senders:
        expected = len(list(example[name].iterdir()))
        m = by_series[series_uid(example[name])]
        assert len(m["series"]) == 1 and m["series"][0]["n_slices"] == expected == 16
        assert m["owner"] == "dicom-listener" and m["masks"] == []
        entry = received_upload(listener.store.data_dir, series_uid(example[name]))
        assert entry["upload_id"] == m["id"] and entry["instances"] == expected and entry["calling_ae"] == senders[name]
    assert not any(p.is_dir() for p in listener.inbox.iterdir())  # inbox emptied


def test_rtstruct_alone_is_an_upload_of_its_contour(listener, example):
    r = storescu(listener.settings.dicom_port, "TPS1", example["prior_rtstruct"])
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 20
    while not manifests(listener.store.data_dir) and time.time() < deadline:
        time.sleep(0.2)
    (m,) = manifests(listener.store.data_dir)
    assert m["series"] == [] and m["masks"][0]["kind"] == "rtstruct" and m["masks"][0]["rois"] == ["GTV"]


def test_listener_refuses_to_start_with_an_empty_allow_list(tmp_path):
    with pytest.raises(PeerError, match="P2SAM_DICOM_ALLOWED_AES"):
        Listener(Settings(data_dir=tmp_path, dicom_port=free_port()))


def test_unknown_calling_ae_is_refused_by_the_listener_process(tmp_path, example):
    """`p2sam dicom-listener` as its own process: an unknown AE is rejected (logged without patient
    data), the listener keeps serving, an allowed AE's series becomes an upload."""
    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "P2SAM_DATA_DIR": str(data), "P2SAM_DICOM_PORT": str(port), "P2SAM_DICOM_ALLOWED_AES": "TPS1",
           "P2SAM_DICOM_QUIET_PERIOD_S": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = open(tmp_path / "listener.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "p2sam.cli", "dicom-listener", "--no-send"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        refused = storescu(port, "INTRUDER", example["followup1"])
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr + refused.stdout
        wrong_called = storescu(port, "TPS1", example["followup1"], called="NOT-US")
        assert wrong_called.returncode != 0
        ok = storescu(port, "TPS1", example["followup1"])
        assert ok.returncode == 0, ok.stderr
        deadline = time.time() + 30
        while not manifests(data) and time.time() < deadline:
            time.sleep(0.2)
        (m,) = manifests(data)
        assert m["series"][0]["n_slices"] == 16
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    text = (tmp_path / "listener.log").read_text()
    assert "association rejected: AE INTRUDER" in text
    assert f"upload {m['id']} (16 instances, CT" in text
    ds = pydicom.dcmread(next(iter(sorted(example["followup1"].iterdir()))), stop_before_pixels=True)
    for phi in (str(ds.PatientName), str(ds.PatientID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)):
        assert phi not in text
