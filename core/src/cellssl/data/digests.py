"""Digests of data: canonical-JSON SHA-256 of plain values, file and table digests, a dataset's identity and
what channel statistics depend on. The plan's fingerprints (:mod:`cellssl.plan.fingerprint`) build on these;
they sit here, with the data layer, so that the embed and preprocessing layers need nothing above them.

Digests are SHA-256 of canonical JSON; file digests are SHA-256 of the bytes (cached per path, size and
modification time within a process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """A dataclass instance (or anything nested in it) as plain JSON-like data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def digest(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON (sorted keys; non-JSON values as ``str``)."""
    text = json.dumps(plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _FILE_DIGESTS[key] = sha.hexdigest()
    return _FILE_DIGESTS[key]


def table_digest(frame: Any) -> str:
    """SHA-256 (hex) of a metadata table's content (column names, values, row order)."""
    import pandas as pd

    sha = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode("utf-8"))
    try:
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        sha.update(hashed.tobytes())
    except TypeError:  # unhashable cells (lists): fall back to their text
        sha.update(frame.astype(str).to_csv(index=False).encode("utf-8"))
    return sha.hexdigest()


def dataset_identity(block: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The data part of a fingerprint: the validated block, row count, table digest and channels."""
    return {"block": block, "rows": len(dataset), "table": table_digest(dataset.metadata),
            "channels": list(dataset.channel_names)}


def stats_fingerprint(blocks: Sequence[dict[str, Any]], datasets: Sequence[Any], normalize: Any, seed: int) -> str:
    """Digest of what dataset channel statistics are computed from.

    :param blocks: the validated data blocks of ``datasets`` (bit depth and every reading option).
    :param normalize: the ``normalize`` section (mode, eps, number of images sampled).
    """
    return digest({
        "datasets": [dataset_identity(b, d) for b, d in zip(blocks, datasets, strict=True)],
        "mode": normalize.mode, "eps": normalize.eps, "stats_samples": getattr(normalize, "stats_samples", None),
        "seed": seed,
    })
