"""A real Orthanc PACS for the tests: started on free ports with a generated configuration (its
DICOMweb plugin enabled when installed), stopped and started again on the same storage."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from bench.stack import free_port

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")


def dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.exists():
            return str(p)
    return None


def need_orthanc() -> str:
    exe = shutil.which("Orthanc")
    if exe is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it)")
    return exe


class Orthanc:
    def __init__(self, root: Path, aet: str = "ORTHANC", modalities: dict | None = None, lua: str | None = None,
                 dicomweb: bool = True) -> None:
        self.exe = need_orthanc()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": f"p2sam-test-{aet}", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
            "DicomModalities": modalities or {}, "StableAge": 1, "SaveJobs": False, "OverwriteInstances": False,
            "DicomScpTimeout": 10, "HttpServerEnabled": True, "DicomServerEnabled": True, "ConcurrentJobs": 1,
            "HttpThreadsCount": 4, "StorageCompression": False,
        }
        plugin = dicomweb_plugin() if dicomweb else None
        if plugin:
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                                  "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        if lua:
            (self.root / "filter.lua").write_text(lua)
            config["LuaScripts"] = [str(self.root / "filter.lua")]
        self.has_dicomweb = plugin is not None
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([self.exe, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.root)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        p = self.root / "orthanc.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # --- what it holds
    def get(self, path: str):
        r = httpx.get(f"{self.url}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        return self.get("/instances")

    def count(self) -> int:
        return len(self.instances())

    def datasets(self, modality: str | None = None) -> list[pydicom.Dataset]:
        out = []
        for iid in self.instances():
            r = httpx.get(f"{self.url}/instances/{iid}/file", timeout=10)
            r.raise_for_status()
            ds = pydicom.dcmread(io.BytesIO(r.content))
            if modality is None or ds.Modality == modality:
                out.append(ds)
        return out

    def upload(self, *paths: Path) -> int:
        """Store files through the REST API (POST /instances); returns how many."""
        n = 0
        for p in paths:
            for f in sorted(Path(p).rglob("*")) if Path(p).is_dir() else [Path(p)]:
                if f.is_file():
                    httpx.post(f"{self.url}/instances", content=f.read_bytes(), timeout=10).raise_for_status()
                    n += 1
        return n

    def clear(self) -> None:
        for pid in self.get("/patients"):
            httpx.delete(f"{self.url}/patients/{pid}", timeout=10).raise_for_status()
