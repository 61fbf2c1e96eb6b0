"""Errors, and the one table that says what each kind of exception means to a user.

:class:`JobInputError`: a job asks for something this service cannot do as asked (unknown
model, missing latent head, ...); the API answers it with 422 and the CLI with one line.

:func:`classify` is the only place that decides whether an exception is the caller's to fix
(a 4xx problem, a one-line CLI message) or ours (a 5xx with no internals shown). The CLI
(``p2sam.cli.user_error``), the worker and the embedded runner (``p2sam.runner.execute_job``)
and the API's last-resort handler (``service.problems``) all use it, so a new error class is
added here once, with its test in tests/p2sam/test_errors.py.

The table names classes by module path and looks them up only in modules already imported
(an exception of a class whose module was never imported cannot exist), so importing this
module costs nothing: no torch, no pydicom.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass


class JobInputError(ValueError):
    """A job asks for something this service cannot do as asked (unknown model, missing head, ...)."""


@dataclass(frozen=True)
class ErrorClass:
    """What an exception means: HTTP status, problem slug and title, and the detail to show.

    ``user``: the caller can fix it (CLI: one line on stderr, exit 2; no stack trace).
    ``detail``: the text shown to an API client; None shows the exception's own one-line message
    (only for user errors: an internal exception's message may name server paths).
    """

    status: int
    slug: str
    title: str
    user: bool
    detail: str | None = None


INVALID_INPUT = ErrorClass(422, "invalid-input", "The input cannot be segmented", True)
MODEL_UNAVAILABLE = ErrorClass(
    500, "model-unavailable", "Model unavailable", True,
    "the server could not load the model; an administrator must check P2SAM_MODELS_DIR and the weights files "
    "(`p2sam models`)")
OUT_OF_MEMORY = ErrorClass(507, "out-of-memory", "Out of memory", False,
                           "the worker ran out of memory; try fewer samples or a smaller model")
OUT_OF_GPU_MEMORY = ErrorClass(507, "out-of-memory", "Out of GPU memory", False,
                               "the GPU ran out of memory; try fewer samples or a smaller model")
STORAGE_UNAVAILABLE = ErrorClass(
    503, "storage-unavailable", "Storage unavailable", True,
    "the data volume is read-only or full, or the job store's database does not answer; nothing was changed. "
    "Retry later; an administrator must check P2SAM_DATA_DIR's disk (and P2SAM_DATABASE_URL)")
NOT_ON_PACS = ErrorClass(404, "not-on-pacs", "Not found on the PACS", True)
PACS_UNAVAILABLE = ErrorClass(503, "pacs-unavailable", "PACS unavailable", True)  # retried before it is shown
PACS_REFUSED = ErrorClass(502, "pacs-refused", "The PACS refused the request", True)
RECORD_UNREADABLE = ErrorClass(
    500, "record-unreadable", "Stored record unreadable", False,
    "a stored job or batch record was written by another p2sam version (the server log names it); an administrator "
    "must run the same version on every host")
INTERNAL = ErrorClass(500, "internal-error", "Internal error", False,
                      "internal error; the server log has the details")

# Read-only or full disk: the request cannot be stored (503: retry later), never a bug (500).
STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})

# (module, class name) -> meaning; the first row whose class the exception is an instance of wins.
TABLE: list[tuple[str, str, ErrorClass]] = [
    ("imaging.errors", "ImagingError", INVALID_INPUT),          # every bad image/contour/archive
    ("models.engine", "EngineInputError", INVALID_INPUT),       # prompts/masks the engine cannot use
    ("p2sam.errors", "JobInputError", INVALID_INPUT),           # unknown model, no latent head, ...
    ("p2sam.datasets", "DatasetError", INVALID_INPUT),          # a training dataset folder that does not fit
    ("pydantic_core", "ValidationError", INVALID_INPUT),        # a JobSpec / manifest that does not validate
    ("dicomnet.pull", "PullInputError", INVALID_INPUT),         # a study/series reference that fits several series
    ("dicomnet.pacs", "NotOnPacs", NOT_ON_PACS),                # a job's study/series the PACS does not hold
    ("dicomnet.pacs", "PacsUnavailable", PACS_UNAVAILABLE),     # the PACS stayed down while the job pulled
    ("dicomnet.pacs", "PacsRefused", PACS_REFUSED),             # credentials / not allowed
    ("models.checkpoints", "CheckpointError", MODEL_UNAVAILABLE),  # a weights file that cannot be loaded
    ("torch", "OutOfMemoryError", OUT_OF_GPU_MEMORY),           # torch.cuda.OutOfMemoryError (a RuntimeError)
    ("builtins", "MemoryError", OUT_OF_MEMORY),
    ("p2sam.pgstore", "StoreUnavailable", STORAGE_UNAVAILABLE),  # the job store's database does not answer
    ("p2sam.records", "RecordError", RECORD_UNREADABLE),       # a record of a newer version (p2sam.records)
]


def _lookup(module: str, name: str) -> type | None:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def classify(exc: BaseException) -> ErrorClass:
    """The meaning of ``exc`` (INTERNAL when it is none of the known kinds)."""
    for module, name, meaning in TABLE:
        cls = _lookup(module, name)
        if cls is not None and isinstance(exc, cls):
            return meaning
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return STORAGE_UNAVAILABLE
    return INTERNAL


def message(exc: BaseException) -> str:
    """The one line a user sees for a user error (a validation error: its first complaint)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        try:
            first = errors()[0]
            return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        except (IndexError, KeyError, TypeError):
            pass
    return " ".join(str(exc).split())


def public_detail(exc: BaseException, meaning: ErrorClass | None = None) -> str:
    """The detail an API client may see: the message of a user error, else the table's fixed text."""
    meaning = meaning or classify(exc)
    if meaning.detail is not None:
        return meaning.detail
    return message(exc) if meaning.user else INTERNAL.detail
