"""Unpacking downloaded zip and tar archives safely.

Members with absolute paths or ``..`` components are refused (nothing is extracted), as are links in tar
archives; tar extraction uses the ``data`` filter where Python has it. Standard library only.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cellssl.errors import DataError


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` from the file name."""
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    return None


def _safe_members(names: Iterable[str], archive: Path) -> None:
    for name in names:
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(f"archive {archive} holds an unsafe member path {name!r}; it was not unpacked")


def unpack_archive(archive: Path, target: Path) -> None:
    """Extract a zip or tar archive into ``target``.

    :raises DataError: if the archive is unreadable or a member would land outside ``target``.
    """
    kind = archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as handle:
                _safe_members(handle.namelist(), archive)
                handle.extractall(target)
        elif kind == "tar":
            with tarfile.open(archive) as handle:
                members = handle.getmembers()
                _safe_members((m.name for m in members), archive)
                links = [m.name for m in members if m.issym() or m.islnk()]
                if links:
                    raise DataError(f"archive {archive} holds links ({links[:3]}); it was not unpacked")
                if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.10 / 3.11 patches
                    handle.extractall(target, filter="data")
                else:
                    handle.extractall(target)
        else:
            raise DataError(f"{archive} is not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"could not unpack {archive}: {type(exc).__name__}: {exc}") from exc
