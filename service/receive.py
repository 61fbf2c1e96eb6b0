"""Stream an upload request body to files on disk: a raw body (zip, DICOM, NIfTI, PNG/JPEG) or
multipart/form-data with any number of files. Nothing is held in memory beyond one chunk.

Files are stored under numbered names (``000001.dcm``); the client's file names (which may hold
patient names) only lend their extension and are never stored or logged.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect
from python_multipart.multipart import MultipartParser, parse_options_header

from .problems import Problem

MAX_FILES = 20000
_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".zip", ".png", ".jpg", ".jpeg")
_BY_TYPE = {"application/zip": ".zip", "application/x-zip-compressed": ".zip", "application/dicom": ".dcm",
            "application/x-nifti": ".nii", "application/gzip": ".nii.gz", "application/x-gzip": ".nii.gz",
            "image/png": ".png", "image/jpeg": ".jpg"}


def safe_suffix(filename: str | None, content_type: str | None = None) -> str:
    """The extension to keep (from a whitelist) for a client file name or content type."""
    name = (filename or "").lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return _BY_TYPE.get((content_type or "").split(";")[0].strip().lower(), "")


class _Sink:
    """Numbered files in ``folder``; one open at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count, self.total, self._f = folder, 0, 0, None

    def open(self, suffix: str) -> None:
        self.count += 1
        if self.count > MAX_FILES:
            raise Problem(413, f"more than {MAX_FILES} files in one upload; send a zip archive or several uploads",
                          slug="too-many-files")
        self._f = open(self.folder / f"{self.count:06d}{suffix}", "wb")

    def write(self, data: bytes) -> None:
        if self._f is not None:
            self._f.write(data)
            self.total += len(data)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


async def receive_files(request: Request, folder: Path) -> tuple[int, int]:
    """Write the request's files into ``folder``; returns (files, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    content_type = request.headers.get("content-type", "application/octet-stream")
    main, params = parse_options_header(content_type)
    sink = _Sink(folder)
    try:
        if main == b"multipart/form-data":
            await _multipart(request, params.get(b"boundary"), sink)
        else:
            disposition = parse_options_header(request.headers.get("content-disposition", ""))[1]
            filename = disposition.get(b"filename", b"").decode("latin-1")
            sink.open(safe_suffix(filename, main.decode("latin-1")))
            async for chunk in request.stream():
                sink.write(chunk)
    finally:
        sink.close()
    if sink.total == 0:
        raise Problem(422, "the upload is empty: send DICOM files (multipart or a zip), a NIfTI file or a PNG/JPEG",
                      slug="empty-upload")
    return sink.count, sink.total


async def _multipart(request: Request, boundary: bytes | None, sink: _Sink) -> None:
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary", slug="bad-multipart")
    state = {"field": b"", "value": b"", "headers": {}, "is_file": False}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["is_file"] = b"filename" in disp
        if state["is_file"]:
            sink.open(safe_suffix(disp[b"filename"].decode("latin-1"), state["headers"].get(b"content-type", b"").decode("latin-1")))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            sink.write(data[start:end])

    def on_part_end() -> None:
        sink.close()

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (Problem, HTTPException, OSError, ClientDisconnect):
        raise
    except Exception as exc:
        raise Problem(400, f"malformed multipart body ({type(exc).__name__})", slug="bad-multipart") from None
