"""Downloading public datasets: resumable, checksummed, with a progress bar and atomic final files.

A plugin describes a public dataset with a :class:`DownloadSpec` (registered under component kind
``"download"``) and users fetch it with ``cellssl data download NAME --to DIR``. :func:`download`:

- fetches each :class:`DownloadFile` into ``DIR/<file.path>.part``, resuming a partial ``.part`` with an
  HTTP ``Range`` request (a server that ignores the range makes it start over);
- hashes the bytes as they arrive (sha256) and checks the size and checksum the spec declares; on a
  mismatch the ``.part`` file is removed and :class:`~cellssl.errors.DataError` says what was expected;
- moves the verified file into place with :func:`os.replace` (a final file is always complete);
- skips files that are already complete, and unpacks ``.zip`` / ``.tar*`` archives marked ``unpack``
  (members with absolute paths or ``..`` are refused), leaving a marker so a re-run does not unpack again.

:func:`check_data_root` is what datasets call to fail early with the missing files, where they were
looked for and how to get them. Archives are unpacked by :mod:`cellssl.data.archives`; the command
``cellssl data download`` lives in :mod:`cellssl.data.download_cli`. This module imports only the standard
library at module level.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cellssl.atomic import atomic_write_text
from cellssl.data.archives import archive_kind, unpack_archive
from cellssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["DownloadFile", "DownloadResult", "DownloadSpec", "archive_kind", "check_data_root", "download",
           "sha256_of", "unpack_archive"]

PART_SUFFIX = ".part"
UNPACKED_MARKER = ".{name}.unpacked"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RETRYABLE = (OSError, http.client.HTTPException)  # URLError, ConnectionError, TimeoutError, IncompleteRead


@dataclass(frozen=True)
class DownloadFile:
    """One file of a dataset.

    :ivar url: where to fetch it (``https://``, ``http://`` or ``file://``).
    :ivar path: where it goes, relative to the target folder (POSIX separators, no ``..``).
    :ivar size: its size in bytes, if known (checked; also sizes the progress bar).
    :ivar sha256: its lowercase hex sha256, if published (checked).
    :ivar unpack: extract this ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` / ``.tar.bz2`` / ``.tar.xz``
        archive into the target folder after it is verified.
    :raises ValueError: for an unsafe ``path``, a malformed ``sha256`` or a negative ``size``.
    """

    url: str
    path: str
    size: int | None = None
    sha256: str | None = None
    unpack: bool = False

    def __post_init__(self) -> None:
        relative = PurePosixPath(self.path)
        if not self.path or relative.is_absolute() or ".." in relative.parts or self.path.endswith("/"):
            raise ValueError(f"download path {self.path!r} must be a relative file path without '..'")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 of {self.path} must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"size of {self.path} must be >= 0, got {self.size}")
        if self.unpack and archive_kind(self.path) is None:
            raise ValueError(f"{self.path} is marked unpack but is not a .zip / .tar / .tar.gz / .tgz / "
                             ".tar.bz2 / .tar.xz archive")


@dataclass(frozen=True)
class DownloadSpec:
    """What ``cellssl data download NAME`` fetches.

    :ivar name: the dataset's download name.
    :ivar files: the files, fetched in this order.
    :ivar description: one paragraph shown before downloading.
    :ivar homepage: where the dataset is published (record page, paper).
    :ivar license: the data licence, as published.
    :ivar note: caveats shown to the user (for example facts that could not be verified).
    :ivar keep_archives: keep archives after unpacking them (needed to skip them on a re-run).
    """

    name: str
    files: tuple[DownloadFile, ...]
    description: str = ""
    homepage: str = ""
    license: str = ""
    note: str = ""
    keep_archives: bool = True

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError(f"download spec {self.name!r} lists no files")
        paths = [item.path for item in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"download spec {self.name!r} lists a path twice: {paths}")


@dataclass
class DownloadResult:
    """What :func:`download` did: the final path of every file (``files``), those fetched in this call
    (``downloaded``, fully or by resuming), already complete (``skipped``), archives ``unpacked``, and files
    without a published checksum (``unverified``; their sha256 is stored beside them as ``<file>.sha256``)."""

    files: list[Path] = field(default_factory=list)
    downloaded: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    unpacked: list[Path] = field(default_factory=list)
    unverified: list[Path] = field(default_factory=list)


def _digest_of(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in chunks."""
    return _digest_of(path).hexdigest()


def _is_complete(path: Path, item: DownloadFile) -> tuple[bool, str]:
    """Whether an existing final file matches the spec; otherwise why not."""
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        return False, f"its size is {size} bytes, expected {item.size}"
    if item.sha256 is not None:
        actual = sha256_of(path)
        if actual != item.sha256:
            return False, f"its sha256 is {actual}, expected {item.sha256}"
    return True, ""


def _open(url: str, offset: int, timeout: float) -> Any:
    """Open ``url`` asking for bytes from ``offset`` on; returns the response (``None`` on HTTP 416)."""
    headers = {"User-Agent": "cellssl-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # nothing left to send: the .part file already holds everything
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc


def _response_start(response: Any, offset: int, url: str) -> int:
    """The byte position the response body starts at (``0`` when the server ignored the range)."""
    status = getattr(response, "status", 200)
    if offset and status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = re.match(r"bytes\s+(\d+)-", content_range)
        if match is None or int(match.group(1)) != offset:
            raise DataError(f"download of {url}: the server answered range {content_range!r} to a request for "
                            f"bytes {offset}-; remove the .part file and try again")
        return offset
    return 0


def _fetch(item: DownloadFile, part: Path, *, progress: bool, chunk_size: int, timeout: float,
           retries: int) -> str:
    """Complete ``part`` from ``item.url`` (resuming), and return the sha256 of its whole content."""
    from tqdm.auto import tqdm

    attempts = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if item.size is not None and offset > item.size:
            logger.warning("%s is larger than the expected %d bytes; starting over", part, item.size)
            part.unlink()
            offset = 0
        digest = _digest_of(part, chunk_size) if offset else hashlib.sha256()
        if item.size is not None and offset == item.size:
            return digest.hexdigest()
        try:
            response = _open(item.url, offset, timeout)
            if response is None:
                return digest.hexdigest()
            with response:
                start = _response_start(response, offset, item.url)
                if start != offset:
                    logger.info("%s: the server does not resume; downloading from the start", item.url)
                    digest = hashlib.sha256()
                length = response.headers.get("Content-Length")
                total = item.size if item.size is not None else (start + int(length) if length else None)
                with open(part, "r+b" if start and part.exists() else "wb") as out, \
                        tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=item.path, disable=not progress) as bar:
                    out.seek(start)
                    out.truncate()
                    received = 0
                    while block := response.read(chunk_size):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                        received += len(block)
                    out.flush()
                    os.fsync(out.fileno())
                if length is not None and received < int(length):
                    raise ConnectionError(f"the connection closed after {received} of {length} bytes")
            return digest.hexdigest()
        except DataError:
            raise
        except _RETRYABLE as exc:
            attempts += 1
            have = part.stat().st_size if part.is_file() else 0
            if attempts > retries:
                raise DataError(
                    f"download of {item.url} was interrupted ({type(exc).__name__}: {exc}) after {have} bytes. "
                    f"The partial file {part} is kept: run the same command again to resume."
                ) from exc
            logger.warning("download of %s interrupted (%s); resuming from byte %d (attempt %d of %d)",
                           item.url, exc, have, attempts, retries)


def download(spec: DownloadSpec, to_dir: str | os.PathLike[str], *, progress: bool = True, chunk_size: int = 1 << 20,
             timeout: float = 60.0, retries: int = 3) -> DownloadResult:
    """Fetch every file of ``spec`` into ``to_dir`` (see the module docstring).

    :param to_dir: the target folder; created if missing (its parent must exist).
    :param retries: reconnections (each resuming where the previous one stopped) before giving up.
    :return: what was fetched, skipped and unpacked.
    :raises DataError: when ``to_dir`` is a file or its parent is missing, a download fails or is
        interrupted (the ``.part`` file is kept for resuming), a final file exists but does not match
        the spec, a size or checksum does not match (the ``.part`` file is removed), or an archive
        cannot be unpacked.
    """
    target = Path(to_dir).expanduser()
    if target.exists() and not target.is_dir():
        raise DataError(f"download target {target} exists and is not a folder; pass a folder with --to")
    if not target.parent.is_dir():
        raise DataError(f"the parent folder of the download target {target} does not exist; create it first")
    target.mkdir(exist_ok=True)
    result = DownloadResult()
    for item in spec.files:
        final = target / item.path
        marker = final.parent / UNPACKED_MARKER.format(name=final.name)
        if item.unpack and not spec.keep_archives and marker.is_file():
            logger.info("%s: already unpacked (%s)", item.path, marker)
            result.skipped.append(final)
            result.files.append(final)
            continue
        if final.is_file():
            complete, why = _is_complete(final, item)
            if not complete:
                raise DataError(f"{final} exists but does not match the download spec of '{spec.name}': {why}. "
                                "Delete it (or move it away) and run the command again.")
            logger.info("%s: already complete, skipped", final)
            result.skipped.append(final)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            part = final.with_name(final.name + PART_SUFFIX)
            digest = _fetch(item, part, progress=progress, chunk_size=chunk_size, timeout=timeout, retries=retries)
            size = part.stat().st_size
            problem = ""
            if item.size is not None and size != item.size:
                problem = f"received {size} bytes, expected {item.size}"
            elif item.sha256 is not None and digest != item.sha256:
                problem = f"sha256 is {digest}, expected {item.sha256}"
            if problem:
                part.unlink(missing_ok=True)
                raise DataError(f"checksum mismatch for {item.path} from {item.url}: {problem}. The partial file "
                                f"{part} was removed; run the command again to download it anew (if it fails again "
                                "the source changed: check the dataset's homepage).")
            os.replace(part, final)
            result.downloaded.append(final)
            if item.sha256 is None:
                atomic_write_text(final.with_name(final.name + ".sha256"), f"{digest}  {final.name}\n")
                result.unverified.append(final)
                logger.warning("%s has no published checksum; its sha256 is %s (saved beside it)", final, digest)
        result.files.append(final)
        if item.unpack and not marker.is_file():
            logger.info("unpacking %s into %s", final, final.parent)
            unpack_archive(final, final.parent)
            atomic_write_text(marker, f"{final.name}\n")
            result.unpacked.append(final)
            if not spec.keep_archives:
                final.unlink()
    return result


def check_data_root(root: str | os.PathLike[str], required: Sequence[str], *, dataset: str, how_to_get: str,
                    key: str = "data.root") -> Path:
    """Fail early, and helpfully, when a dataset's root folder is missing or incomplete.

    :param root: the folder the user configured.
    :param required: paths (relative to ``root``) that must exist, files or folders.
    :param dataset: the dataset's name, for the message.
    :param how_to_get: one sentence on how to obtain the data (a download command, a web page).
    :param key: the config key holding ``root``.
    :return: ``root`` as an expanded path.
    :raises DataError: naming what is missing, where it was looked for (the absolute path) and how to get it.
    """
    path = Path(root).expanduser()
    if not str(root).strip():
        raise ConfigError(key, f"is required: the folder that holds the {dataset} data. {how_to_get}")
    if not path.is_dir():
        raise DataError(f"{dataset} data root not found: {path.resolve()} ({key}) does not exist or is not a "
                        f"folder. {how_to_get}")
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise DataError(f"{dataset} data at {path.resolve()} ({key}) is incomplete: missing {', '.join(missing)}. "
                        f"{how_to_get}")
    return path
