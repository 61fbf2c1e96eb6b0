"""A headless Chromium for the tests, driven over the DevTools protocol (websocket-client).

    with Chromium.start(tmp_path) as browser:
        browser.goto("http://127.0.0.1:8000/review")
        browser.wait_for("document.querySelector('#jobs tr') !== null")

Skips the calling test with a message when no Chromium (Debian: apt-get install chromium) or no
websocket-client (pip install websocket-client) is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """$P2SAM_CHROMIUM, else the first Chromium / Chrome on the PATH."""
    if os.environ.get("P2SAM_CHROMIUM"):
        return shutil.which(os.environ["P2SAM_CHROMIUM"])
    return next((p for p in map(shutil.which, BINARIES) if p), None)


class Chromium:
    def __init__(self, proc: subprocess.Popen, ws, log: Path) -> None:
        self.proc, self.ws, self.log = proc, ws, log
        self._id = 0

    @classmethod
    def start(cls, folder: Path, timeout: float = 60) -> "Chromium":
        exe = find_chromium()
        if exe is None:
            pytest.skip("Chromium is not installed (Debian: apt-get install chromium; or set P2SAM_CHROMIUM)")
        try:
            import websocket
        except ImportError:
            pytest.skip("websocket-client is not installed (pip install websocket-client)")
        profile = folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = folder / "chromium.log"
        argv = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                "--window-size=1280,900", "about:blank"]
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a stale one from an earlier run names a dead port
        proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Chromium did not start:\n{log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            pages = []
            while not pages and time.time() < deadline:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t["type"] == "page"]
                time.sleep(0.1)
            ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        except BaseException:
            _kill(proc)
            raise
        browser = cls(proc, ws, log)
        try:
            browser.call("Page.enable")
            browser.call("Runtime.enable")
        except BaseException:
            browser.close()
            raise
        return browser

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited); returns its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript error in {expression!r}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href.startsWith('http')")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        text = self.eval("document.body ? document.body.innerText.slice(0, 1500) : ''")
        raise AssertionError(f"timed out waiting for {expression!r}; the page shows:\n{text}")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            _kill(self.proc)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
