"""Replay the attack of issue 17 against a live service (Redis + API + one Celery worker, started
here; or ``--api`` for a running one) and count what went wrong.

    python -m bench.attack                      # every case, ~3 min on 2 cores
    python -m bench.attack --quick              # shorter waits (retry after 12 s, slow clients 35 s)
    python -m bench.attack --api http://host:8000 --key KEY     # a running API (no kill / read-only cases)

Cases: NIfTI / .nii.gz / DICOM / PNG headers claiming huge images (two at once), a zip bomb,
Unicode digit ROI names (jobs and batches), roi_name_out with NUL/ESC, the same POST retried
with its Idempotency-Key after the maintenance sweep ran, a client disconnecting mid-upload,
slow clients trickling a body at 1 byte/s, artifact and API JSON headers, kill -9 of the worker's
pool process mid-job (the job must finish on the same worker and /readyz must say not ready
meanwhile), and a read-only data volume (tmpfs remounted read-only; needs root).

Prints one row per case (requests, statuses, verdict), the API's peak memory (VmHWM), and last
``5xx <n>``: responses 500-599 that should not be (a 503 ``storage-unavailable`` while the volume
is read-only and a 503 from /readyz are the documented answers, counted apart). Exit 1 on any
unexpected 5xx, failed expectation or a traceback in the API log.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


class Tally:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, str]] = []
        self.unexpected_5xx = 0
        self.expected_503 = 0
        self.failures: list[str] = []

    def case(self, name: str, responses: list[httpx.Response], ok: bool, note: str = "",
             allowed_503: bool = False) -> None:
        statuses: dict[int, int] = {}
        for r in responses:
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if 500 <= r.status_code < 600:
                documented = r.status_code == 503 and (allowed_503 or r.request.url.path == "/readyz")
                if documented:
                    self.expected_503 += 1
                else:
                    self.unexpected_5xx += 1
        shown = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items())) or "-"
        self.rows.append((name, len(responses), shown, ("ok" if ok else "FAILED") + (f" ({note})" if note else "")))
        if not ok:
            self.failures.append(name)
        print(f"  {name}: {shown} {'ok' if ok else 'FAILED'} {note}", file=sys.stderr, flush=True)


def _nifti(shape, dtype="int16", data: bytes = b"\1" * 1024) -> bytes:
    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + data


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def _dicom_claiming(case: dict, tmp: Path) -> bytes:
    import pydicom

    src = sorted(Path(case["followup1"]).iterdir())[:2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, f in enumerate(src):
            ds = pydicom.dcmread(f)
            ds.Rows, ds.Columns = 65535, 65535
            out = tmp / f"big{i}.dcm"
            ds.save_as(out)
            zf.write(out, out.name)
    return buf.getvalue()


def _zip_bomb(megabytes: int) -> bytes:
    buf = io.BytesIO()
    zero = b"\0" * (1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open("zeros.dcm", "w") as f:
        for _ in range(megabytes):
            f.write(zero)
    return buf.getvalue()


class Memory(threading.Thread):
    """The API process's resident memory, sampled; its VmHWM (kernel-kept peak) at the end."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()

    def _field(self, name: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def run(self) -> None:
        while self.pid and not self.stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, self._field("VmRSS"))

    def peak_mb(self) -> float:
        return max(self.peak_kb, self._field("VmHWM")) / 1024


def _slow_client(url: str, key: str, seconds: float) -> tuple[str, float]:
    """Headers, then a body at 1 byte/s: how the API ended it, and after how long."""
    host, port = url.split("//")[1].split(":")
    t0 = time.time()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: application/dicom\r\n"
                   "Content-Length: 100000\r\n\r\n").encode())
        s.settimeout(1.0)
        answer = b""
        while time.time() - t0 < seconds:
            try:
                s.sendall(b"\0")
            except OSError:
                return (answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"), time.time() - t0
            try:
                data = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:  # reset: the server answered and closed while bytes were still coming
                data = b""
            if not data:
                return (answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"), time.time() - t0
            answer += data
        return "still open", time.time() - t0


def run(args: argparse.Namespace) -> int:
    from imaging.phantom import write_example_case

    from .load import _model_dir
    from .stack import RedisServer, Stack, mount_tmpfs, zip_bytes

    root = Path(tempfile.mkdtemp(prefix="p2sam-attack-"))
    case = write_example_case(root / "case", seed=11, shape=(6, 64, 64))
    tally = Tally()
    stack = redis = None
    tmpfs = False
    try:
        if args.api:
            url, key, api_pid = args.api.rstrip("/"), args.key, None
        else:
            models_dir, model = _model_dir(root, None)
            redis = RedisServer(root, appendonly=True)
            stack = Stack(root / "stack", models_dir, redis.url, min_island_mm2=0, default_model_ct=model,
                          request_body_timeout_s=args.body_timeout, max_upload_mb=args.max_upload_mb)
            tmpfs = mount_tmpfs(stack.data_dir, "2g")  # its own volume, so it can be made read-only
            stack.start_api()
            stack.wait_worker(stack.start_worker(wait=False), timeout=300)
            key = stack.p2sam("apikey", "create", "--name", "attack", "--scope", "submit", "--scope", "read").strip()
            url, api_pid = stack.url, stack.api.pid
        memory = Memory(api_pid)
        memory.start()
        c = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300)
        _wait_ready(c, 300)
        prior = c.post("/v1/uploads", content=zip_bytes(case["prior"], case["prior_rtstruct"]),
                       headers={"Content-Type": "application/zip"}).json()
        follow = c.post("/v1/uploads", content=zip_bytes(case["followup1"]), headers={"Content-Type": "application/zip"}).json()
        model = "auto" if args.api else "testmodel"
        body = {"prior": {"upload_id": prior["id"], "roi": "GTV"}, "targets": [{"upload_id": follow["id"], "name": "v1"}],
                "model": model, "n_samples": 2, "outputs": ["nifti", "rtstruct"]}
        print("cases:", file=sys.stderr)

        # 3. headers claiming huge images (two NIfTI bombs at once: the host must not notice)
        bomb = _nifti((64, 64, 64, 30000))
        with ThreadPoolExecutor(2) as pool:
            rs = list(pool.map(lambda _: c.post("/v1/uploads", content=bomb, headers={"Content-Type": "application/x-nifti",
                               "Content-Disposition": 'attachment; filename="x.nii"'}), range(2)))
        tally.case("nifti header 64x64x64x30000 x2", rs, all(r.status_code == 422 for r in rs))
        gz = gzip.compress(_nifti((256, 1024, 1024), "uint8", b"\0" * (1 << 20)))
        r = c.post("/v1/uploads", content=gz, headers={"Content-Type": "application/gzip",
                                                        "Content-Disposition": 'attachment; filename="x.nii.gz"'})
        tally.case(".nii.gz 256x1024x1024", [r], r.status_code == 422)
        r = c.post("/v1/uploads", content=_dicom_claiming(case, root), headers={"Content-Type": "application/zip"})
        tally.case("dicom rows/columns 65535", [r], r.status_code == 422)
        r = c.post("/v1/uploads", content=_png_header(12000, 10000), headers={"Content-Type": "image/png"})
        tally.case("png 12000x10000 header", [r], r.status_code == 422)

        # weak spot: a zip bomb
        r = c.post("/v1/uploads", content=_zip_bomb(args.bomb_mb), headers={"Content-Type": "application/zip"})
        tally.case(f"zip bomb {args.bomb_mb} MB of zeros", [r], r.status_code == 422 and "accepted" in r.text)

        # 4. Unicode digit ROI names
        rs = []
        for roi in ("²", "③"):
            rs.append(c.post("/v1/jobs", json={**body, "prior": {"upload_id": prior["id"], "roi": roi}}))
            rs.append(c.post("/v1/batches", json={"patients": [{"id": "p1", "prior": {"upload_id": prior["id"], "roi": roi},
                                                                "visits": [{"upload_id": follow["id"]}]}]}))
        tally.case("unicode digit roi (jobs, batches)", rs, all(r.status_code == 422 for r in rs))

        # weak spot: roi_name_out with control characters
        rs = [c.post("/v1/jobs", json={**body, "roi_name_out": name}) for name in ("GTV\x00", "GTV\x1b[31m", "a\\b")]
        tally.case("roi_name_out NUL/ESC/backslash", rs, all(r.status_code == 422 for r in rs))

        # weak spot: headers, and schema-allowed odd Idempotency-Keys
        listing = c.get("/v1/jobs")
        odd = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "\x7f"})
        tally.case("no-store / nosniff / odd idempotency key", [listing, odd],
                   listing.headers.get("cache-control") == "no-store" and odd.status_code in (400, 422)
                   and listing.headers.get("x-content-type-options") == "nosniff")

        # 2. the same POST retried after the maintenance sweep has run (every second here)
        first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"attack-{time.time():.0f}"})
        time.sleep(args.retry_after)
        again = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": first.request.headers["Idempotency-Key"]})
        tally.case(f"idempotent retry after {args.retry_after:g} s", [first, again],
                   first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"])
        _wait_job(c, first.json()["id"], 600)
        arts = c.get(f"/v1/jobs/{first.json()['id']}/results").json()["targets"][0]["artifacts"]
        downloads = [c.get(a["url"]) for a in arts]
        tally.case("artifact headers", downloads, all(d.headers.get("x-content-type-options") == "nosniff" for d in downloads))

        # weak spot: a client disconnecting mid-upload
        log_before = len(stack.api.log()) if stack else 0
        host, port = url.split("//")[1].split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall((f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: multipart/form-data; "
                       "boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"f\"; "
                       "filename=\"a.dcm\"\r\n\r\n").encode() + b"\0" * 5000)
            time.sleep(1)
        time.sleep(2)
        new_log = stack.api.log()[log_before:] if stack else ""
        tally.case("client disconnect mid-upload", [], "Traceback" not in new_log,
                   f"{sum('disconnect' in ln for ln in new_log.splitlines())} log line(s)")

        # weak spot: slow clients (1 byte/s)
        with ThreadPoolExecutor(args.slow) as pool:
            ends = list(pool.map(lambda _: _slow_client(url, key, args.slow_seconds), range(args.slow)))
        closed = [t for how, t in ends if how != "still open"]
        got_408 = sum("408" in how for how, _ in ends)
        tally.case(f"{args.slow} slow clients at 1 byte/s", [], len(closed) == args.slow,
                   f"{got_408} answered 408, all closed within {max(closed, default=0):.0f} s" if closed else "none closed")

        # 1. kill -9 of the pool process mid-job: same worker finishes it; /readyz not ready meanwhile
        if stack is not None:
            job = c.post("/v1/jobs", json={**body, "targets": [body["targets"][0] | {"name": f"v{i}"} for i in range(3)]}).json()
            rec = _wait_record(stack.data_dir, job["id"], lambda r: r["state"] == "running" and r.get("lease"), 300)
            os.kill(int(rec["lease"]["owner"].split(":")[1]), 9)
            t_kill = time.time()
            readies = []
            while time.time() - t_kill < 8:
                readies.append(c.get("/readyz"))
                time.sleep(0.5)
            done = _wait_job(c, job["id"], 600)
            same = len(stack.live_workers()) == 1 and "Timed out waiting for UP" not in stack.workers[0].log()
            n503 = sum(r.status_code == 503 for r in readies)  # (tests/service/test_worker_recovery.py pins it down)
            tally.case("kill -9 pool process mid-job", readies, done == "succeeded" and same,
                       f"job {done}, same worker {same}, /readyz 503 {n503}x while it restarted")

        # 5. a read-only data volume: reads work, writes are 503 problems
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,ro", str(stack.data_dir)], check=True)
            try:
                time.sleep(1)
                reads = [c.get("/v1/jobs"), c.get(f"/v1/jobs/{first.json()['id']}"), c.get("/v1/models"),
                         httpx.get(f"{url}/healthz"), httpx.get(f"{url}/v1/jobs")]
                writes = [c.post("/v1/jobs", json={**body, "n_samples": 3}),
                          c.post("/v1/uploads", content=zip_bytes(case["followup2"]), headers={"Content-Type": "application/zip"}),
                          c.get("/readyz")]
                time.sleep(3)
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(stack.data_dir)], check=True)
            ok = [r.status_code for r in reads] == [200, 200, 200, 200, 401] and \
                all(r.status_code == 503 and "application/problem+json" in r.headers.get("content-type", "") for r in writes)
            tally.case("read-only data volume", reads + writes, ok, allowed_503=True)
            after = c.post("/v1/jobs", json={**body, "n_samples": 1})
            tally.case("writable again", [after], after.status_code == 202 and _wait_job(c, after.json()["id"], 600) == "succeeded")

        memory.stop.set()
        peak = memory.peak_mb()
        tracebacks = stack.api.log().count("Traceback") if stack else 0
        print()
        width = max(len(r[0]) for r in tally.rows)
        print(f"{'case':<{width}}  {'requests':>8}  {'statuses':<28} verdict")
        for name, n, shown, verdict in tally.rows:
            print(f"{name:<{width}}  {n:>8}  {shown:<28} {verdict}")
        print(f"peak API memory (VmHWM) {peak:.0f} MB" if api_pid else "peak API memory: n/a (--api)")
        print(f"tracebacks in the API log {tracebacks}")
        print(f"documented 503s (read-only volume, /readyz) {tally.expected_503}")
        print(f"failed cases {len(tally.failures)}{': ' + ', '.join(tally.failures) if tally.failures else ''}")
        print(f"5xx {tally.unexpected_5xx}")
        return 0 if not (tally.unexpected_5xx or tally.failures or tracebacks or (api_pid and peak > 2048)) else 1
    finally:
        if stack is not None:
            if args.keep:
                shutil.copytree(stack.root / "logs", root / "kept-logs", dirs_exist_ok=True)
            stack.stop()
            if tmpfs:
                subprocess.run(["umount", "-l", str(stack.data_dir)], capture_output=True)
        if redis is not None:
            redis.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _wait_ready(c: httpx.Client, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(1)
    raise RuntimeError("the service did not become ready")


def _wait_job(c: httpx.Client, job_id: str, timeout: float) -> str:
    deadline = time.time() + timeout
    state = "?"
    while time.time() < deadline:
        state = c.get(f"/v1/jobs/{job_id}").json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            return state
        time.sleep(0.5)
    return state


def _wait_record(data_dir: Path, job_id: str, check, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            rec = json.loads((data_dir / "jobs" / f"{job_id}.json").read_text())
            if check(rec):
                return rec
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not start")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__.split("\n\n")[0])
    p.add_argument("--api", default=None, help="attack a running API instead of starting one")
    p.add_argument("--key", default=None, help="API key for --api (submit + read)")
    p.add_argument("--quick", action="store_true", help="shorter waits")
    p.add_argument("--retry-after", type=float, default=None, help="seconds before the idempotent retry (default 22)")
    p.add_argument("--slow", type=int, default=40, help="slow clients (default 40)")
    p.add_argument("--slow-seconds", type=float, default=None, help="how long a slow client trickles (default 60)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="P2SAM_REQUEST_BODY_TIMEOUT_S of the started API")
    p.add_argument("--max-upload-mb", type=int, default=512, help="P2SAM_MAX_UPLOAD_MB of the started API")
    p.add_argument("--bomb-mb", type=int, default=1024, help="zeros in the zip bomb (default 1024 MB)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    args.retry_after = args.retry_after if args.retry_after is not None else (12.0 if args.quick else 22.0)
    args.slow_seconds = args.slow_seconds if args.slow_seconds is not None else (35.0 if args.quick else 60.0)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
