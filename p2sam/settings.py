"""All settings, from environment variables prefixed ``P2SAM_`` — the one place they are defined.

``p2sam config`` prints every setting with its current value and description; docs/settings.md
is generated from this class (a test keeps it in sync).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """A per-user folder, the same whatever the current folder: $XDG_DATA_HOME/p2sam, else
    ~/.local/share/p2sam (so `p2sam apikey list` run anywhere sees the keys `p2sam serve` uses)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "p2sam"


# How the docs show defaults that depend on the user (docs/settings.md must not name one machine's home).
SHOWN_DEFAULTS = {"data_dir": "`$XDG_DATA_HOME/p2sam`, else `~/.local/share/p2sam`"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="P2SAM_", extra="ignore")

    # --- where things live
    data_dir: Path = Field(default_factory=default_data_dir, description="Job store, uploads and results (a shared volume when workers run elsewhere).")
    models_dir: Path | None = Field(None, description="Extra weights files (*.pt) offered besides the bundled ones; the file stem is the model name.")

    # --- execution
    broker_url: str | None = Field(None, description="Celery broker (e.g. redis://redis:6379/0). Absent: embedded mode, jobs run in-process.")
    database_url: str | None = Field(None, description="PostgreSQL for job and batch records (postgresql://user:password@host/db; row locks, leases on the database clock: several hosts need no NFS locks or synchronised clocks). Absent: JSON files under P2SAM_DATA_DIR. Uploads and results stay on the data volume either way.")
    database_pool_size: int = Field(8, ge=1, le=100, description="Connections to P2SAM_DATABASE_URL per process (API, each worker pool process); keep processes x this under the server's max_connections.")
    device: str = Field("auto", description="torch device for the model: auto (cuda if available), cpu, cuda, cuda:1, ...")
    threads: int = Field(0, description="CPU threads for torch (0: torch's default).")
    default_model_ct: str = Field("ct_phantom", description="Model for grey-level (CT) inputs when a job says model=auto.")
    default_model_rgb: str = Field("kvasir", description="Model for RGB (endoscopy) inputs when a job says model=auto.")
    allow_pickled_checkpoints: bool = Field(False, description="Allow checkpoints holding pickled Python objects (can run code: only for files you trust).")
    prior_cache_size: int = Field(32, description="Encoded priors kept per worker process (per patient and prior slice).")
    job_soft_time_limit_s: int = Field(1800, description="A job is asked to stop (and fails with a timeout) after this many seconds.")
    job_hard_time_limit_s: int = Field(2100, description="A job's worker process is killed after this many seconds.")
    visibility_timeout_s: int = Field(7200, description="Redis visibility timeout: a job unacknowledged this long is redelivered (must exceed the hard limit).")
    lease_timeout_s: int = Field(120, ge=5, description="A running job whose worker sent no heartbeat for this long (or whose worker process on the same host is gone) is re-queued.")
    job_max_attempts: int = Field(3, ge=1, le=20, description="A job is started at most this many times (its worker dying each time, e.g. killed by the hard time limit or out of memory); then it fails.")
    worker_start_timeout_s: float = Field(300.0, gt=0, description="How long a Celery pool process may take to start, model preload included, before it is restarted (Celery's worker_proc_alive_timeout; its 4 s default is shorter than a model preload on a busy machine).")
    maintenance_interval_s: float = Field(10.0, gt=0, description="How often the API re-enqueues jobs whose broker message may be lost, recovers jobs of vanished workers and applies retention.")
    transient_retries: int = Field(3, ge=0, le=10, description="A job whose run hits a transient I/O error (a stale NFS handle, a lost connection, a timeout) is retried in place this many times (waits 1, 2, 4 ... s) before it fails.")

    # --- segmentation defaults
    slice_margin: int = Field(1, ge=0, le=10, description="Follow-up slices beyond the registered prior structure that are also segmented.")
    n_samples: int = Field(16, ge=0, le=64, description="Uncertainty samples per target by default.")
    window: str = Field("default", description="CT window preset: default ([-910, 590] HU), lung, soft_tissue, or 'lo,hi'.")
    prune_k: int = Field(0, ge=0, le=64, description="P²SAM retrieval: every candidate is scored after cascade step (a) and only the best k are refined by steps (b), (c); 0 (default, the reference): every candidate fully cascaded. Pruning is off until bench.quality --compare-reference has measured it on this model.")
    share_prompts: bool = Field(False, description="A point repeated in a candidate's prompt (two parts' peaks on one pixel) is given once, and candidates with the same point set share one decode; false (default, the reference): prompts as they come.")
    encode_batch_mb: int = Field(1024, ge=0, description="Memory budget (MB) for encoding a volume's follow-up slices in batches (one encoder call for B slices, B from this budget); 0: one slice at a time.")
    encoder_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Autocast dtype for the image encoder (GPU path; the decoder stays float32): float32, bfloat16 or float16.")
    location: bool = Field(False, description="P²SAM + location (issue 11): registration-guided candidates (propagated box, box + points, mask + points) and a selection rule weighing location with appearance (docs/engine.md); off (default): plain retrieval, until bench.quality measures it better on the shipped models.")
    picture_registration: Literal["affine", "rigid", "off"] = Field("affine", description="With P2SAM_LOCATION on: 2-D registration of a prior picture to each follow-up picture (SimpleITK, identity with a warning when it fails); off: the prior mask where it lies.")
    min_island_mm2: float | None = Field(None, ge=0, description="Contour islands smaller than this (mm^2) are dropped from RTSTRUCTs (unset: imaging.DEFAULT_MIN_ISLAND_AREA_MM2 = 2.0, the one default).")

    # --- the API
    host: str = Field("127.0.0.1", description="Address `p2sam serve` listens on.")
    port: int = Field(8000, description="Port `p2sam serve` listens on.")
    auth: Literal["apikey", "none"] = Field("apikey", description="apikey: every request needs an API key (X-API-Key or Bearer); none: no auth (local use only).")
    max_upload_mb: int = Field(512, ge=1, description="Largest accepted upload (MB); larger requests get 413.")
    max_zip_mb: int = Field(8192, ge=1, description="The most a zip archive read as input may expand to (MB; zip bombs stop there): inputs `p2sam segment`, the workers and the API read; an upload's zips also count against P2SAM_MAX_UPLOAD_MB.")
    request_body_timeout_s: float = Field(30.0, gt=0, description="A request body that sends nothing for this long, or arrives slower than 1 KiB/s on average after it, is cut off with 408 (slow clients; the TLS proxy guards headers: deploy/README.md).")
    max_connections: int = Field(200, ge=1, description="Concurrent connections `p2sam serve` accepts; beyond, new requests get 503 (uvicorn's limit_concurrency).")
    retention_hours: float = Field(72.0, ge=0, description="Inputs and results of finished jobs are purged after this many hours (0: never).")
    log_level: str = Field("INFO", description="Logging level. Logs never contain patient identifiers.")

    # --- DICOM networking (dicomnet/: deploy/README-dicom.md)
    dicom_ae_title: str = Field("P2SAM", min_length=1, max_length=16, description="Our AE title: called AE of `p2sam dicom-listener`, calling AE when we send (C-STORE).")
    dicom_listen_host: str = Field("127.0.0.1", description="Address `p2sam dicom-listener` listens on (0.0.0.0 in a container).")
    dicom_port: int = Field(11112, ge=1, le=65535, description="Port `p2sam dicom-listener` listens on (C-STORE SCP).")
    dicom_peers: str | None = Field(None, description="DICOM peers as JSON (or @/path/to/peers.json): {name: {ae_title, host, port[, tls]} | {url[, username, password | token]}}; C-STORE peers, DICOMweb peers.")
    dicom_allowed_aes: str = Field("", description="Comma list of calling AE titles the listener accepts, besides the peers' AE titles (`*`: any; the default allows only peers).")
    dicom_destinations: str = Field("", description="Comma list of peer names every job's RTSTRUCT and SEGs are sent to when the job names none.")
    dicom_pull_source: str | None = Field(None, description="Peer name (in P2SAM_DICOM_PEERS) that jobs referring to study/series UIDs without a `peer` pull from: a DICOMweb peer (QIDO-RS + WADO-RS) or a DIMSE peer (C-FIND + C-GET).")
    dicom_pull_attempts: int = Field(6, ge=1, le=100, description="A job pulling its inputs from a PACS that is down tries this many times (waits P2SAM_DICOM_RETRY_BASE_S doubling up to P2SAM_DICOM_RETRY_MAX_S), then fails with 503 pacs-unavailable.")
    dicom_quiet_period_s: float = Field(10.0, gt=0, description="A received series is complete (and becomes an upload) once no instance of it arrived for this long.")
    dicom_upload_owner: str = Field("dicom-listener", description="Owner of uploads the listener creates: an API key id (`p2sam apikey list`) whose jobs may use them (admin keys always may).")
    dicom_timeout_s: float = Field(30.0, gt=0, description="Network, association and DIMSE/HTTP timeout for one delivery or pull.")
    dicom_retry_base_s: float = Field(5.0, gt=0, description="First retry of a failed delivery after this long; doubles per attempt.")
    dicom_retry_max_s: float = Field(600.0, gt=0, description="Longest wait between two attempts of a delivery.")
    dicom_max_attempts: int = Field(12, ge=1, le=1000, description="A delivery whose destination stays unreachable is given up (state failed) after this many attempts.")
    dicom_send_interval_s: float = Field(2.0, gt=0, description="How often the gateway looks for finished jobs and due deliveries.")
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate of our AE: the listener serves DICOM TLS with it; sent to peers marked tls.")
    dicom_tls_key: Path | None = Field(None, description="PEM private key for P2SAM_DICOM_TLS_CERT.")
    dicom_tls_ca: Path | None = Field(None, description="PEM CA bundle: peers' certificates are checked against it (listener: client certificates are then required).")

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        """Settings that must hold together: checked when the settings load, with the variables named."""
        problems = [f"{_var(a)} ({getattr(self, a)}) must be {'at most' if equal_ok else 'below'} {_var(b)} "
                    f"({getattr(self, b)}): {why}"
                    for a, b, equal_ok, why in ORDERED
                    if not (getattr(self, a) <= getattr(self, b) if equal_ok else getattr(self, a) < getattr(self, b))]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _var(name: str) -> str:
    return f"P2SAM_{name.upper()}"


# (smaller, larger, equal allowed, why): pairs of settings whose order the system relies on.
ORDERED: list[tuple[str, str, bool, str]] = [
    ("job_soft_time_limit_s", "job_hard_time_limit_s", False,
     "a job is asked to stop (and fails with a clear timeout) before its worker process is killed"),
    ("job_hard_time_limit_s", "visibility_timeout_s", False,
     "the broker must not redeliver a job whose worker is still allowed to run it"),
    ("dicom_retry_base_s", "dicom_retry_max_s", True, "the first retry wait cannot exceed the longest one"),
]


def apply_process_limits(settings: Settings) -> None:
    """Process-wide limits that live in libraries, from the settings (P2SAM_MAX_ZIP_MB -> imaging)."""
    from imaging import sources

    sources.MAX_ZIP_BYTES = settings.max_zip_mb * (1 << 20)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_markdown() -> str:
    """The settings table (docs/settings.md)."""
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable with the prefix `P2SAM_` (generated from",
        "`p2sam/settings.py`; `p2sam config` prints the current values).",
        "",
        "| variable | default | description |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = SHOWN_DEFAULTS.get(name) or ("(unset)" if default is None else f"`{default}`")
        lines.append(f"| `P2SAM_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"
