"""Start the real thing locally: a Redis server, the API (uvicorn) and Celery workers, as
separate processes sharing one data directory. Used by the service tests and ``bench.load``.

Each process runs in its own session (process group), so :meth:`Proc.kill9` kills a worker
*and* its pool child like a crashed host would; logs go to ``<root>/logs/<name>.log``.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx


def zip_bytes(*paths: str | Path) -> bytes:
    """A zip of files and folders (members under their own names, as a PACS export would)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in map(Path, paths):
            for f in (sorted(p.rglob("*")) if p.is_dir() else [p]):
                if f.is_file():
                    zf.write(f, f.relative_to(p.parent))
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (a pool process -> its Celery worker), None when gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def mount_tmpfs(folder: Path, size: str = "2g") -> bool:
    """Put ``folder`` on a tmpfs of its own, so that it can be remounted read-only (root and mount
    needed: False otherwise, nothing done). Undo with ``umount -l``."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


PG_URL = os.environ.get("P2SAM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


class PostgresSchema:
    """A fresh schema on a PostgreSQL server (default $P2SAM_TEST_DATABASE_URL, else PG_URL), and
    ``url``, the server's URL with that schema as its search_path: a job store of its own for one
    test or benchmark run. psycopg.OperationalError when the server does not answer."""

    def __init__(self, base: str | None = None, prefix: str = "p2sam_tmp") -> None:
        import uuid

        import psycopg

        base = base or PG_URL
        self.schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.conn = psycopg.connect(base, autocommit=True, connect_timeout=3)
        self.conn.execute(f"CREATE SCHEMA {self.schema}")
        self.url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{self.schema}"

    def drop(self) -> None:
        from p2sam.pgstore import close_pools

        close_pools()  # (their connections would hold the schema's tables)
        self.conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.conn.close()


class Proc:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv = name, argv
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and its pool child): a crash."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (Celery: warm shutdown), then SIGKILL after ``timeout``."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        self._log.close()


class RedisServer:
    """A private redis-server on a free port (so tests may restart it freely)."""

    def __init__(self, root: Path, appendonly: bool = False, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.root, self.appendonly = root, appendonly
        self.port = port or free_port()
        self.proc: Proc | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no"]
        self.proc = Proc(f"redis-{self.port}", argv, dict(os.environ), self.root / "logs")
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def restart(self) -> None:
        """Stop Redis abruptly (SIGKILL: nothing saved beyond the AOF) and start it again."""
        assert self.proc is not None
        self.proc.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill9()


class Stack:
    """API + workers (+ the given broker) sharing ``root/data``."""

    def __init__(self, root: Path, models_dir: Path, broker_url: str | None, **settings: str) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("P2SAM_")}
        self.env.update({
            "P2SAM_DATA_DIR": str(self.data_dir), "P2SAM_MODELS_DIR": str(models_dir), "P2SAM_THREADS": "1",
            "P2SAM_DEFAULT_MODEL_CT": "testmodel", "P2SAM_LOG_LEVEL": "INFO", "P2SAM_MAINTENANCE_INTERVAL_S": "1",
            "PYTHONUNBUFFERED": "1",
        })
        if broker_url:
            self.env["P2SAM_BROKER_URL"] = broker_url
        self.env.update({f"P2SAM_{k.upper()}": str(v) for k, v in settings.items()})
        self.api: Proc | None = None
        self.port = free_port()
        self.workers: list[Proc] = []
        self._n = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def p2sam(self, *args: str) -> str:
        """Run a `p2sam` command with this stack's settings; returns its stdout."""
        out = subprocess.run([sys.executable, "-m", "p2sam.cli", *args], env=self.env, capture_output=True, text=True,
                             timeout=60, check=True)
        return out.stdout

    def start_api(self, timeout: float = 300) -> Proc:  # (imports take minutes on a loaded 2-core host)
        self.api = Proc("api", [sys.executable, "-m", "p2sam.cli", "serve", "--port", str(self.port)], self.env,
                        self.root / "logs")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.api.alive():
                raise RuntimeError(f"the API exited:\n{self.api.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self.api
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not start:\n{self.api.log()[-3000:]}")

    def start_worker(self, timeout: float = 300, wait: bool = True, env: dict[str, str] | None = None) -> Proc:
        """A `p2sam worker` (``env``: extra environment variables for it alone)."""
        self._n += 1
        name = f"worker{self._n}"
        proc = Proc(name, [sys.executable, "-m", "p2sam.cli", "worker", "--hostname", f"{name}@%h"],
                    {**self.env, **(env or {})}, self.root / "logs")
        self.workers.append(proc)
        if wait:
            self.wait_worker(proc, timeout)
        return proc

    def wait_worker(self, proc: Proc, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
            if " ready." in proc.log():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} did not become ready:\n{proc.log()[-3000:]}")

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.api is not None:
            self.api.stop()
