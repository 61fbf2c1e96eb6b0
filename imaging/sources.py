"""Turn what a user handed us (file, folder, list of files, zip) into local file paths.

Zip archives are extracted into a temporary folder after checking every member name:
absolute paths, ``..`` components, drive letters, symbolic links and absurd sizes are
refused with :class:`UnsafeArchiveError` before anything is written.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence, Union

from .errors import ImagingError, UnsafeArchiveError, UnsupportedFileError

PathLike = Union[str, os.PathLike]
MAX_ZIP_BYTES = 8 * 1024**3  # uncompressed total we are willing to extract (P2SAM_MAX_ZIP_MB sets it: p2sam.settings)
MAX_ZIP_MEMBERS = 100_000


def kind_of_file(path: Path) -> str:
    """Sniff a file: 'zip', 'nifti', 'png', 'jpeg', 'dicom' or 'unknown' (content, then name)."""
    name = path.name.lower()
    with open(path, "rb") as f:
        head = f.read(132)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    return "dicom?" if head[:2] in (b"\x08\x00", b"\x02\x00") else "unknown"


def _check_member(info: zipfile.ZipInfo, archive: str) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member name {name!r} points outside the archive (path traversal); "
            "re-create the zip with plain relative names")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a symbolic link; links are not accepted")


@contextlib.contextmanager
def extracted_zip(path: PathLike, into: PathLike | None = None, max_bytes: int | None = None) -> Iterator[Path]:
    """Safely extract a zip into a temporary folder (deleted on exit; inside ``into`` when given,
    e.g. the upload's own folder on the data volume); yield the folder.

    At most ``max_bytes`` are written: the members' declared sizes are checked first, and the
    bytes actually decompressed are counted as they are written (a member may lie about its
    size), so a zip bomb stops at the limit with UnsafeArchiveError. None: ``MAX_ZIP_BYTES`` as it
    is now (read at call time, so the process's setting applies)."""
    path = Path(path)
    max_bytes = MAX_ZIP_BYTES if max_bytes is None else max_bytes
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedFileError(f"{path.name}: not a readable zip archive ({exc})") from None
    if into is not None:
        Path(into).mkdir(parents=True, exist_ok=True)
    with zf, tempfile.TemporaryDirectory(prefix="p2sam-zip-", dir=into) as tmp:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise UnsafeArchiveError(f"{path.name}: {len(infos)} members is more than the {MAX_ZIP_MEMBERS} accepted")
        for info in infos:
            _check_member(info, path.name)
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise UnsafeArchiveError(f"{path.name}: expands to {_size(total)}, more than the {_size(max_bytes)} accepted")
        root = Path(tmp).resolve()
        written = 0
        for i, info in enumerate(infos):
            if info.is_dir():
                continue
            # Flat, numbered names: nothing from the archive decides where we write.
            target = root / f"{i:06d}_{PurePosixPath(info.filename.replace(chr(92), '/')).name}"
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchiveError(f"{path.name}: expands to more than the {_size(max_bytes)} "
                                                     "accepted (its members are larger than they declare)")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise UnsupportedFileError(f"{path.name}: member {i + 1} cannot be extracted ({type(exc).__name__})") from None
        yield root


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


@contextlib.contextmanager
def local_files(path: "PathLike | Sequence[PathLike]") -> Iterator[list[Path]]:
    """Yield the regular files behind ``path`` (file, folder walked recursively, list of
    files, or zip archive extracted safely). Hidden files are skipped."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        for f in files:
            if not f.is_file():
                raise ImagingError(f"{f}: file not found")
        yield files
        return
    p = Path(path)
    if not p.exists():
        raise ImagingError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ImagingError(f"{p}: folder is empty")
        yield files
        return
    if kind_of_file(p) == "zip":
        with extracted_zip(p) as root:
            yield sorted(f for f in root.iterdir() if f.is_file())
        return
    yield [p]
