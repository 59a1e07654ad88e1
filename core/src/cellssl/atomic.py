"""Atomic file writes: write to a temporary file in the target's folder, flush, then rename.

The temporary file of a write to ``folder/name`` is ``folder/.name.<random>.tmp``. A process killed in the
middle of a write leaves it behind; :func:`remove_stale_temp_files` removes such leftovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# mkstemp's random part: 8 characters of [a-z0-9_]
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<random>[a-z0-9_]{8})\.tmp$")
PROCESS_START = time.time()
"""When this module was first imported: a temporary file modified before it is not being written by this process."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    If the block raises, the temporary file is removed and ``path`` is left untouched.

    :param mode: ``"wb"`` or ``"w"``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` looks like a temporary file of :func:`atomic_open` (``.<target>.<8 random>.tmp``)."""
    return TEMP_NAME.match(name) is not None


def remove_stale_temp_files(folder: str | os.PathLike[str], *, before: float | None = None) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_open` writes left in ``folder``.

    Only files named like the writer's temporaries (see :func:`is_temp_name`) and last modified before
    ``before`` are removed, so a write in progress (this process's, or another live process's whose file
    is still growing) is left alone. Sub-folders are not searched.

    :param folder: the folder to clean; a missing folder is not an error (nothing to remove).
    :param before: a POSIX timestamp; default :data:`PROCESS_START`, the start of this process.
    :return: the removed files, sorted.
    """
    folder = Path(folder)
    cutoff = PROCESS_START if before is None else before
    removed: list[Path] = []
    try:
        candidates = sorted(p for p in folder.iterdir() if is_temp_name(p.name))
    except FileNotFoundError:
        return removed
    for path in candidates:
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:  # removed meanwhile (by its writer's rename or another cleaner)
            continue
        removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by interrupted writes in %s: %s", len(removed), folder,
                       ", ".join(p.name for p in removed))
    return removed


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
