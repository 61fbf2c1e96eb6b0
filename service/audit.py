"""The audit log: who submitted, read, downloaded or deleted which job (data_dir/audit.log).

Append-only JSON lines ``{"time", "key", "key_id", "action", "job_id", "upload_id",
"outcome", ...}``: key *names*, never keys; job and upload ids, never patient names, IDs or
file names. Lines are appended with O_APPEND under an flock, so several processes can share it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .auth import Principal

log = logging.getLogger("p2sam.audit")


class AuditLog:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "audit.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, who: Principal | str | None, action: str, *, job_id: str | None = None,
              upload_id: str | None = None, outcome: str = "ok", **extra: Any) -> None:
        if isinstance(who, Principal):
            key, key_id = who.name, who.key_id
        else:
            key, key_id = who or "unauthenticated", None
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                 "key": key, "key_id": key_id, "action": action, "job_id": job_id, "upload_id": upload_id,
                 "outcome": outcome, **extra}
        line = (json.dumps({k: v for k, v in entry.items() if v is not None}, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            # A read-only or full data volume must not turn a read into a 500: the entry (ids and key
            # names only, never patient data) goes to the server log instead; a request that needs to
            # write fails on its own write with a 503.
            log.error("audit log not writable (%s): %s", errno.errorcode.get(exc.errno, type(exc).__name__),
                      line.decode().strip())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
