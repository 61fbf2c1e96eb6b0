"""Load test of the service with real processes: Redis + the API + N Celery workers.

    python -m bench.load --jobs 50 --workers 2            # kills one worker mid-run and restarts it
    python -m bench.load --jobs 50 --workers 2 --no-kill
    python -m bench.load --api http://host:8000 --key KEY --data-dir /shared/p2sam --jobs 20
    python -m bench.load --jobs 50 --workers 2 --faults   # + pool-process kill -9, Redis restart,
                                                           #   every POST retried after 30 s,
                                                           #   10 s of a read-only data volume
    python -m bench.load --jobs 50 --workers 4 --store postgres   # job records in PostgreSQL

Submits ``--jobs`` small jobs (the synthetic example case, tiny), waits for all of them and
prints submitted, completed, lost, duplicated, p50/p95 latency (submission -> finished) and
jobs/min; the LAST line is ``lost <n> duplicated <m>`` (the goal: 0 and 0).

- lost: a submitted job that did not succeed before ``--timeout``;
- duplicated: a job that reached a terminal state more than once, or produced a target's
  outputs more than once (the job store counts both: ``terminal_transitions``, ``writes``),
  or whose result folder does not hold exactly one folder per target.

``--faults`` adds, while the jobs run: kill -9 of a busy worker's *pool process* (the worker
itself must recover), a Redis restart (SIGKILL, append-only file kept), a client that
retries every POST with the same Idempotency-Key ``--retry-after`` seconds later (each must
return the same job), and ``--readonly-s`` seconds of a read-only data volume (the data folder is
a tmpfs of its own, remounted read-only at 70 % done: needs root, else said and skipped).
Every run also prints how many 5xx answers the client saw (goal 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .stack import mount_tmpfs, parent_pid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="Celery workers to start (ignored with --api)")
    p.add_argument("--kill-after", type=float, default=0.3,
                   help="kill -9 a busy worker once this fraction of jobs finished, then start a new one (default 0.3)")
    p.add_argument("--no-kill", action="store_true", help="do not kill a worker")
    p.add_argument("--targets", type=int, default=1, help="follow-ups per job")
    p.add_argument("--samples", type=int, default=2, help="uncertainty samples per target")
    p.add_argument("--outputs", default="nifti,rtstruct")
    p.add_argument("--shape", default="6,64,64", help="example case size z,y,x")
    p.add_argument("--model", default=None, help="weights file to serve (default: a random-weight small model)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait for all jobs")
    p.add_argument("--api", default=None, help="use a running API instead of starting one")
    p.add_argument("--key", default=None, help="API key for --api (submit + read)")
    p.add_argument("--data-dir", default=None, help="the API's P2SAM_DATA_DIR (to count duplicates with --api)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    p.add_argument("--faults", action="store_true", help="also kill a pool process, restart Redis, retry every POST")
    p.add_argument("--retry-after", type=float, default=30.0, help="with --faults: seconds before each POST is retried")
    p.add_argument("--readonly-s", type=float, default=10.0, help="with --faults: seconds the data volume is read-only")
    p.add_argument("--store", choices=["files", "postgres"], default="files",
                   help="job store of the stack: JSON files on the data volume, or PostgreSQL (P2SAM_DATABASE_URL)")
    p.add_argument("--database-url", default=None,
                   help="with --store postgres: the server (default $P2SAM_TEST_DATABASE_URL, else "
                        "postgresql://postgres@127.0.0.1:5432/test); a fresh schema of its own is used and dropped")
    return p.parse_args(argv)


def _model_dir(root: Path, model: str | None) -> tuple[Path, str]:
    folder = root / "models"
    folder.mkdir(parents=True, exist_ok=True)
    if model:
        src = Path(model)
        (folder / src.name).symlink_to(src.resolve())
        return folder, src.stem
    import torch

    from models import build_sam, save_weights

    torch.manual_seed(0)
    save_weights(build_sam("small"), folder / "testmodel.pt", "small", None, {"engine": {"pos_range": [1, 2]}})
    return folder, "testmodel"


def _upload(c: httpx.Client, case: dict, n_targets: int) -> dict:
    from .stack import zip_bytes

    prior = c.post("/v1/uploads", content=zip_bytes(case["prior"], case["prior_rtstruct"]),
                   headers={"Content-Type": "application/zip"})
    prior.raise_for_status()
    follow = []
    for i in range(n_targets):
        r = c.post("/v1/uploads", content=zip_bytes(case["followup1" if i % 2 == 0 else "followup2"]),
                   headers={"Content-Type": "application/zip"})
        r.raise_for_status()
        follow.append(r.json()["id"])
    return {"prior": prior.json()["id"], "targets": follow}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run(args: argparse.Namespace) -> int:
    from imaging.phantom import write_example_case

    from p2sam.jobstore import open_store
    from p2sam.settings import Settings

    from .stack import PostgresSchema, RedisServer, Stack

    root = Path(tempfile.mkdtemp(prefix="p2sam-load-"))
    shape = tuple(int(v) for v in args.shape.split(","))
    case = write_example_case(root / "case", seed=7, shape=shape)
    stack = redis = None
    killed = []
    try:
        database = PostgresSchema(args.database_url, "p2sam_load") if args.store == "postgres" and not args.api else None
    except Exception as exc:  # psycopg missing or the server not answering: one line, not a traceback
        print(f"bench.load: --store postgres needs a PostgreSQL server ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})", file=sys.stderr)
        return 2
    store = None
    try:
        if args.api:
            url, key = args.api.rstrip("/"), args.key
            data_dir = Path(args.data_dir) if args.data_dir else None
            model = "auto"
        else:
            models_dir, model = _model_dir(root, args.model)
            redis = RedisServer(root, appendonly=True)
            extra = {"database_url": database.url} if database else {}
            stack = Stack(root / "stack", models_dir, redis.url, min_island_mm2=0, default_model_ct=model, **extra)
            if args.faults:
                _FAULTS_DONE.clear()
                if mount_tmpfs(stack.data_dir, "4g"):
                    _FAULTS_DONE.add("tmpfs")
                else:
                    _FAULTS_DONE.add("readonly")
                    print("the read-only fault needs root and mount: skipped", file=sys.stderr)
            stack.start_api()
            procs = [stack.start_worker(wait=False) for _ in range(args.workers)]
            for proc in procs:
                stack.wait_worker(proc, timeout=180)
            key = stack.p2sam("apikey", "create", "--name", "bench-load", "--scope", "submit", "--scope", "read").strip()
            url, data_dir = stack.url, stack.data_dir
        if data_dir is not None:  # the records, read as the stack's own processes read them
            store = open_store(Settings(data_dir=data_dir, database_url=database.url if database else None))
        server_errors = []
        c = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60, event_hooks={"response": [
            lambda r: server_errors.append(r.request.url.path) if r.status_code >= 500 else None]})
        inputs = _upload(c, case, args.targets)
        body = {"prior": {"upload_id": inputs["prior"], "roi": "GTV"},
                "targets": [{"upload_id": t, "name": f"visit{i + 1}"} for i, t in enumerate(inputs["targets"])],
                "model": model, "n_samples": args.samples, "outputs": args.outputs.split(",")}
        t0 = time.time()
        ids = []
        for i in range(args.jobs):
            r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"bench-{t0:.0f}-{i}"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        retried: dict[str, int] = {}  # with --faults: job id -> status of its retry
        print(f"submitted {len(ids)} jobs in {time.time() - t0:.1f} s", file=sys.stderr)
        states: dict[str, str] = {}
        deadline = t0 + args.timeout
        while time.time() < deadline:
            for job_id in ids:
                if states.get(job_id) not in ("succeeded", "failed", "cancelled"):
                    states[job_id] = c.get(f"/v1/jobs/{job_id}").json()["state"]
            done = sum(s in ("succeeded", "failed", "cancelled") for s in states.values())
            if stack is not None and not args.no_kill and not killed and done >= args.kill_after * len(ids):
                killed.append(_kill_busy_worker(stack, store, ids))
            if args.faults and stack is not None:
                _faults(args, stack, redis, store, ids, done, killed)
            if args.faults and not retried and time.time() - t0 >= args.retry_after:
                for i, job_id in enumerate(ids):
                    r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"bench-{t0:.0f}-{i}"})
                    retried[job_id] = r.status_code if r.status_code >= 300 or r.json()["id"] != job_id else 200
                bad = {k: v for k, v in retried.items() if v != 200}
                print(f"retried {len(retried)} POSTs after {time.time() - t0:.0f} s: {len(retried) - len(bad)} gave the "
                      f"same job{f', {len(bad)} did not' if bad else ''}", file=sys.stderr)
            if done == len(ids) and (not args.faults or (retried and ("readonly-over" in _FAULTS_DONE
                                                                      or "tmpfs" not in _FAULTS_DONE))):
                break
            time.sleep(0.5)
        duplicated_by_retry = sum(v != 200 for v in retried.values())
        print(f"5xx {len(server_errors)}" + (f" ({', '.join(sorted(set(server_errors)))})" if server_errors else ""))
        if args.faults:
            print(f"retries answered with another job or an error {duplicated_by_retry}")
        print(f"job store: {args.store}", file=sys.stderr)
        return report(ids, states, store, len(body["targets"]), t0, killed, extra_duplicated=duplicated_by_retry)
    finally:
        if stack is not None:
            stack.stop()
            if "tmpfs" in _FAULTS_DONE:
                if args.keep:
                    shutil.copytree(stack.data_dir, root / "kept-data", dirs_exist_ok=True)
                subprocess.run(["umount", "-l", str(stack.data_dir)], capture_output=True)
        if redis is not None:
            redis.stop()
        if database is not None:
            database.drop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


_FAULTS_DONE: set[str] = set()
_READONLY_SINCE: list[float] = []


def _faults(args, stack, redis, store, ids: list[str], done: int, killed: list[str]) -> None:
    """With --faults: kill -9 a busy pool process at 50 % done, restart Redis at 60 %, the data
    volume read-only from 70 % for --readonly-s seconds."""
    if "pool" not in _FAULTS_DONE and done >= 0.5 * len(ids):
        for job_id in ids:
            rec = store.get(job_id)
            if rec.state == "running" and rec.lease:
                import signal

                pid = int(rec.lease.owner.split(":")[1])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                _FAULTS_DONE.add("pool")
                killed.append(f"pool process {pid}")
                print(f"killed the pool process {pid} (job {job_id}) with kill -9; its worker must recover", file=sys.stderr)
                break
    if "redis" not in _FAULTS_DONE and redis is not None and done >= 0.6 * len(ids):
        _FAULTS_DONE.add("redis")
        redis.restart()
        print("restarted Redis (SIGKILL; append-only file kept)", file=sys.stderr)
    if "readonly" not in _FAULTS_DONE and done >= 0.7 * len(ids):
        _FAULTS_DONE.add("readonly")
        subprocess.run(["mount", "-o", "remount,ro", str(store.data_dir)], check=True)
        _READONLY_SINCE.append(time.time())
        print(f"the data volume is read-only for {args.readonly_s:.0f} s", file=sys.stderr)
    if _READONLY_SINCE and "readonly-over" not in _FAULTS_DONE and time.time() - _READONLY_SINCE[0] >= args.readonly_s:
        _FAULTS_DONE.add("readonly-over")
        subprocess.run(["mount", "-o", "remount,rw", str(store.data_dir)], check=True)
        print("the data volume is writable again", file=sys.stderr)


def _kill_busy_worker(stack, store, ids: list[str]) -> str:
    """kill -9 a worker that is running a job (if any is), then start a replacement."""
    running = {}
    for job_id in ids:
        rec = store.get(job_id)
        if rec.state == "running" and rec.lease:
            running[int(rec.lease.owner.split(":")[1])] = job_id
    parents = {parent_pid(pid) for pid in running}
    busy = [w for w in stack.live_workers() if w.pid in parents]
    victim = (busy or stack.live_workers())[0]
    victim.kill9()
    state = "while it ran a job" if busy else "(no job was running)"
    print(f"killed {victim.name} with kill -9 {state}; {len(running)} job(s) were running; starting a replacement",
          file=sys.stderr)
    stack.start_worker(wait=False)
    return victim.name


def report(ids: list[str], states: dict[str, str], store, n_targets: int, t0: float,
           killed: list[str], extra_duplicated: int = 0) -> int:
    completed = [i for i in ids if states.get(i) == "succeeded"]
    lost = len(ids) - len(completed)
    latencies, finish_times, duplicated, attempts = [], [], 0, 0
    data_dir = store.data_dir if store is not None else None
    if store is not None:
        for job_id in ids:
            rec = store.get(job_id)
            attempts += rec.attempts
            out = data_dir / "results" / job_id
            folders = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            dup = rec.terminal_transitions > 1 or any(n > 1 for n in rec.writes.values())
            if rec.state == "succeeded":
                dup = dup or len(folders) != n_targets
                latencies.append(rec.finished_at - rec.created_at)
                finish_times.append(rec.finished_at)
            duplicated += dup
    duplicated += extra_duplicated  # a retried POST that made a second job
    span = (max(finish_times) - t0) if finish_times else float("nan")
    rows = [("submitted", len(ids)), ("completed", len(completed)), ("lost", lost),
            ("duplicated", duplicated if data_dir is not None else "n/a"),
            ("attempts (all jobs)", attempts if data_dir is not None else "n/a"),
            ("workers killed", len(killed)),
            ("latency p50 (s)", f"{_percentile(latencies, 0.5):.1f}"),
            ("latency p95 (s)", f"{_percentile(latencies, 0.95):.1f}"),
            ("jobs/min", f"{len(completed) / span * 60:.1f}" if finish_times else "nan")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"lost {lost} duplicated {duplicated if data_dir is not None else 'n/a'}")
    return 0 if lost == 0 and not duplicated else 1


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
